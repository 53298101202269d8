"""MLPerf scenarios: LoadGen (``mlperf_loadgen``) drives an engine through the dynamic batcher.

The query sample library (QSL) is the bench's own windows, preloaded as one
array; the system under test (SUT) is the engine behind one
:class:`~segbench.batcher.DynamicBatcher`, answering each sample with its
tile's uint8 labels (argmax). Scenarios, as LoadGen defines them:

- ``single-stream``: one sample per query, the next once it is answered; p90 latency.
- ``multi-stream``: ``samples_per_query`` (8) samples per query, one query at a time; p99.
- ``server``: Poisson arrivals at a target QPS; the figure is the highest target QPS
  whose run is VALID under a p99 bound, found by a search within a time budget
  (short probes, then points long enough for LoadGen's early stopping: about 662
  queries for p99); every point is kept, for latency against offered QPS.
- ``offline``: every sample at once; samples per second.
- ``accuracy``: an AccuracyOnly run (every tile once); ``mlperf_log_accuracy.json`` is
  decoded and scored into a confusion matrix, and checked against the same
  engine run on the tiles directly.

Each LoadGen run happens in a child process (``StartTest`` blocks and cannot be
interrupted from Python): Ctrl-C in the parent kills the child at once, and its
logs are written to a staging folder renamed to ``log_dir`` only when complete.
Figures, percentiles and validity come from LoadGen's own
``mlperf_log_summary.txt`` and ``mlperf_log_detail.txt``; nothing of LoadGen's
timing or validity rules is recomputed here.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segbench.batcher import DeviceBatcher, DynamicBatcher
from segbench.bench.loadgen_results import (  # noqa: F401  (the scenarios' own names, re-exported)
    P99_MIN_QUERIES,
    SCENARIOS,
    SEEDS,
    ScenarioResult,
    ScenarioSettings,
    ServerPoint,
)
from segbench.bench.metrics import ConfusionMatrix
from segbench.engines.registry import load
from segbench.errors import (
    EngineError,
    InputError,
    SegbenchError,
    first_line,
)
from segbench.spec import IGNORE_INDEX, ModelSpec
from segbench.tiler.accumulate import tile_labels
from segbench.tiler.device import runs_on_device

_LG_NAMES = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "server": "Server",
             "offline": "Offline", "accuracy": "Offline"}

LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json")


def loadgen():
    """The ``mlperf_loadgen`` module, or one sentence saying how to install it (exit 3)."""
    from segbench.extras import require

    return require("mlperf_loadgen", "--scenarios (MLPerf LoadGen)")


# -- LoadGen's logs -------------------------------------------------------------------------------


def read_summary(log_dir: Path) -> dict[str, str]:
    """``mlperf_log_summary.txt`` as ``{name: value}`` for its ``name : value`` lines."""
    out: dict[str, str] = {}
    for line in (Path(log_dir) / "mlperf_log_summary.txt").read_text().splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() and name.strip() not in out:
            out[name.strip()] = value.strip()
    return out


def read_detail(log_dir: Path) -> dict[str, Any]:
    """``mlperf_log_detail.txt``'s ``:::MLLOG`` records as ``{key: value}`` (the last of each key)."""
    out: dict[str, Any] = {}
    for line in (Path(log_dir) / "mlperf_log_detail.txt").read_text().splitlines():
        if line.startswith(":::MLLOG "):
            record = json.loads(line[len(":::MLLOG "):])
            out[record["key"]] = record.get("value")
    return out


def _ms(value: Any) -> float | None:
    return None if value is None else float(value) / 1e6


