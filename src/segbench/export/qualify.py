"""int8 that qualifies: the fastest graph of a runtime's formats that keeps the accuracy target.

For one runtime (:data:`segbench.export.quantize.CANDIDATES`) every format is
quantized from one calibration, scored on held-out tiles that calibration
never saw and timed on that runtime (batch 1, median, interleaved so that a
busy machine slows every candidate alike). The fastest that meets the target
is kept. Where none does, the remedies follow, cheapest first, on the fastest
format (then on the most accurate, if that is another): outlier smoothing
(:mod:`.smoothing`), then the most sensitive layers back in float
(:mod:`.sensitivity`), greedily and as few as possible, up to
:attr:`Int8Target.max_float` of the quantized layers. Where a slower format
meets the target and a faster one misses it, the faster one is tried
smoothed too, and the fastest of them that meets it is kept. Where that still misses
the target, the fastest plain graph is built, as plain int8 would be, and its
record says so.

The target (:class:`Int8Target`) is the bench's rule: ``ratio`` of the float
graph's mIoU on the held-out tiles where their labels are given (the metric
is the bench's own, passed in as :data:`Score`), else ``ratio`` label
agreement with the float graph. Everything the search did goes into the
variant's build record (:func:`qualify` returns it): the formats and their
figures, the layers kept in float, agreement and mIoU before and after, the
speed of the plain and of the final graph, and the seconds it took.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from segbench.export.quantize import CANDIDATES, FORMATS, Calibrated, usable
from segbench.export.sensitivity import LayerError, measure_gains, rank_layers
from segbench.export.smoothing import smooth

#: (predicted labels, target labels) -> mIoU; the bench's metric (segbench.bench.metrics)
Score = Callable[[np.ndarray, np.ndarray], float | None]
#: layers whose gain in float is measured before the greedy fallback, beyond the limit itself
EXTRA_MEASURED = 2
#: layers ``--explain`` lists
EXPLAINED = 8
#: timed blocks per candidate, and calls per block (the first of each untimed)
TIMED_BLOCKS, BLOCK_CALLS = 4, 4


@dataclass(frozen=True)
class Int8Target:
    """What an int8 graph must keep of its float graph on held-out tiles, and what it may spend."""

    ratio: float = 0.99  # of the float graph's mIoU (labels given), else label agreement with it
    max_float: float = 0.10  # at most this share of the quantized layers back in float (at least one)

    def limit(self, layers: int) -> int:
        return max(1, int(self.max_float * layers))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeldOut:
    """Tiles for the target, from windows calibration never saw, with their labels where known."""

    tiles: np.ndarray  # (N, bands, tile, tile) raw pixels
    labels: np.ndarray | None = None  # (N, tile, tile) class ids, the ignore index elsewhere

    @property
    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.tiles).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Int8Options:
    """How an int8 variant is made beyond its calibration: the target, the tiles it is checked on,
    the bench's metric for them, and whether to explain it (the worst layers, measured)."""

    target: Int8Target | None = Int8Target()  # None: plain int8 of the first format, unchecked
    held_out: HeldOut | None = None
    score: Score | None = None
    explain: bool = False

    def key(self, runtime: str) -> dict:
        """What the variant depends on beyond its source and calibration (its cache key)."""
        return {"runtime": runtime, "formats": [f for f in CANDIDATES[runtime] if usable(f)],
                "target": self.target.to_dict() if self.target else None,
                "held_out": self.held_out.digest if self.held_out is not None and self.target else None,
                "labelled": bool(self.held_out is not None and self.held_out.labels is not None
                                 and self.score is not None)}


class GraphRuntime(Protocol):
    """Runs candidate graphs as the engine's runtime will (``segbench.engines`` provides one)."""

    name: str

    def load(self, graph: Path) -> Callable[[np.ndarray], np.ndarray]:
        """A callable: raw-pixel tiles ``(N, bands, t, t)`` -> logits ``(N, classes, t, t)``."""
        ...


