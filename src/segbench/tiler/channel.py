"""Bounded channels between the tiler's threads; a blocked stage gives up when the pipeline stops."""

from __future__ import annotations

import queue
import threading

QUEUE_DEPTH = 3
POLL_S = 0.1
DONE = object()  # the last item a stage puts on its channel


class Stopped(Exception):
    """Raised inside a stage when another stage has failed or the user interrupted."""


class Channel:
    """A bounded queue whose blocking calls raise :class:`Stopped` once ``stop`` is set."""

    def __init__(self, stop: threading.Event, depth: int = QUEUE_DEPTH) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop

    def put(self, item) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                self._q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def get(self):
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                return self._q.get(timeout=POLL_S)
            except queue.Empty:
                continue