def parse_logs(log_dir: Path) -> dict[str, Any]:
    """Validity, headline figure and percentiles of one LoadGen run, as LoadGen wrote them."""
    summary, detail = read_summary(log_dir), read_detail(log_dir)
    scenario = summary.get("Scenario", "")
    headline = {"Server": "Completed samples per second", "Offline": "Samples per second",
                "SingleStream": "90.0th percentile latency (ns)",
                "MultiStream": "99.0th percentile latency (ns)"}.get(scenario)
    figure = float(summary[headline]) if headline in summary else None
    if figure is not None and scenario in ("SingleStream", "MultiStream"):
        figure /= 1e6
    return {
        "scenario": scenario,
        "valid": summary.get("Result is") == "VALID",
        "figure": figure,
        "p50_ms": _ms(detail.get("result_50.00_percentile_latency_ns")),
        "p90_ms": _ms(detail.get("result_90.00_percentile_latency_ns")),
        "p99_ms": _ms(detail.get("result_99.00_percentile_latency_ns")),
        "queries": int(detail.get("result_query_count") or 0),
        "min_duration_met": bool(detail.get("result_min_duration_met", True)),
        "completed_qps": detail.get("result_completed_samples_per_sec"),
        "overlatency": detail.get("result_overlatency_query_count"),
        "errors": int(detail.get("num_errors") or 0),
    }


def read_accuracy_log(log_dir: Path, tile_shape: tuple[int, int], count: int) -> np.ndarray:
    """The labels in ``mlperf_log_accuracy.json``, ``(count, H, W)`` uint8 by QSL index; one sentence
    if a tile is missing, answered twice, or of the wrong size."""
    records = json.loads((Path(log_dir) / "mlperf_log_accuracy.json").read_text())
    labels = np.zeros((count, *tile_shape), np.uint8)
    seen = np.zeros(count, np.int64)
    size = int(np.prod(tile_shape))
    for record in records:
        index, data = int(record["qsl_idx"]), bytes.fromhex(record["data"])
        if not 0 <= index < count or len(data) != size:
            raise EngineError(f"The accuracy log has an answer for tile {index} of {len(data)} bytes; "
                              f"expected tiles 0..{count - 1} of {size} bytes.")
        seen[index] += 1
        labels[index] = np.frombuffer(data, np.uint8).reshape(tile_shape)
    if (seen != 1).any():
        missing, twice = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        raise EngineError(f"The accuracy log answers {len(missing)} tiles never and {len(twice)} more "
                          f"than once (first: {[*missing[:3], *twice[:3]]}); the SUT lost or repeated "
                          "responses.")
    return labels


def score_labels(pred: np.ndarray, targets: np.ndarray, num_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
    """A confusion matrix of tile labels ``(N, H, W)`` against the tiles' targets."""
    matrix = ConfusionMatrix(num_classes, ignore_index)
    matrix.update(pred, targets)
    return matrix


def score_accuracy_log(log_dir: Path, targets: np.ndarray, num_classes: int,
                       ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
    """The accuracy log decoded and scored against ``targets`` ``(N, H, W)`` (the tiles' labels):
    equal to scoring the same tiles directly when the SUT answered every tile with its own labels."""
    pred = read_accuracy_log(log_dir, targets.shape[1:], len(targets))
    return score_labels(pred, targets, num_classes, ignore_index)


# -- the system under test (in the child) --------------------------------------------------------


def labels_of(out) -> np.ndarray:
    """A batch's uint8 labels on the host: the argmax of logits, or labels as they are; a device
    tensor's argmax is taken on its device, so only the labels come back."""
    if not isinstance(out, np.ndarray):  # a torch tensor (the device batcher's)
        import torch

        return (out if out.ndim == 3 else out.argmax(1)).to(torch.uint8).cpu().numpy()
    return out if out.ndim == 3 else tile_labels(out)


class Sut:
    """LoadGen's SUT and QSL over preloaded ``tiles``, answering through ``batcher``.

    Each answer completes its own query id exactly once (an id answered twice is
    counted in ``duplicates`` and not passed on); ``last_answer`` feeds the stall
    watchdog.
    """

    def __init__(self, lg, tiles: np.ndarray, batcher: DynamicBatcher) -> None:
        self.lg, self.tiles, self.batcher = lg, tiles, batcher
        self.outstanding: set[int] = set()
        self.duplicates = 0
        self.errors: list[str] = []
        self.last_answer = time.monotonic()
        self._lock = threading.Lock()
        self.sut = lg.ConstructSUT(self.issue, lambda: None)
        n = len(tiles)
        self.qsl = lg.ConstructQSL(n, n, lambda samples: None, lambda samples: None)

    def issue(self, samples) -> None:
        ids = [(s.id, s.index) for s in samples]
        with self._lock:
            if not self.outstanding:  # the stall clock runs from the oldest unanswered query
                self.last_answer = time.monotonic()
            self.outstanding.update(i for i, _ in ids)
        futures = self.batcher.submit_many([self.tiles[index] for _, index in ids])
        for (qid, _), fut in zip(ids, futures, strict=True):
            fut.add_done_callback(lambda f, qid=qid: self._answer(qid, f))

    def _answer(self, qid: int, fut) -> None:
        with self._lock:
            if qid not in self.outstanding:
                self.duplicates += 1
                return
            self.outstanding.discard(qid)
            self.last_answer = time.monotonic()
        exc = fut.exception()
        if exc is not None:
            self.errors.append(first_line(exc))
            data = np.zeros(0, np.uint8)
        else:
            data = np.ascontiguousarray(fut.result())
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(qid, data.ctypes.data, data.nbytes)])

    def close(self) -> None:
        self.lg.DestroyQSL(self.qsl)
        self.lg.DestroySUT(self.sut)