@dataclass(frozen=True)
class Int8Request:
    """What an int8 engine asks of its graph: its runtime's formats, scored and timed on that runtime."""

    runtime: str  # a key of segbench.export.quantize.CANDIDATES
    graph_runtime: GraphRuntime
    options: Int8Options = Int8Options()


@dataclass(eq=False)  # compared and hashed by identity
class _Candidate:
    format: str
    graph: Path
    smoothed: bool
    keep_float: tuple[str, ...]
    agreement: float
    miou: float | None
    meets: bool
    p50_ms: float | None = None

    def figures(self) -> dict:
        return {"agreement": self.agreement, "miou": self.miou, "p50_ms": self.p50_ms}


def qualify(float_graph: str | os.PathLike[str], dst: str | os.PathLike[str], runtime: GraphRuntime,
            runtime_name: str, calibration: np.ndarray, method: str, options: Int8Options,
            note: Callable[[str], None] = lambda line: None) -> dict:
    """Write the qualifying int8 graph of ``float_graph`` for ``runtime_name`` to ``dst``; returns
    the record of the search (kept in the variant's build record under ``int8``)."""
    start = time.perf_counter()
    formats = tuple(f for f in CANDIDATES[runtime_name] if usable(f))  # NNCF where it is installed
    with tempfile.TemporaryDirectory(prefix="segbench-int8-", dir=Path(dst).parent) as tmp:
        work = Path(tmp)
        plain = Calibrated(float_graph, calibration, method)
        search = _Search(plain, runtime, options, work, note)
        try:
            record = search.run(formats)
        finally:
            search.close()
        shutil.copyfile(search.chosen.graph, dst)
    record["runtime"] = runtime_name
    record["search_seconds"] = time.perf_counter() - start
    return record


