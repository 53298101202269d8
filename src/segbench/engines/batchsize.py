"""``--batch auto``: the batch size an engine runs whole scenes fastest at, measured.

Each candidate (1, 2, 4, 8, 16; up to 64 on a GPU) runs the engine as the tiler runs it: loaded
in throughput mode for that batch, batches streamed back to back with the
engine's requests in flight, on real tiles of the scene. The batch with the
best tiles/s wins. Throughput over batch size rises and then falls, so the
sweep ends at the first candidate clearly slower than the best so far.

A sweep costs seconds, so its result is kept beside the artifact in
``<artifact>.batch.json``, keyed by the artifact (size and modification time,
so a rebuilt engine is measured again) and the machine (CPU model and cores):
the next run there reuses it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.engines.base import infer_stream
from segbench.files import write_text
from segbench.machine import cpu_model, nvidia_driver

#: the batch sizes a sweep tries, smallest first
CANDIDATES = (1, 2, 4, 8, 16)
#: those for an engine on a GPU, which keeps gaining from larger batches than a CPU does
GPU_CANDIDATES = (*CANDIDATES, 32, 64)
#: a candidate below this fraction of the best tiles/s so far ends the sweep
STOP_BELOW = 0.9
#: the least time a candidate is timed for (after one untimed pass)
MIN_SECONDS = 0.5
SUFFIX = ".batch.json"


@dataclass(frozen=True)
class BatchChoice:
    """The chosen batch and what each measured candidate ran at (tiles/s)."""

    batch: int
    tiles_per_s: dict[int, float] = field(default_factory=dict)
    #: True when read back from an earlier sweep on this machine
    reused: bool = False

    def to_dict(self) -> dict:
        return {"batch": self.batch, "tiles_per_s": {str(b): r for b, r in self.tiles_per_s.items()},
                "reused": self.reused}

    def describe(self) -> str:
        """One line for the terminal: ``batch 4 (auto: 1: 20.1, 2: 25.3, ... tiles/s)``."""
        if not self.tiles_per_s:
            return f"batch {self.batch} (auto; the only candidate for so few windows)"
        rates = ", ".join(f"{b}: {r:.1f}" for b, r in self.tiles_per_s.items())
        how = "auto, measured earlier on this machine" if self.reused else "auto"
        return f"batch {self.batch} ({how}; tiles/s at {rates})"


def choose_batch(artifact: str | os.PathLike[str], tiles: np.ndarray, max_batch: int | None = None,
                 candidates: tuple[int, ...] = CANDIDATES, min_seconds: float = MIN_SECONDS) -> BatchChoice:
    """The candidate with the best whole-scene tiles/s for ``artifact`` on ``tiles``.

    ``tiles`` are real windows of the scene, at least as many as the largest
    candidate tried; ``max_batch`` (a scene's window count) caps the candidates.
    """
    from segbench.engines.registry import load

    artifact = Path(artifact)
    tried = tuple(b for b in candidates if b <= min(len(tiles), max_batch or len(tiles))) or (1,)
    if len(tried) == 1:  # nothing to choose between
        return BatchChoice(tried[0])
    key = _key(artifact, tried)
    if (kept := _read(artifact, key)) is not None:
        return kept
    def measure(batch: int) -> float:
        with load(artifact, mode="throughput", batch=batch) as engine:
            return _tiles_per_s(engine, tiles, batch, min_seconds)

    rates = sweep(measure, tried)
    choice = BatchChoice(max(rates, key=rates.get), rates)
    with contextlib.suppress(OSError):  # a read-only engine folder: measured again next time
        write_text(sidecar(artifact), json.dumps({"key": key, **choice.to_dict()}, indent=2) + "\n")
    return choice


def candidates_for(spec) -> tuple[int, ...]:
    """The candidates for the engine whose spec is ``spec``: more on a GPU."""
    from segbench.engines.registry import get_kind

    engine = spec.build.engine if spec.build else ""
    return GPU_CANDIDATES if engine and get_kind(engine).device == "cuda" else CANDIDATES


def sweep(measure: Callable[[int], float], candidates: tuple[int, ...]) -> dict[int, float]:
    """``measure(batch)`` (tiles/s) for each candidate in turn, until one falls below
    :data:`STOP_BELOW` of the best so far (past the peak, larger batches only lose)."""
    rates: dict[int, float] = {}
    for batch in candidates:
        rates[batch] = measure(batch)
        if rates[batch] < STOP_BELOW * max(rates.values()):
            break
    return rates


def sidecar(artifact: Path) -> Path:
    """Where a sweep's result for ``artifact`` is kept."""
    return artifact.with_name(artifact.name + SUFFIX)


def _tiles_per_s(engine, tiles: np.ndarray, batch: int, min_seconds: float) -> float:
    """Tiles/s streaming whole batches of ``tiles`` through ``engine`` (one untimed fill first).

    Timed in passes that keep every request busy (twice the requests in
    flight, one batch for an engine without any), until ``min_seconds``.
    """
    batches = [tiles[i:i + batch] for i in range(0, len(tiles) - batch + 1, batch)]
    inflight = getattr(engine, "inflight", 1)
    per_pass = 2 * inflight if inflight > 1 else 1

    def stream(count: int) -> None:
        for _ in infer_stream(engine, itertools.islice(itertools.cycle(batches), count)):
            pass

    stream(inflight)  # warm-up: each request's first run
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or not done:
        stream(per_pass)
        done += per_pass * batch
    return done / elapsed


def _key(artifact: Path, tried: tuple[int, ...]) -> dict:
    """What a kept result depends on: the artifact's files, this machine, the candidates."""
    stats = [artifact.stat()]
    if artifact.suffix == ".xml":  # OpenVINO's weights live beside it
        stats.append(artifact.with_suffix(".bin").stat())
    return {"artifact": [[s.st_size, s.st_mtime_ns] for s in stats], "cpu": cpu_model(),
            "cores": os.cpu_count(), "nvidia_driver": nvidia_driver(), "candidates": list(tried)}


def _read(artifact: Path, key: dict) -> BatchChoice | None:
    try:
        record = json.loads(sidecar(artifact).read_text())
        if record.get("key") != key:
            return None
        rates = {int(b): float(r) for b, r in record["tiles_per_s"].items()}
        return BatchChoice(int(record["batch"]), rates, reused=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
