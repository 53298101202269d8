"""Peak memory from the kernel's high-water marks: a short spike between samples is not missed."""

import subprocess
import sys
import threading
import time

import psutil

from segbench.bench.memory import PeakMemory

SPIKE = 300 * 2**20


class _RssSampler:
    """The sampler segbench used before: RSS read in a thread every 5 ms."""

    def __init__(self) -> None:
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.baseline = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _spike() -> None:
    """Allocate, touch and free SPIKE bytes while holding the GIL, so no sampling thread runs."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)  # a waiting thread asks for the GIL only after 30 s
    try:
        time.sleep(0.02)  # the sampler's next GIL wait now uses the long interval
        block = b"\x01" * SPIKE  # memset: every page resident
        del block  # munmap: resident memory falls back at once
    finally:
        sys.setswitchinterval(interval)


def test_high_water_mark_catches_a_spike_the_sampler_misses():
    with _RssSampler() as sampler, PeakMemory() as mem:
        time.sleep(0.05)
        _spike()
        time.sleep(0.05)
    assert sampler.peak - sampler.baseline < SPIKE // 3, "the 5 ms sampler saw the spike"
    assert mem.peak_rss_bytes - mem.baseline_rss_bytes > 0.9 * SPIKE


def test_children_peak_counts_a_child_process():
    with PeakMemory() as mem:
        subprocess.run([sys.executable, "-c", f"b = b'x' * {SPIKE}"], check=True)
    assert mem.children_peak_rss_bytes > SPIKE