class _Search:
    """The steps of :func:`qualify`, sharing the float graph's calibration and reference labels."""

    def __init__(self, plain: Calibrated, runtime: GraphRuntime, options: Int8Options, work: Path,
                 note: Callable[[str], None]) -> None:
        self.plain, self.runtime, self.options, self.work, self.note = plain, runtime, options, work, note
        self.target = options.target
        self.held_out = options.held_out
        self.smoothed: Calibrated | None = None
        self.smoothing: dict | None = None
        self.chosen: _Candidate | None = None
        self._count = 0
        self.reference, self.reference_miou = None, None
        if self.held_out is not None:
            self.reference = _labels(runtime.load(plain.graph), self.held_out.tiles)
            if self._labelled:
                self.reference_miou = options.score(self.reference, self.held_out.labels)

    @property
    def _labelled(self) -> bool:
        return (self.held_out is not None and self.held_out.labels is not None
                and self.options.score is not None)

    def close(self) -> None:
        self.plain.close()
        if self.smoothed is not None:
            self.smoothed.close()

    # -- the steps ---------------------------------------------------------------------------
    def run(self, formats: tuple[str, ...]) -> dict:
        if self.target is None or self.held_out is None:  # plain int8 of the first format, unchecked
            self.chosen = self._make(formats[0], self.plain, ())
            sensitivity = self._explain() if self.options.explain and self.held_out is not None else None
            return self._record([self.chosen], [self.chosen],
                                "no target" if self.target is None else "no held-out tiles", sensitivity)
        plains = [self._make(f, self.plain, ()) for f in formats]
        self._time(plains)
        for c in plains:
            self.note(f"{c.format}: {self._describe(c)}")
        tried = list(plains)
        meeting = [c for c in plains if c.meets]
        fastest = min(plains, key=lambda c: c.p50_ms or 0.0)
        if not meeting:  # remedies for the fastest format, then for the most accurate if another
            for plain in dict.fromkeys([fastest, max(plains, key=self._merit)]):
                found = self._remedy(plain, tried)
                if found is not None:
                    meeting = [found]
                    break
        else:  # a faster format that misses may meet it smoothed, and stay the faster
            best = min(c.p50_ms or 0.0 for c in meeting)
            for plain in sorted((c for c in plains if not c.meets and (c.p50_ms or 0.0) < best),
                                key=lambda c: c.p50_ms or 0.0):
                found = self._remedy(plain, tried, smoothing_only=True)
                if found is not None:
                    meeting.append(found)
            if len(meeting) > len([c for c in plains if c.meets]):  # timed in other rounds: again, together
                self._time(meeting)
        # missed even so: the fastest plain graph, as plain int8 would be built and ranked
        self.chosen = min(meeting, key=lambda c: c.p50_ms or 0.0) if meeting else fastest
        if self.chosen.p50_ms is None:
            self._time([self.chosen, *[c for c in plains if c.format == self.chosen.format]])
        sensitivity = self._explain() if self.options.explain else None
        return self._record(plains, tried, None, sensitivity)

    def _remedy(self, plain: _Candidate, tried: list[_Candidate],
                smoothing_only: bool = False) -> _Candidate | None:
        """Smoothing, then float fallback (unless ``smoothing_only``), for one format; the first graph
        that meets the target."""
        fmt = plain.format
        smoothed = self._smoothed()
        base = plain
        if smoothed is not None:
            c = self._make(fmt, smoothed, ())
            tried.append(c)
            n = len(self.smoothing["layers"])
            self.note(f"{fmt} after smoothing {n} layer{'' if n == 1 else 's'}: {self._describe(c)}")
            if c.meets:
                self._time([c, plain])
                return c
            if self._merit(c) > self._merit(plain):
                base = c
        if smoothing_only:
            return None
        source = self.smoothed if base.smoothed else self.plain
        layers = source.layers_of(fmt)
        order = [name for name in self._fallback_order(source, len(layers)) if name in layers]
        limit = self.target.limit(len(layers))
        keep: list[str] = []
        for name in order[:limit]:
            keep.append(name)
            c = self._make(fmt, source, tuple(keep))
            tried.append(c)
            self.note(f"{fmt} with {len(keep)} layer(s) in float ({name}): {self._describe(c)}")
            if c.meets:
                c = self._fewer(c, source)
                self._time([c, plain])
                return c
        return None

    def _fewer(self, found: _Candidate, source: Calibrated) -> _Candidate:
        """``found`` with every float layer dropped that the target does not need (latest first)."""
        keep = list(found.keep_float)
        for name in list(keep[:-1])[::-1]:
            trial = tuple(k for k in keep if k != name)
            c = self._make(found.format, source, trial)
            if c.meets:
                keep, found = list(trial), c
        return found

    def _fallback_order(self, source: Calibrated, layers: int) -> list[str]:
        """Layers by the damage they do: the noisiest ranked, the worst of them measured."""
        errors = self._ranking(source)
        measured = measure_gains(self._proxy(source), source.graph,
                                 errors[: self.target.limit(layers) + EXTRA_MEASURED], self._agreement)
        measured = sorted(measured, key=lambda e: -(e.gain or 0.0))
        names = [e.name for e in measured]
        return names + [e.name for e in errors if e.name not in names]

    def _explain(self) -> list[dict]:
        source = self.smoothed if self.chosen.smoothed else self.plain
        errors = self._ranking(source)
        worst = measure_gains(self._proxy(source), source.graph, errors[:EXPLAINED], self._agreement)
        worst = sorted(worst, key=lambda e: -(e.gain or 0.0))
        return [e.to_dict() for e in worst]

    # -- helpers -----------------------------------------------------------------------------
    def _smoothed(self) -> Calibrated | None:
        if self.smoothing is None:
            result = smooth(self.plain.graph, self.work / "smoothed.onnx", self.plain.calibration)
            self.smoothing = result.to_dict()
            if result.layers:
                self.smoothed = Calibrated(result.path, self.plain.calibration, self.plain.method)
        return self.smoothed

    def _ranking(self, source: Calibrated) -> list[LayerError]:
        return rank_layers(self._proxy(source), source.layers, self.held_out.tiles)

    def _proxy(self, source: Calibrated) -> Path:
        """The Q/DQ graph of ``source`` (symmetric int8) the sensitivity is measured on, by the engine's
        runtime: the layers and ranges of every format, in the one form whose pairs can be undone."""
        path = self.work / f"proxy-{'smoothed' if source is self.smoothed else 'plain'}.onnx"
        if not path.exists():
            source.quantize("qdq-s8", path)
        return path

    def _agreement(self, graph: bytes) -> float:
        """Label agreement with the float graph on the held-out tiles, run by the engine's runtime."""
        path = self.work / "probe.onnx"
        path.write_bytes(graph)
        return float(np.mean(_labels(self.runtime.load(path), self.held_out.tiles) == self.reference))

    def _make(self, fmt: str, source: Calibrated, keep: tuple[str, ...]) -> _Candidate:
        self._count += 1
        path = self.work / f"candidate-{self._count}-{fmt}.onnx"
        source.quantize(fmt, path, keep)
        c = _Candidate(fmt, path, source is self.smoothed, keep, float("nan"), None, False)
        if self.held_out is not None:
            run = self.runtime.load(path)
            labels = _labels(run, self.held_out.tiles)
            c.agreement = float(np.mean(labels == self.reference))
            if self._labelled:
                c.miou = self.options.score(labels, self.held_out.labels)
            c.meets = self._meets(c)
        return c

    def _meets(self, c: _Candidate) -> bool:
        if self.target is None:
            return True
        if self._labelled and self.reference_miou is not None and c.miou is not None:
            return c.miou >= self.target.ratio * self.reference_miou
        return c.agreement >= self.target.ratio

    def _merit(self, c: _Candidate) -> float:
        if self._labelled and c.miou is not None:
            return c.miou
        return c.agreement

    def _time(self, candidates: list[_Candidate]) -> None:
        """Median batch-1 latency of each candidate, timed in short blocks taken in turns: a busy
        machine slows every candidate alike, and no candidate's first call follows another's last
        (a runtime's threads spin on after a call and would slow the next candidate's)."""
        runs = {id(c): self.runtime.load(c.graph) for c in candidates}
        tile = self.held_out.tiles[:1] if self.held_out is not None else self.plain.calibration[:1]
        times = block_times(runs, tile)
        for c in candidates:
            c.p50_ms = 1000 * float(np.median(times[id(c)]))

    def _describe(self, c: _Candidate) -> str:
        parts = [f"agreement {c.agreement:.3%}"]
        if c.miou is not None and self.reference_miou is not None:
            parts.append(f"mIoU {100 * c.miou:.2f} (float {100 * self.reference_miou:.2f})")
        if c.p50_ms is not None:
            parts.append(f"{c.p50_ms:.1f} ms")
        parts.append("meets the target" if c.meets else "misses the target")
        return ", ".join(parts)

    def _record(self, plains: list[_Candidate], tried: list[_Candidate], unchecked: str | None,
                sensitivity: list[dict] | None = None) -> dict:
        c = self.chosen
        layers = len(self.plain.layers_of(c.format))
        plain = next((p for p in plains if p.format == c.format), c)
        scored = self.held_out is not None
        record = {
            "format": c.format, "format_description": FORMATS[c.format].description,
            "formats": {p.format: p.figures() for p in plains} if unchecked is None else {},
            "quantized_layers": layers - len(c.keep_float),
            "float_layers": [{"name": n, "op": self.plain.layers.get(n, "?")} for n in c.keep_float],
            "smoothing": self.smoothing if c.smoothed else None,
            "plain": plain.figures() if scored else None,
            "final": c.figures() if scored else None,
            "reference": {"miou": self.reference_miou} if self.reference_miou is not None else None,
            "target": ({**self.target.to_dict(), "metric": "miou" if self._labelled else "agreement",
                        "held_out_tiles": len(self.held_out.tiles)} if unchecked is None else None),
            "met": c.meets if unchecked is None else None,
            "unchecked": unchecked,
            "tried": len(tried),
        }
        if sensitivity is not None:
            record["sensitivity"] = sensitivity
        return record


