"""SIGTERM and SIGHUP as Ctrl-C: an exception in the main thread, so every clean-up runs.

Batch schedulers and ``docker stop`` send SIGTERM, a closed terminal SIGHUP;
both kill a Python process at once by default, leaving its temporary files.
Inside :func:`terminate_as_interrupt` they raise :class:`Terminated`, a
:class:`KeyboardInterrupt`, so the code that already cleans up after Ctrl-C
(``except KeyboardInterrupt`` / ``BaseException``, ``finally``) cleans up after
them too.

A raise from a signal handler can be lost: Python prints "Exception ignored"
and goes on when it lands in a ``__del__``, a weakref callback or Python code
called back from a C library; and a library's bare ``except:`` may turn it into
an error of its own (mmengine's config formatter raises ``SyntaxError``). So the
signal is also remembered: :func:`raise_if_pending` (called between units of
work: a study's cells, a bench's engines, the tiler's batches) raises it again,
and the block itself raises it at its end if it was swallowed, or in place of
any error that leaves the block once the signal came.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

#: the signal whose :class:`Terminated` is on its way (or was lost), while a block runs
_pending: int | None = None

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by ``signum``; exit with status ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)  # args stay (signum,), so it pickles
        self.signum = signum
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Raise :class:`Terminated` in the main thread on SIGTERM or SIGHUP while the block runs.

    Only signals left at their default action are taken over: ignored ones
    (``nohup``) stay ignored and a caller's own handler stays in charge, so
    nesting is harmless. Like Ctrl-C, each signal raises, so a second one can
    cut a slow clean-up short. Outside the main thread this does nothing, since
    Python runs signal handlers only there. The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    global _pending

    def handler(signum, frame) -> None:
        global _pending
        _pending = signum
        raise Terminated(signum)

    previous = {}
    try:
        for signum in SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
        try:
            yield
        except Exception as exc:
            if _pending is not None:  # a library's bare except made its own error of the signal's
                raise Terminated(_pending) from exc
            raise
        raise_if_pending()  # the block ended normally, yet a signal came: its exception was lost
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if previous:
            _pending = None


def raise_if_pending() -> None:
    """Raise :class:`Terminated` again if a signal came and its exception was swallowed.

    Call it only where normal work goes on (between units of work), not from
    clean-up code running because of that very exception.
    """
    if _pending is not None:
        raise Terminated(_pending)


def end_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (even by SIGKILL): for the child
    processes segbench starts (a bench's measuring child, a training's ranks)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
