"""Memory probes: peak resident memory from the kernel's high-water marks, GPU memory, a fresh child.

:class:`PeakMemory` reads the kernel's high-water marks (:mod:`segbench.peak`),
so no peak is missed between samples. The mark of a process only ever grows
unless reset, so the bench measures each engine in a fresh child process
(:func:`run_in_child`).
"""

from __future__ import annotations

import multiprocessing
import sys
import traceback
from collections.abc import Callable
from typing import Any

from segbench.errors import EngineError, SegbenchError, first_line
from segbench.peak import children_peak_rss_bytes, current_rss_bytes, peak_rss_bytes, reset_peak


class PeakMemory:
    """Context manager: peak resident memory of this process, and of its children, while open.

    On entry the process's high-water mark is reset to its current resident
    set (where the kernel allows; otherwise the peak counts from the process's
    start). ``children_peak_rss_bytes`` is the largest peak of any child
    process this one has waited for (the kernel keeps one figure for all of
    them, since this process started).
    """

    def __init__(self) -> None:
        self.baseline_rss_bytes = 0
        self.peak_rss_bytes = 0
        self.children_peak_rss_bytes = 0
        self.reset = False

    def __enter__(self) -> PeakMemory:
        self.reset = reset_peak()
        self.baseline_rss_bytes = current_rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        self.peak_rss_bytes = peak_rss_bytes()
        self.children_peak_rss_bytes = children_peak_rss_bytes()


def gpu_memory() -> dict | None:
    """Allocated and peak CUDA memory of this process (torch's allocator), or None.

    Only looks when the engine already imported torch: importing it here would
    add hundreds of MiB to the resident memory being measured.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {
        "device": torch.cuda.get_device_name(),
        "allocated_bytes": int(torch.cuda.memory_allocated()),
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
        "device_used_bytes": int(total - free),
        "device_total_bytes": int(total),
    }


class ChildError(EngineError):
    """The measuring child process failed; ``details`` holds its full traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def describe(exc: BaseException) -> str:
    """One line for a failure: a user error's sentence, any other error's type and first line."""
    return first_line(exc) if isinstance(exc, SegbenchError) else f"{type(exc).__name__}: {first_line(exc)}"


def _child(conn, fn: Callable, args: tuple) -> None:
    from segbench.errors import show_warnings_in_one_line
    from segbench.signals import end_with_parent, terminate_as_interrupt

    end_with_parent()
    show_warnings_in_one_line()
    try:
        with terminate_as_interrupt():  # SIGTERM from the parent cleans up as Ctrl-C does
            conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        conn.send(("error", describe(exc), traceback.format_exc()))
    finally:
        conn.close()


def run_in_child(fn: Callable, *args: Any, timeout_s: float | None = None) -> Any:
    """Run a picklable top-level ``fn(*args)`` in a fresh process and return its result.

    A failure in the child becomes a :class:`ChildError` with its one-line
    message and, in ``details``, the child's traceback.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise EngineError(f"The child process did not finish within {timeout_s} s.")
        status, payload, *details = parent.recv()
    except EOFError:
        proc.join()
        code = proc.exitcode
        why = " (killed: out of memory?)" if code and code < 0 else ""
        raise EngineError(
            f"The measuring child process ended with exit code {code} and no result{why}."
        ) from None
    except KeyboardInterrupt:
        proc.terminate()
        raise
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    if status == "ok":
        return payload
    raise ChildError(payload, "".join(details))