def block_times(runs: dict, tile: np.ndarray, blocks: int = TIMED_BLOCKS,
                calls: int = BLOCK_CALLS) -> dict[object, list[float]]:
    """Seconds per call of each callable in ``runs`` on ``tile``: ``blocks`` blocks each, taken in
    turns, of ``calls`` calls after one untimed."""
    times: dict[object, list[float]] = {k: [] for k in runs}
    for _ in range(blocks):
        for key, run in runs.items():
            run(tile)
            for _ in range(calls):
                t0 = time.perf_counter()
                run(tile)
                times[key].append(time.perf_counter() - t0)
    return times


def _labels(run: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray) -> np.ndarray:
    return np.concatenate([run(t[None]).argmax(1) for t in tiles])


def describe_int8(record: dict) -> list[str]:
    """A few lines on what an int8 search did (``segbench build``): the format chosen and why, the
    layers kept in float, accuracy and speed before and after, the worst layers where explained."""
    if not record:
        return []

    def figures(f: dict | None) -> str:
        if not f:
            return "not measured"
        parts = [f"agreement {100 * f['agreement']:.2f}%"] if f.get("agreement") is not None else []
        if f.get("miou") is not None:
            parts.append(f"mIoU {100 * f['miou']:.2f}")
        if f.get("p50_ms") is not None:
            parts.append(f"{f['p50_ms']:.1f} ms")
        return ", ".join(parts)

    kept = record.get("float_layers") or []
    lines = [f"format {record['format']} ({record['format_description']}) for {record.get('runtime', '?')}"
             + (f", of {', '.join(record['formats'])}" if len(record.get("formats") or {}) > 1 else "")]
    if record.get("unchecked"):
        lines.append(f"not checked against a target ({record['unchecked']})")
    else:
        t = record["target"]
        what = "of the float mIoU" if t["metric"] == "miou" else "label agreement with float"
        verdict = "met" if record["met"] else "MISSED (built anyway; the bench ranks it as measured)"
        lines.append(f"target {100 * t['ratio']:.1f}% {what} on {t['held_out_tiles']} held-out tiles: "
                     f"{verdict}")
        lines.append(f"plain int8: {figures(record.get('plain'))}; final: {figures(record.get('final'))}")
    if record.get("smoothing"):
        lines.append(f"outliers smoothed on {len(record['smoothing']['layers'])} layer(s)")
    if kept:
        lines.append(f"{len(kept)} of {record['quantized_layers'] + len(kept)} layers kept in float: "
                     + ", ".join(f"{k['name']} ({k['op']})" for k in kept))
    if "search_seconds" in record:
        lines.append(f"search: {record['tried']} graph(s) in {record['search_seconds']:.1f} s")
    return lines + sensitivity_lines(record.get("sensitivity"))


