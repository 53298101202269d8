"""The kernel's memory high-water marks: no sampling, so no peak is missed.

``VmHWM`` (Linux, /proc/self/status) is the largest resident set this process
has had since it started (or since :func:`reset_peak`); ``RUSAGE_CHILDREN``
gives the largest peak among the child processes it has waited for. Both are
kept by the kernel at every page fault, unlike a sampled RSS that misses
short spikes between samples.
"""

from __future__ import annotations

import resource
import sys

import psutil


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark, in bytes.

    On Linux this is ``VmHWM``, which starts afresh at exec; ``ru_maxrss`` is
    not used there because Linux carries it across fork and exec, so a spawned
    child would report its parent's peak. Elsewhere ``ru_maxrss``.
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


def children_peak_rss_bytes() -> int:
    """The largest resident-memory peak of any child process this one has waited for."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak() -> bool:
    """Start this process's high-water mark afresh from its current resident set (Linux >= 4.0).

    Returns False where the kernel does not allow it; the mark then keeps
    counting from the process's start.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    return psutil.Process().memory_info().rss
