"""``--batch auto``: the batch size an engine runs whole scenes fastest at, measured.

Each candidate (1, 2, 4, 8, 16; up to 64 on a GPU; never more than the engine
takes) runs the engine as the tiler runs it: loaded in throughput mode for that
batch, batches streamed back to back with the engine's requests in flight, on
real tiles of the scene. The batch with the best tiles/s wins. Throughput over
batch size rises and then falls, so the sweep ends at the first candidate
clearly slower than the best so far.

The sweep pays for itself or stops: given the windows the run will segment, it
ends once it has spent :data:`SWEEP_SHARE` of the time they take at the best
rate so far (an engine compiled per batch, OpenVINO's, costs a compilation per
candidate; on an 8,192^2 scene the sweep once cost as much as the scene). An
engine whose runtime takes any batch without recompiling (ONNX Runtime,
torch) is loaded once for every candidate. What the sweep cost is printed with
its choice, and its result is kept beside the artifact in
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
#: the share of the run's estimated time a sweep may spend (loading and timing candidates)
SWEEP_SHARE = 0.10
SUFFIX = ".batch.json"


@dataclass(frozen=True)
class BatchChoice:
    """The chosen batch, what each measured candidate ran at (tiles/s) and what the sweep cost."""

    batch: int
    tiles_per_s: dict[int, float] = field(default_factory=dict)
    #: True when read back from an earlier sweep on this machine
    reused: bool = False
    #: seconds the sweep took (loading and timing candidates); 0 when nothing was measured
    seconds: float = 0.0
    #: why it stopped before the last candidate ("past the peak", "budget"), if it did
    stopped: str | None = None

    def to_dict(self) -> dict:
        return {"batch": self.batch, "tiles_per_s": {str(b): r for b, r in self.tiles_per_s.items()},
                "reused": self.reused, "seconds": self.seconds, "stopped": self.stopped}

    def describe(self) -> str:
        """One line for the terminal: ``batch 4 (auto: 1: 20.1, 2: 25.3, ... tiles/s; sweep 2.1 s)``."""
        if not self.tiles_per_s:
            return f"batch {self.batch} (auto; the only candidate for so few windows)"
        rates = ", ".join(f"{b}: {r:.1f}" for b, r in self.tiles_per_s.items())
        if self.reused:
            return f"batch {self.batch} (auto, measured earlier on this machine; tiles/s at {rates})"
        why = {"budget": f", stopped at {SWEEP_SHARE:.0%} of the run's time",
               "peak": ", stopped past the peak"}.get(self.stopped or "", "")
        return f"batch {self.batch} (auto; tiles/s at {rates}; sweep {self.seconds:.1f} s{why})"


def choose_batch(artifact: str | os.PathLike[str], tiles: np.ndarray, max_batch: int | None = None,
                 candidates: tuple[int, ...] = CANDIDATES, min_seconds: float = MIN_SECONDS,
                 work: int | None = None, spec=None) -> BatchChoice:
    """The candidate with the best whole-scene tiles/s for ``artifact`` on ``tiles``.

    ``tiles`` are real windows of the scene, at least as many as the largest
    candidate tried; ``max_batch`` (a scene's window count) caps the candidates;
    ``work``, the windows the run will segment, bounds what the sweep spends
    (:data:`SWEEP_SHARE` of their time at the best rate so far). ``spec``: the artifact's spec,
    when the caller has read it already.
    """
    from segbench.engines.registry import get_kind, load
    from segbench.spec import ModelSpec

    artifact = Path(artifact)
    tried = tuple(b for b in candidates if b <= min(len(tiles), max_batch or len(tiles))) or (1,)
    if len(tried) == 1:  # nothing to choose between
        return BatchChoice(tried[0])
    key = _key(artifact, tried)
    if (kept := _read(artifact, key)) is not None:
        return kept
    spec = spec if spec is not None else ModelSpec.load(artifact)
    runner = get_kind(spec.build.engine).runner
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        shared: list = []  # the one engine that serves every batch not loaded for its own, once needed

        def measure(batch: int) -> float:
            if runner.tuned_for(batch):  # loaded for this batch (OpenVINO compiles for it)
                with load(artifact, mode="throughput", batch=batch, spec=spec) as engine:
                    return _tiles_per_s(engine, tiles, batch, min_seconds)
            if not shared:
                shared.append(stack.enter_context(load(artifact, mode="throughput", spec=spec)))
            return _tiles_per_s(shared[0], tiles, batch, min_seconds)

        def spent_enough(rates: dict[int, float]) -> bool:
            return work is not None and time.perf_counter() - start > SWEEP_SHARE * work / max(rates.values())

        rates, stopped = sweep(measure, tried, spent_enough)
    choice = BatchChoice(max(rates, key=rates.get), rates, seconds=time.perf_counter() - start,
                         stopped=stopped)
    with contextlib.suppress(OSError):  # a read-only engine folder: measured again next time
        write_text(sidecar(artifact), json.dumps({"key": key, **choice.to_dict()}, indent=2) + "\n")
    return choice


def candidates_for(spec) -> tuple[int, ...]:
    """The candidates for the engine whose spec is ``spec``: more on a GPU, none larger than the
    engine takes (a TensorRT plan's profile, from its build record)."""
    from segbench.engines.registry import get_kind

    engine = spec.build.engine if spec.build else ""
    if not engine:
        return CANDIDATES
    kind = get_kind(engine)
    candidates = GPU_CANDIDATES if kind.device == "cuda" else CANDIDATES
    limit = kind.runner.batch_limit(spec)
    return tuple(b for b in candidates if limit is None or b <= limit) or (1,)


def sweep(measure: Callable[[int], float], candidates: tuple[int, ...],
          enough: Callable[[dict[int, float]], bool] = lambda rates: False
          ) -> tuple[dict[int, float], str | None]:
    """``measure(batch)`` (tiles/s) for each candidate in turn, until one falls below
    :data:`STOP_BELOW` of the best so far (past the peak, larger batches only lose: "peak") or
    ``enough(rates)`` says the sweep has cost what it may ("budget"); the rates and why it stopped."""
    rates: dict[int, float] = {}
    for i, batch in enumerate(candidates):
        rates[batch] = measure(batch)
        last = i == len(candidates) - 1
        if rates[batch] < STOP_BELOW * max(rates.values()):
            return rates, None if last else "peak"
        if not last and enough(rates):
            return rates, "budget"
    return rates, None


def sidecar(artifact: Path) -> Path:
    """Where a sweep's result for ``artifact`` is kept."""
    return artifact.with_name(artifact.name + SUFFIX)


def _tiles_per_s(engine, tiles: np.ndarray, batch: int, min_seconds: float) -> float:
    """Tiles/s streaming whole batches of ``tiles`` through ``engine`` (one untimed fill first).

    Timed in passes that keep every request busy (twice the requests in
    flight, one batch for an engine without any), until ``min_seconds``.
    """
    batches = [tiles[i:i + batch] for i in range(0, len(tiles) - batch + 1, batch)]
    inflight = engine.inflight
    per_pass = 2 * inflight if inflight > 1 else 1

    def stream(count: int) -> None:
        for _ in engine.infer_stream(itertools.islice(itertools.cycle(batches), count)):
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
        return BatchChoice(int(record["batch"]), rates, reused=True, seconds=float(record.get("seconds", 0)),
                           stopped=record.get("stopped"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
