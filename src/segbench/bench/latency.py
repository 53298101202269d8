"""Latency statistics of repeated calls: warm-up, then enough iterations for stable figures.

A tail percentile is stated only from enough samples. The minimums are
MLPerf Inference's early-stopping floors (LoadGen ``early_stopping.cc``, the
SingleStream minimum query counts at tolerance 0 and 99 % confidence): 64
samples for the 90th percentile and 662 for the 99th. Below its minimum a
percentile is None ("not stated"), never a number that looks sound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

NOISY_CV = 0.10
P90_MIN_SAMPLES = 64
P99_MIN_SAMPLES = 662


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds; ``p90``/``p99`` are None below their minimum sample count."""

    n: int
    mean: float
    std: float
    p50: float
    p90: float | None
    p99: float | None
    min: float
    max: float

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean)."""
        return self.std / self.mean if self.mean else 0.0

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    @classmethod
    def from_samples(cls, seconds: list[float] | np.ndarray) -> LatencyStats:
        ms = np.asarray(seconds, np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        return cls(n=int(ms.size), mean=float(ms.mean()), std=float(ms.std()), p50=p50,
                   p90=p90 if ms.size >= P90_MIN_SAMPLES else None,
                   p99=p99 if ms.size >= P99_MIN_SAMPLES else None,
                   min=float(ms.min()), max=float(ms.max()))

    def to_dict(self) -> dict:
        return {**asdict(self), "cv": self.cv}


def time_callable(fn: Callable[[], object], warmup: int = 3, min_iters: int = 10,
                  max_iters: int = 1000, min_seconds: float = 1.0) -> LatencyStats:
    """Time ``fn``: ``warmup`` untimed calls, then at least ``min_iters`` calls and
    ``min_seconds`` of timed calls (at most ``max_iters``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_iters and (
        len(samples) < min_iters or time.perf_counter() - start < min_seconds
    ):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return LatencyStats.from_samples(samples)