def describe_fp16(build_options: dict) -> list[str]:
    """What an fp16 graph kept in float32 (overflowing activations) and, where explained, the layers
    half precision hurts most."""
    kept = build_options.get("float32_nodes")
    if kept is None:
        return []
    check = build_options.get("overflow_check") or {}
    names = f": {', '.join(kept)}" if kept else ""
    lines = [f"{len(kept)} node(s) kept float32 (activations reaching {check.get('limit', 32752.0):g} on "
             f"{check.get('tiles', '?')} tiles from {check.get('from', '?')}){names}"]
    return lines + sensitivity_lines(build_options.get("sensitivity"), "float32")


def sensitivity_lines(entries: list[dict] | None, kept_in: str = "float") -> list[str]:
    """One line per explained layer: its SQNR and the agreement it gains kept in ``kept_in``."""
    lines = []
    for e in entries or []:
        gain = "" if e["gain"] is None else f", {100 * e['gain']:+.2f} points of agreement in {kept_in}"
        lines.append(f"  sensitive: {e['name']} ({e['op']}): SQNR {e['sqnr_db']:.1f} dB{gain}")
    return lines


def precision_label(build_options: dict) -> str | None:
    """``int8 (2 fp32)`` for an int8 engine with two layers kept in float, ``int8 (smoothed)`` where
    outliers were smoothed, ``int8`` for plain int8; None for other engines (the bench's precision
    column)."""
    record = build_options.get("int8")
    if not record:
        return None
    kept = len(record.get("float_layers") or [])
    notes = (["smoothed"] if record.get("smoothing") else []) + ([f"{kept} fp32"] if kept else [])
    return f"int8 ({', '.join(notes)})" if notes else "int8"
