"""The server's figures in Prometheus' text exposition format (no client library needed)."""

from __future__ import annotations

import threading
from collections import Counter

#: request latency buckets (seconds)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request latencies by route, tiles served, and what the batcher and the job folder report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, list[int]] = {}
        self._sums: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._codes: Counter[tuple[str, int]] = Counter()
        self.tiles = 0

    def observe(self, route: str, seconds: float, status: int) -> None:
        with self._lock:
            buckets = self._buckets.setdefault(route, [0] * len(BUCKETS))
            for i, le in enumerate(BUCKETS):
                if seconds <= le:
                    buckets[i] += 1
            self._sums[route] += seconds
            self._counts[route] += 1
            self._codes[(route, status)] += 1
            if route == "tile" and status == 200:
                self.tiles += 1

    def render(self, batcher_stats, queue_depth: int, jobs: Counter, model_pixels: int, cache=None) -> str:
        lines = ["# HELP segbench_request_seconds Request latency.",
                 "# TYPE segbench_request_seconds histogram"]
        with self._lock:
            for route, buckets in sorted(self._buckets.items()):
                for le, n in zip(BUCKETS, buckets, strict=True):
                    lines.append(f'segbench_request_seconds_bucket{{route="{route}",le="{le}"}} {n}')
                n = self._counts[route]
                lines.append(f'segbench_request_seconds_bucket{{route="{route}",le="+Inf"}} {n}')
                lines.append(f'segbench_request_seconds_sum{{route="{route}"}} {self._sums[route]:.6f}')
                lines.append(f'segbench_request_seconds_count{{route="{route}"}} {self._counts[route]}')
            lines += ["# TYPE segbench_requests_total counter"]
            lines += [f'segbench_requests_total{{route="{r}",code="{c}"}} {n}'
                      for (r, c), n in sorted(self._codes.items())]
            lines += ["# TYPE segbench_tiles_served_total counter",
                      f"segbench_tiles_served_total {self.tiles}"]
        lines += ["# TYPE segbench_model_pixels_total counter", f"segbench_model_pixels_total {model_pixels}",
                  "# TYPE segbench_batcher_queue_depth gauge", f"segbench_batcher_queue_depth {queue_depth}",
                  "# TYPE segbench_batcher_max_queue_depth gauge",
                  f"segbench_batcher_max_queue_depth {batcher_stats.max_queue_depth}",
                  "# HELP segbench_batches_total Engine batches formed by the dynamic batcher, by size.",
                  "# TYPE segbench_batches_total counter"]
        sizes = sorted(batcher_stats.histogram.items())
        lines += [f'segbench_batches_total{{size="{k}"}} {v}' for k, v in sizes]
        lines += ["# TYPE segbench_batched_requests_total counter",
                  f"segbench_batched_requests_total {batcher_stats.requests}",
                  "# TYPE segbench_jobs gauge"]
        lines += [f'segbench_jobs{{status="{s}"}} {n}' for s, n in sorted(jobs.items())]
        if cache is not None:
            lines += ["# TYPE segbench_tile_cache_hits_total counter",
                      f"segbench_tile_cache_hits_total {cache.hits}",
                      "# TYPE segbench_tile_cache_misses_total counter",
                      f"segbench_tile_cache_misses_total {cache.misses}"]
        return "\n".join(lines) + "\n"