def _watchdog(sut: Sut, conn, stall_s: float) -> None:
    """End the child with a one-sentence error when queries stay unanswered for ``stall_s``."""
    while True:
        time.sleep(min(0.5, stall_s / 4))
        with sut._lock:
            stuck = bool(sut.outstanding) and time.monotonic() - sut.last_answer > stall_s
            n = len(sut.outstanding)
        if stuck:
            conn.send(("error", f"{n} LoadGen queries stayed unanswered for {stall_s:g} s: the "
                                "system under test dropped responses.", ""))
            conn.close()
            os._exit(1)


def _lg_settings(lg, s: ScenarioSettings, expected: dict[str, float], qps: float | None = None):
    """LoadGen's ``TestSettings`` for ``s``; ``expected``: the engine's measured batch-1 seconds and
    tiles/s, which size the runs as LoadGen asks (expected latency, expected QPS)."""
    t = lg.TestSettings()
    t.scenario = getattr(lg.TestScenario, _LG_NAMES[s.scenario])
    t.mode = lg.TestMode.AccuracyOnly if s.scenario == "accuracy" else lg.TestMode.PerformanceOnly
    t.min_duration_ms, t.min_query_count = s.min_duration_ms, s.min_query_count
    t.qsl_rng_seed, t.sample_index_rng_seed = s.qsl_rng_seed, s.sample_index_rng_seed
    t.schedule_rng_seed = s.schedule_rng_seed
    t.single_stream_expected_latency_ns = int(expected["latency_s"] * 1e9)
    t.multi_stream_samples_per_query = s.samples_per_query
    t.multi_stream_expected_latency_ns = int(s.samples_per_query / expected["tiles_per_s"] * 1e9)
    t.offline_expected_qps = expected["tiles_per_s"] * 1.5  # longer than asked beats too short
    if qps is not None:
        t.server_target_qps = qps
        t.server_target_latency_ns = int(expected["bound_ms"] * 1e6)
    return t


def _run_loadgen(lg, sut: Sut, settings, log_dir: Path) -> dict[str, Any]:
    """One LoadGen test logging into ``log_dir``; its parsed logs and the batcher's statistics."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut.batcher.reset_stats()
    lg.StartTestWithLogSettings(sut.sut, sut.qsl, settings, log)
    if sut.errors or sut.duplicates:
        raise EngineError(f"The system under test failed {len(sut.errors)} samples and answered "
                          f"{sut.duplicates} twice (first error: {(sut.errors or ['none'])[0]}).")
    return {**parse_logs(log_dir), "stats": sut.batcher.stats()}


# -- the scenarios (in the child) -----------------------------------------------------------------


def _measure(batcher: DynamicBatcher, tiles: np.ndarray) -> dict[str, float]:
    """Warm up; the engine's batch-1 median seconds (one call), and its tiles/s with all its streams
    busy (its own ``infer_stream``) at the batcher's largest batch and for single tiles."""
    engine = batcher.engine
    one = []
    for i in range(5):
        start = time.perf_counter()
        engine.infer(tiles[i % len(tiles)][None])
        one.append(time.perf_counter() - start)
    batch = np.ascontiguousarray(tiles[np.arange(batcher.max_batch) % len(tiles)])
    engine.infer(batch)
    singles = [tiles[i % len(tiles)][None] for i in range(4 * batcher.workers)]
    return {"latency_s": float(np.median(one[1:])), "tiles_per_s": _rate(engine, [batch, batch]),
            "single_tiles_per_s": _rate(engine, singles)}


