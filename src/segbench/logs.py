"""Quieting the libraries' loggers for the span of a call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def logger_level(logger: logging.Logger, level: int) -> Iterator[None]:
    """Set ``logger``'s level to ``level`` inside the block and restore it after."""
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
