"""One way to draw a rich progress bar: text columns, the bar, done/total, elapsed time and ETA."""

from __future__ import annotations


def progress_bar(*texts: str, console=None):
    """A transient rich ``Progress`` with ``texts`` (column templates) around the bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    first, *rest = texts
    return Progress(TextColumn(first), BarColumn(), MofNCompleteColumn(),
                    *(TextColumn(t) for t in rest), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=True)