def _rate(engine, batches: list[np.ndarray]) -> float:
    """Tiles per second of ``batches`` through the engine's own stream (every stream busy)."""
    start = time.perf_counter()
    for _ in engine.infer_stream(iter(batches)):
        pass
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def _from_run(engine: str, s: ScenarioSettings, run: dict, log_dir: Path, **extra) -> ScenarioResult:
    stats = run["stats"]
    unit = {"single-stream": "ms", "multi-stream": "ms", "offline": "samples/s"}[s.scenario]
    note = None if run["valid"] else "LoadGen: INVALID (see mlperf_log_summary.txt)"
    return ScenarioResult(engine, s.scenario, run["valid"], run["figure"], unit, s, str(log_dir),
                          run["p50_ms"], run["p90_ms"], run["p99_ms"], queries=run["queries"],
                          samples=stats.requests, batch_histogram=stats.histogram,
                          max_queue_depth=stats.max_queue_depth, note=note, **extra)


def _performance(lg, sut: Sut, s: ScenarioSettings, expected: dict, log_dir: Path) -> ScenarioResult:
    """SingleStream, MultiStream or Offline; an Offline run too short for its minimum duration
    (the engine faster than measured) is run again, sized from its own figure, twice at most (a
    small engine can still be warming up in the first: 2.7x faster in the second)."""
    run = _run_loadgen(lg, sut, _lg_settings(lg, s, expected), log_dir)
    for _ in range(2):
        if s.scenario != "offline" or run["min_duration_met"] or not run["figure"]:
            break
        expected = {**expected, "tiles_per_s": run["figure"] * 1.5}
        shutil.rmtree(log_dir)
        run = _run_loadgen(lg, sut, _lg_settings(lg, s, expected), log_dir)
    return _from_run(sut.batcher.engine.name, s, run, log_dir)


