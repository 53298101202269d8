"""Memory probes: a process's peak resident memory, GPU memory, and a fresh child process.

The OS high-water mark (``ru_maxrss``) only ever grows over a process's
life, so the bench measures each engine in a fresh child process
(:func:`run_in_child`); :class:`PeakMemory` also samples the resident set
size in a thread so a window of work inside one process can be measured.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import psutil

from segbench.errors import EngineError, SegbenchError


class PeakMemory:
    """Context manager: peak resident set size of this process while it is open."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline_rss_bytes = 0
        self.peak_rss_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_rss_bytes = max(self.peak_rss_bytes, self._proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self.baseline_rss_bytes = self.peak_rss_bytes = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="segbench-mem", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._proc.memory_info().rss)


def process_peak_rss_bytes() -> int:
    """The OS's high-water mark of this process's resident memory.

    On Linux this is ``VmHWM`` of /proc/self/status, which starts afresh at
    exec; ``ru_maxrss`` is not used there because Linux carries it across
    fork and exec, so a spawned child would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


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


def _child(conn, fn: Callable, args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except SegbenchError as exc:
        conn.send(("user", f"{type(exc).__name__}: {exc}"))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_in_child(fn: Callable, *args: Any, timeout_s: float | None = None) -> Any:
    """Run a picklable top-level ``fn(*args)`` in a fresh process and return its result.

    A failure in the child becomes an :class:`EngineError` with its one-line message.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise EngineError(f"The child process did not finish within {timeout_s} s.")
        status, payload = parent.recv()
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
    raise EngineError(payload.splitlines()[0])