def _server_point(lg, sut, s: ScenarioSettings, expected, qps: float, folder: Path,
                  probe: bool = False) -> tuple[ServerPoint, dict]:
    """One Server run at ``qps``; a probe asks for a quarter of the queries (LoadGen then calls it
    INVALID for want of queries: it only says where to look)."""
    if probe:
        s = replace(s, min_query_count=max(64, s.min_query_count // 4), min_duration_ms=0)
    run = _run_loadgen(lg, sut, _lg_settings(lg, s, expected, qps), folder)
    point = ServerPoint(round(qps, 3), run["completed_qps"], run["p50_ms"], run["p90_ms"],
                        run["p99_ms"], run["valid"] and not probe, run["queries"],
                        run["stats"].mean_batch, folder.name, probe, run["overlatency"])
    return point, run


def _point_seconds(s: ScenarioSettings, qps: float) -> float:
    """How long LoadGen will run a Server point at ``qps`` (its minimum duration and query count)."""
    return max(s.min_duration_ms / 1000, s.min_query_count / qps) + 0.5


def _next_qps(qps: float, point: ServerPoint, ok: bool, good: float | None, bad: float | None,
              bound_ms: float) -> float:
    """Up by 25% while ``ok``; while not, down by 30% (below the QPS completed by a point that
    could not keep up), or by 15% from a point whose p99 met the bound but whose few queries over
    it were too many for LoadGen's early stopping; geometric bisection once both sides are known."""
    if good and bad:
        return math.sqrt(good * bad)
    if ok:
        return qps * 1.25
    near = point.p99_ms is not None and point.p99_ms <= bound_ms
    return min(0.85 * qps if near else 0.7 * qps, 0.95 * (point.completed_qps or qps))


#: where the search starts, as a share of the capacity (Offline's rate): below most engines' figure,
#: so the first probe tends to pass and the search climbs (measured with benchmarks/bench_scenarios.py
#: on 2 cores: the highest VALID QPS was 0.39-1.0 of Offline, 0.6-0.85 for most; from 0.8 the first
#: probe failed nearly always, and make demo's 20 s search then had room for one full point only,
#: at 0.56, which failed too)
START_SHARE = 0.6


#: how much faster than single tiles the engine must run the batcher's largest batches, every stream
#: busy, for the Server search to batch at all: below it a batch only makes its tiles wait for each
#: other (engines loaded with streams for single tiles: ONNX Runtime's one-thread streams run a
#: batch on one thread, no faster per tile; OpenVINO splits a batch into its batch-1 requests)
BATCH_GAIN = 1.1


def _cap_batch(batcher: DynamicBatcher, expected: dict) -> None:
    """Batches only where they pay (:data:`BATCH_GAIN`), and then a full batch takes at most a third
    of the bound (a request may wait for one batch, then run in the next); each of the batcher's
    workers runs its batch at its share of the engine's rate."""
    if expected["tiles_per_s"] < BATCH_GAIN * expected["single_tiles_per_s"]:
        batcher.max_batch = 1
        return
    fit = int(expected["bound_ms"] / 3000 * expected["tiles_per_s"] / batcher.workers)
    batcher.max_batch = max(1, min(batcher.max_batch, fit))


def _search(lg, sut: Sut, s: ScenarioSettings, expected: dict, log_dir: Path) -> ScenarioResult:
    """Server: the highest target QPS LoadGen finds VALID under the p99 bound, within the budget.

    Unless ``max_batch`` is set, batches are capped (:func:`_cap_batch`). Short
    probes (a quarter of the queries, at most a third of the budget) find the
    highest QPS with no query over the bound (:func:`_probe`), starting from
    :data:`START_SHARE` of the capacity; full points then start from the best probe and move by
    :func:`_next_qps` on LoadGen's validity, until the bracket is within 3% or the
    next point would overrun ``search_seconds``. Only full VALID points make the
    figure. Until one is VALID, full points may end past the budget, up to twice
    it (a p99 claim's 662 queries take 22 s at 30 QPS, and a probe's few queries
    can promise a QPS a full point then fails); where not even that holds one, no
    point runs and the note says what budget would.
    """
    start, points, runs = time.monotonic(), [], {}
    if s.max_batch is None:
        _cap_batch(sut.batcher, expected)

    def run(qps: float, probe: bool) -> ServerPoint:
        kind = "probe" if probe else "qps"
        folder = log_dir / "points" / f"{len(points) + 1:02d}-{kind}-{qps:.1f}"
        point, runs[folder.name] = _server_point(lg, sut, s, expected, qps, folder, probe)
        points.append(point)
        return point

    qps = s.target_qps or START_SHARE * (s.capacity_qps or expected["tiles_per_s"])
    if not s.target_qps and _point_seconds(s, qps) <= 2 * s.search_seconds:
        qps = _probe(run, qps, expected["bound_ms"], s, start)
    if time.monotonic() - start + _point_seconds(s, qps) > 2 * s.search_seconds:
        return _no_room(sut.batcher.engine.name, s, expected, qps, log_dir, time.monotonic() - start)
    good, bad = None, None
    while True:
        point = run(qps, False)
        if point.valid:
            good = max(good or 0.0, qps)
        else:
            bad = min(bad or math.inf, qps)
        if s.target_qps or (good and bad and bad / good < 1.03):
            break
        qps = _next_qps(qps, point, point.valid, good, bad, expected["bound_ms"])
        budget = s.search_seconds if good else 2 * s.search_seconds  # no figure yet: up to twice
        if time.monotonic() - start + _point_seconds(s, qps) > budget:
            break
    return _server_result(sut.batcher.engine.name, s, expected, points, runs, log_dir)


def _probe(run, qps: float, bound_ms: float, s: ScenarioSettings, start: float) -> float:
    """Probes from ``qps``; the highest with no query over the bound (else the lowest tried,
    lowered). No query over, not p99 under: at a p99 claim's fewest queries (662) LoadGen's early
    stopping passes only with none over, so a probe whose p99 merely met the bound led the full
    points to QPS they could not hold."""
    good, bad, budget = None, None, s.search_seconds / 3
    for _ in range(5):
        point = run(qps, True)
        ok = point.p99_ms is not None and point.overlatency == 0
        if ok:
            good = max(good or 0.0, qps)
        else:
            bad = min(bad or math.inf, qps)
        if good and bad and bad / good < 1.1:
            break
        qps = _next_qps(qps, point, ok, good, bad, bound_ms)
        if time.monotonic() - start + _point_seconds(s, qps) / 4 > budget:
            break
    return good or qps


def _no_room(engine: str, s: ScenarioSettings, expected: dict, qps: float, log_dir: Path,
             spent: float) -> ScenarioResult:
    """The Server result when twice the budget, less the ``spent`` seconds of probes, holds no full
    point at ``qps`` (a slow engine)."""
    need = _point_seconds(s, qps)
    return ScenarioResult(engine, "server", False, None, "QPS", s, str(log_dir),
                          latency_bound_ms=expected["bound_ms"],
                          note=f"no full point: {s.min_query_count} queries at {qps:.2g} QPS take about "
                               f"{need:.0f} s, past twice the {s.search_seconds:g} s budget"
                               + (f" after {spent:.0f} s of probes" if spent >= 1 else "")
                               + f" (--scenario-seconds {math.ceil((spent + need) / 2)} would hold one)")


def _server_result(engine, s, expected, points, runs, log_dir: Path) -> ScenarioResult:
    """The search's result: its best valid point's logs copied to ``log_dir``, or the note."""
    bound = expected["bound_ms"]
    valid = [p for p in points if p.valid]
    full = [p for p in points if not p.probe] or points
    best = max(valid, key=lambda p: p.target_qps) if valid else \
        min(full, key=lambda p: p.p99_ms if p.p99_ms is not None else math.inf)
    for name in LOG_FILES:
        source = log_dir / "points" / best.log_dir / name
        if source.exists():
            shutil.copyfile(source, log_dir / name)
    note = None if valid else (f"no QPS meets p99 <= {bound:g} ms (best p99 "
                               f"{best.p99_ms or math.nan:.1f} ms at {best.target_qps:g} QPS)")
    stats = runs[best.log_dir]["stats"]
    return ScenarioResult(engine, "server", bool(valid), best.target_qps if valid else None, "QPS", s,
                          str(log_dir), best.p50_ms, best.p90_ms, best.p99_ms, best.target_qps, bound,
                          best.queries, stats.requests, stats.histogram, stats.max_queue_depth,
                          tuple(points), note=note)


def _accuracy(lg, sut: Sut, s: ScenarioSettings, expected: dict, log_dir: Path,
              targets: np.ndarray | None) -> ScenarioResult:
    """AccuracyOnly: the log decoded; checked tile by tile against the engine run directly; scored."""
    run = _run_loadgen(lg, sut, _lg_settings(lg, s, expected), log_dir)
    engine, tiles = sut.batcher.engine, sut.tiles
    logged = read_accuracy_log(log_dir, tiles.shape[2:], len(tiles))
    extra: dict[str, Any] = {}
    agreement = None
    if s.verify:
        step = sut.batcher.max_batch
        direct = np.concatenate([labels_of(engine.infer(np.ascontiguousarray(tiles[i:i + step])))
                                 for i in range(0, len(tiles), step)])
        same = (direct == logged).reshape(len(tiles), -1)
        extra["mismatched_tiles"] = tuple(int(i) for i in np.flatnonzero(~same.all(1)))
        agreement = float(same.mean())
    if targets is not None:
        spec = engine.spec
        matrix = score_labels(logged, targets, spec.num_classes, spec.ignore_index)
        extra["confusion"] = tuple(tuple(int(x) for x in row) for row in matrix.counts)
        if s.verify:
            direct_matrix = score_labels(direct, targets, spec.num_classes, spec.ignore_index)
            extra["direct_confusion"] = tuple(tuple(int(x) for x in row) for row in direct_matrix.counts)
    result = _from_run(engine.name, replace(s, scenario="offline"), run, log_dir, **extra)
    return replace(result, scenario="accuracy", settings=s, figure=agreement, unit="agreement",
                   valid=run["errors"] == 0 and not extra.get("mismatched_tiles"), note=None)


# -- the child process ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    artifact: str
    tiles: str
    targets: str | None
    settings: ScenarioSettings
    log_dir: str
    batcher_cls: type


def _child_main(conn, job: _Job) -> None:
    from segbench.errors import show_warnings_in_one_line
    from segbench.signals import end_with_parent

    end_with_parent()
    show_warnings_in_one_line()
    try:
        conn.send(("ok", _child_run(conn, job)))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        conn.send(("error", first_line(exc) if isinstance(exc, SegbenchError)
                   else f"{type(exc).__name__}: {first_line(exc)}", traceback.format_exc()))
    finally:
        conn.close()


def _on_device(tiles: np.ndarray, engine):
    """The sample library on the engine's device, loaded once (LoadGen's samples in its memory)."""
    import torch

    return torch.from_numpy(tiles).to(engine.device)


def _child_run(conn, job: _Job) -> ScenarioResult:
    lg, s = loadgen(), job.settings
    tiles = np.load(job.tiles)
    targets = np.load(job.targets) if job.targets else None
    engine = load(job.artifact, mode=s.engine_mode, batch=s.engine_batch, threads=s.threads)
    on_device = runs_on_device(engine, s.on_device)
    batcher_cls = DeviceBatcher if on_device and job.batcher_cls is DynamicBatcher else job.batcher_cls
    batcher = batcher_cls(engine, s.max_batch, s.max_queue_ms, postprocess=labels_of, workers=s.workers)
    s = replace(s, workers=batcher.workers, on_device=on_device)  # the result records what ran
    sut = Sut(lg, _on_device(tiles, engine) if on_device else tiles, batcher)
    try:
        expected = _measure(batcher, tiles)
        # a slow engine's full batch may take longer than stall_s: answers then come that far apart
        stall_s = max(s.stall_s, 10 * batcher.max_batch / expected["tiles_per_s"])
        threading.Thread(target=_watchdog, args=(sut, conn, stall_s), daemon=True).start()
        expected["bound_ms"] = s.latency_bound_ms or 10 * expected["latency_s"] * 1000
        log_dir = Path(job.log_dir)
        if s.scenario == "server":
            return _search(lg, sut, s, expected, log_dir)
        if s.scenario == "accuracy":
            return _accuracy(lg, sut, s, expected, log_dir, targets)
        return _performance(lg, sut, s, expected, log_dir)
    finally:
        batcher.close()
        sut.close()
        engine.close()


def _in_child(job: _Job, timeout_s: float | None) -> ScenarioResult:
    """Run ``job`` in a fresh process; Ctrl-C (or any error here) kills it at once."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, job), daemon=True)
    proc.start()
    child.close()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not parent.poll(0.2):
            if not proc.is_alive() and not parent.poll(0):
                raise EngineError(f"The LoadGen child process ended with exit code {proc.exitcode} "
                                  "and no result.")
            if deadline is not None and time.monotonic() > deadline:
                raise EngineError(f"The LoadGen run did not finish within {timeout_s:g} s.")
        status, payload, *details = parent.recv()
    except EOFError:
        raise EngineError(f"The LoadGen child process ended with exit code {proc.exitcode} "
                          "and no result.") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
    if status == "ok":
        return payload
    raise EngineError(payload)


def run_scenario(artifact: str | os.PathLike[str], tiles: np.ndarray | os.PathLike[str],
                 settings: ScenarioSettings, log_dir: str | os.PathLike[str],
                 targets: np.ndarray | None = None, batcher_cls: type = DynamicBatcher,
                 timeout_s: float | None = None) -> ScenarioResult:
    """One scenario of the engine at ``artifact`` on ``tiles`` ``(N, bands, tile, tile)`` (an array,
    or a ``.npy`` file of one), LoadGen's logs kept in ``log_dir``.

    ``targets`` ``(N, tile, tile)``: the tiles' labels (ignore index where
    unlabelled), scored by the accuracy scenario. ``batcher_cls``: a
    :class:`DynamicBatcher` (sub)class, importable at module level (it is used
    in the child). The logs are written to a staging folder beside ``log_dir``
    and replace it only once the run is complete.
    """
    loadgen()
    log_dir = Path(log_dir)
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = log_dir.with_name(f".{log_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        tile_file = Path(tiles) if not isinstance(tiles, np.ndarray) else _save(staging / "tiles.npy", tiles)
        target_file = None if targets is None else _save(staging / "targets.npy", targets)
        _check_inputs(artifact, np.load(tile_file, mmap_mode="r"), targets)
        job = _Job(str(artifact), str(tile_file), str(target_file) if target_file else None,
                   settings, str(staging), batcher_cls)
        result = _in_child(job, timeout_s)
        for name in ("tiles.npy", "targets.npy"):
            (staging / name).unlink(missing_ok=True)
        shutil.rmtree(log_dir, ignore_errors=True)
        os.replace(staging, log_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace(result, log_dir=str(log_dir))


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _check_inputs(artifact, tiles: np.ndarray, targets: np.ndarray | None) -> None:
    spec = ModelSpec.load(Path(artifact))
    want = (spec.num_bands, spec.tile, spec.tile)
    if tiles.ndim != 4 or tiles.shape[1:] != want or not len(tiles):
        raise InputError(f"The scenarios take tiles of shape (N, {', '.join(map(str, want))}), "
                         f"not {tiles.shape}.")
    if targets is not None and targets.shape != (len(tiles), spec.tile, spec.tile):
        raise InputError(f"The tiles' labels must have shape ({len(tiles)}, {spec.tile}, {spec.tile}), "
                         f"not {targets.shape}.")


def loadgen_dir(out: str | os.PathLike[str], engine: str, scenario: str) -> Path:
    """Where one engine's logs of one scenario go: ``<out>/<engine>/loadgen/<scenario>``."""
    return Path(out) / engine / "loadgen" / scenario


def run_scenarios(artifact: str | os.PathLike[str], tiles: np.ndarray, out: str | os.PathLike[str],
                  settings: list[ScenarioSettings], targets: np.ndarray | None = None,
                  batcher_cls: type = DynamicBatcher) -> list[ScenarioResult]:
    """Several scenarios of one engine, logs under :func:`loadgen_dir`; an Offline figure run
    before the Server search is where that search starts."""
    engine = ModelSpec.load(Path(artifact)).build.engine
    order = sorted(settings, key=lambda s: SCENARIOS.index(s.scenario) if s.scenario != "offline" else -1)
    results, capacity = [], None
    with _TileFile(tiles, Path(out) / engine / "loadgen") as tile_file:
        for s in order:
            if s.scenario == "server" and s.capacity_qps is None and capacity:
                s = replace(s, capacity_qps=capacity)
            result = run_scenario(artifact, tile_file, s, loadgen_dir(out, engine, s.scenario),
                                  targets, batcher_cls)
            if s.scenario == "offline" and result.valid:
                capacity = result.figure
            results.append(result)
    return sorted(results, key=lambda r: [s.scenario for s in settings].index(r.scenario))


class _TileFile:
    """The tiles saved once as a hidden ``.npy`` in ``folder`` for every child, removed after."""

    def __init__(self, tiles: np.ndarray, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f".tiles-{os.getpid()}.npy"
        self.tiles = tiles

    def __enter__(self) -> Path:
        return _save(self.path, np.ascontiguousarray(self.tiles, np.float32))

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)

