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
the target, the best graph reached (the highest figure; of those within
:data:`MISS_TOLERANCE` of it, the plainest) is built, and its record says so.

For OpenVINO, NNCF's ``quantize_with_accuracy_control`` (:mod:`.accuracy_control`)
is the rival method (:data:`INT8_METHODS`): judged by the same criterion on
the same held-out tiles, timed beside the search's graph, the better of the
two is kept (the one that meets the rule; both: the faster; neither: the
higher figure), and the record says which won and why.

The criterion has the shape of the bench's ranking rule (mIoU >= ``ratio`` of
the reference's): with labels for the held-out tiles, the int8 graph's mIoU
against them over the float graph's; without, the mIoU of the int8 labels
scored against the float graph's labels as if they were the truth (per-class
IoU, so a loss in one small class counts as much as in a large one, where
pixel agreement hides it). Either must reach ``ratio`` plus a margin for the
held-out sample (:func:`margin`); the worst class's IoU change is recorded
beside it. Everything the search did goes into the variant's build record
(:func:`qualify` returns it): the formats and their figures, the criterion,
the layers kept in float, the smoothing, the figures before and after, the
speed of the plain and of the final graph, and the seconds it took.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from segbench.export.accuracy_control import accuracy_control, contest, methods_line, quantized_layers
from segbench.export.quantize import CANDIDATES, FORMATS, Calibrated, usable
from segbench.export.sensitivity import LayerError, measure_gains, rank_layers
from segbench.export.smoothing import smooth
from segbench.spec import IGNORE_INDEX

#: (predicted labels, target labels) -> IoU per class counted in the mean (NaN where undefined);
#: the bench's arithmetic (segbench.bench.metrics), so the mIoU is the bench's
ClassIoU = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: the margin, as a share of the loss the target allows, at 16 held-out tiles from unseen scenes
MARGIN_AT_16 = 0.5
#: the largest margin: held-out windows of the calibration scenes themselves, or very few tiles
MAX_MARGIN = 0.75
#: layers whose gain in float is measured before the greedy fallback, beyond the limit itself
EXTRA_MEASURED = 2
#: layers ``--explain`` lists
EXPLAINED = 8
#: timed blocks per candidate, and calls per block (the first of each untimed)
TIMED_BLOCKS, BLOCK_CALLS = 4, 4
#: the criterion's version in the variant's key: variants searched under an older rule are remade
CRITERION_VERSION = 2
#: on a miss, graphs this close to the best figure reached count as reaching it (the plainest is built)
MISS_TOLERANCE = 0.001
#: how an int8 graph is found: segbench's search, NNCF's accuracy control, or both (the better kept)
INT8_METHODS = ("search", "nncf-ac", "both")
#: the default method (see the README's int8 section for the measurement behind it)
DEFAULT_INT8_METHOD = "search"
#: runtimes NNCF's accuracy control is tried for (its graphs are OpenVINO's own quantizer's)
ACCURACY_CONTROL_RUNTIMES = ("openvino",)
#: the format whose plain graph a method's format starts from
PLAIN_OF = {"nncf-ac": "nncf"}


@dataclass(frozen=True)
class Int8Target:
    """What an int8 graph must keep of its float graph on held-out tiles, and what it may spend."""

    ratio: float = 0.99  # of the float graph's mIoU: against the labels, else against the float labels
    max_float: float = 0.10  # at most this share of the quantized layers back in float (at least one)

    def limit(self, layers: int) -> int:
        return max(1, int(self.max_float * layers))

    def to_dict(self) -> dict:
        return asdict(self)


def margin(tiles: int, whole_scenes: bool, ratio: float) -> float:
    """What the figure must clear beyond the target ``ratio``, for a held-out sample of ``tiles``.

    A ratio measured on a few tiles estimates the scenes' own, and its spread between samples shrinks
    as 1/sqrt(tiles) (a standard error's law). The margin is a share of the loss the target allows
    (``1 - ratio``), so that a graph as good as float always clears it: :data:`MARGIN_AT_16` (half)
    at the default 16 tiles, scaled by sqrt(16 / tiles), at most :data:`MAX_MARGIN` (three
    quarters); at 0.99, 0.5 points at 16 tiles, 0.25 at 64. Held-out windows of the calibration
    scenes themselves (one scene) share their imagery with calibration and say less of other scenes:
    they get the largest margin. Chosen, not fitted: half the allowed loss keeps the rule reachable
    and still catches the 1.5-point gap issue 34 saw between held-out windows and a test scene."""
    share = MAX_MARGIN
    if whole_scenes and tiles > 0:
        share = min(MAX_MARGIN, MARGIN_AT_16 * math.sqrt(16 / tiles))
    return share * max(0.0, 1.0 - ratio)


@dataclass(frozen=True)
class HeldOut:
    """Tiles for the target, from scenes calibration never saw (``scenes``, their names) or, with one
    calibration scene, from its windows that no calibration tile overlaps (``scenes`` empty)."""

    tiles: np.ndarray  # (N, bands, tile, tile) raw pixels
    labels: np.ndarray | None = None  # (N, tile, tile) class ids, the ignore index elsewhere
    scenes: tuple[str, ...] = ()  # the held-out scenes' names; empty: windows of the calibration scenes

    def margin(self, ratio: float) -> float:
        return margin(len(self.tiles), bool(self.scenes), ratio)

    def describe(self) -> str:
        n = len(self.tiles)
        if self.scenes:
            return (f"{n} held-out tiles from {len(self.scenes)} scene(s) calibration never saw "
                    f"({', '.join(self.scenes)})")
        return (f"{n} held-out tiles from windows of the calibration scene(s) (one calibration scene: "
                "give several to hold whole scenes out)")

    @property
    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.tiles).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Int8Options:
    """How an int8 variant is made beyond its calibration: the target, the tiles it is checked on,
    the bench's per-class IoU and class names for them, whether outliers may be smoothed, and
    whether to explain it (the worst layers, measured)."""

    target: Int8Target | None = Int8Target()  # None: plain int8 of the first format, unchecked
    held_out: HeldOut | None = None
    class_iou: ClassIoU | None = None  # None: every class id seen counts (no class left out)
    classes: tuple[str, ...] = ()  # names of the classes class_iou returns, for the record
    smoothing: bool = True  # False: float fallback only (a search without smoothing, to compare)
    explain: bool = False
    method: str = DEFAULT_INT8_METHOD  # one of INT8_METHODS; other than "search" for OpenVINO only

    def method_for(self, runtime: str) -> str:
        """The method a ``runtime``'s graph is found by: NNCF's accuracy control only for the runtimes
        it is tried for, where NNCF is installed and a target is set."""
        if runtime not in ACCURACY_CONTROL_RUNTIMES or self.target is None or not usable("nncf"):
            return "search"
        return self.method

    @property
    def labelled(self) -> bool:
        return self.held_out is not None and self.held_out.labels is not None

    def key(self, runtime: str) -> dict:
        """What the variant depends on beyond its source and calibration (its cache key)."""
        held = self.held_out if self.target else None
        return {"runtime": runtime, "formats": [f for f in CANDIDATES[runtime] if usable(f)],
                "target": self.target.to_dict() if self.target else None,
                "held_out": held.digest if held is not None else None,
                "held_out_scenes": list(held.scenes) if held is not None else None,
                "criterion": CRITERION_VERSION, "labelled": self.labelled, "smoothing": self.smoothing,
                "classes": list(self.classes)} | (
                    {"method": self.method_for(runtime)} if runtime in ACCURACY_CONTROL_RUNTIMES else {})


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
    agreement: float = float("nan")  # pixel agreement with the float graph (shown, not the rule)
    miou: float | None = None  # against the labels, else against the float graph's labels
    ratio: float | None = None  # the criterion: miou over the float graph's (1 without labels)
    worst: dict | None = None  # {"class", "change"}: the class whose IoU falls most
    meets: bool = False
    p50_ms: float | None = None

    def figures(self) -> dict:
        return {"agreement": self.agreement, "miou": self.miou, "ratio": self.ratio,
                "worst_class": self.worst, "p50_ms": self.p50_ms}


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
        search = _Search(plain, runtime, options, work, note, options.method_for(runtime_name))
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
                 note: Callable[[str], None], method: str = "search") -> None:
        self.plain, self.runtime, self.options, self.work, self.note = plain, runtime, options, work, note
        self.method = method
        self.methods: dict | None = None  # each method's graph and figures, where more than one ran
        self.target = options.target
        self.held_out = options.held_out
        self.smoothed: Calibrated | None = None
        self.smoothing: dict | None = None
        self.chosen: _Candidate | None = None
        self._count = 0
        self._labelled = options.labelled
        self.reference, self.reference_ious, self.reference_miou = None, None, None
        if self.held_out is not None:
            self.reference = _labels(runtime.load(plain.graph), self.held_out.tiles)
            self.reference_ious = self._ious(self.reference)
            self.reference_miou = _nanmean(self.reference_ious)

    @property
    def required(self) -> float:
        """The figure a graph must reach: the target's ratio plus the held-out sample's margin."""
        return self.target.ratio + self.held_out.margin(self.target.ratio)

    def criterion(self) -> str:
        """The rule in one sentence (the build's output, the spec, the report and the page)."""
        what = ("int8 mIoU / float mIoU against the calibration labels" if self._labelled else
                "mIoU of the int8 labels scored against the float graph's (no labels for the calibration "
                "scenes: --calib-labels gives them)")
        return (f"{what} >= {self.required:.2%} ({self.target.ratio:.1%} target + "
                f"{100 * self.held_out.margin(self.target.ratio):.2f} point margin) on "
                f"{self.held_out.describe()}")

    def _ious(self, labels: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        if truth is None:
            truth = self.held_out.labels if self._labelled else self.reference
        if self.options.class_iou is not None:
            return np.asarray(self.options.class_iou(labels, truth), float)
        return class_iou(labels, truth)

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
        self.note(f"criterion: {self.criterion()}")
        began = time.perf_counter()
        if self.method == "nncf-ac":  # NNCF's accuracy control alone, from NNCF's plain graph
            plains = [self._make("nncf", self.plain, ())]
            self._time(plains)
            self.chosen = self._accuracy_control(plains[0])
            tried = [*plains, self.chosen]
            self._time([self.chosen, *plains])
        else:
            plains, tried = self._search(formats)
            if self.method == "both":
                self._contest(plains, tried, time.perf_counter() - began)
        sensitivity = self._explain() if self.options.explain else None
        record = self._record(plains, tried, None, sensitivity)
        self.note(chosen_line(record))
        if not self.chosen.meets:
            record["missed"] = self._missed(tried)
            self.note(record["missed"])
        return record

    def _search(self, formats: tuple[str, ...]) -> tuple[list[_Candidate], list[_Candidate]]:
        """segbench's search: sets :attr:`chosen`; returns the plain graphs and every graph tried."""
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
        # missed even so: the best graph reached, the plainest of those within MISS_TOLERANCE of it
        self.chosen = min(meeting, key=lambda c: c.p50_ms or 0.0) if meeting else self._best_reached(tried)
        if self.chosen.p50_ms is None:
            self._time([self.chosen, *[c for c in plains if c.format == self.chosen.format]])
        return plains, tried

    def _best_reached(self, tried: list[_Candidate]) -> _Candidate:
        """The graph a miss builds: of those within :data:`MISS_TOLERANCE` of the highest figure, the one
        with the fewest layers in float, then unsmoothed, then the fastest timed (layers in float cost
        speed: a PSPNet-R18's one, for 0.02 points, took ort-int8 from 2.5x to 2.1x fp32's speed)."""
        best = max(self._merit(c) for c in tried)
        near = [c for c in tried if self._merit(c) >= best - MISS_TOLERANCE]
        return min(near, key=lambda c: (len(c.keep_float), c.smoothed, c.p50_ms or float("inf")))

    def _contest(self, plains: list[_Candidate], tried: list[_Candidate], seconds: float) -> None:
        """NNCF's accuracy control beside the search's graph: both timed together, the better kept
        (:func:`~segbench.export.accuracy_control.contest`), each method's figures recorded."""
        ours = self.chosen
        nncf_plain = next(c for c in plains if c.format == "nncf")  # a candidate where NNCF is installed
        began = time.perf_counter()
        rival = self._accuracy_control(nncf_plain)
        rival_seconds = time.perf_counter() - began
        tried.append(rival)
        self._time([ours, rival])
        self.chosen, why = contest(ours, rival, self._ac_limit())
        self.methods = {"search": self._method_figures(ours, seconds),
                        "nncf-ac": self._method_figures(rival, rival_seconds),
                        "won": "search" if self.chosen is ours else "nncf-ac", "why": why}
        self.note(f"search against NNCF's accuracy control: {methods_line({'methods': self.methods})}")

    def _method_figures(self, c: _Candidate, seconds: float) -> dict:
        return {**c.figures(), "format": c.format, "smoothed": c.smoothed, "float_layers": len(c.keep_float),
                "meets": c.meets, "seconds": seconds}

    def _accuracy_control(self, nncf_plain: _Candidate) -> _Candidate:
        """NNCF's ``quantize_with_accuracy_control`` scored by the search's criterion on its held-out
        tiles, allowed the search's drop (``1 - required``) and float-layer limit."""
        self._count += 1
        limit = self._ac_limit()
        result = accuracy_control(
            self.plain.graph, self.plain.calibration, self.plain.input_name, len(self.held_out.tiles),
            self._evaluate, max_drop=1.0 - self.required, max_layers=limit, exclude=self.plain.tail,
            baseline=quantized_layers(nncf_plain.graph) & set(self.plain.layers),  # compute layers only
            dst=self.work / f"candidate-{self._count}-nncf-ac.onnx")
        c = _Candidate("nncf-ac", result.graph, False, result.float_layers)
        self._score(c)
        c.meets = c.meets and len(c.keep_float) <= limit
        self.note(f"nncf-ac ({len(c.keep_float)} layer(s) in float, {result.validations} graphs validated "
                  f"in {result.seconds:.0f} s): {self._describe(c)}")
        return c

    def _ac_limit(self) -> int:
        return self.target.limit(len(self.plain.layers_of("nncf-ac")))

    def _evaluate(self, graph: Path, indices: list[int]) -> tuple[float, list[float]]:
        """The criterion's mIoU of ``graph`` on the held-out tiles ``indices``, and each tile's own (1
        where a tile has no pixel to score): NNCF's validation function."""
        labels = _labels(self.runtime.load(graph), self.held_out.tiles[indices])
        truth = (self.held_out.labels if self._labelled else self.reference)[indices]
        per_tile = [_nanmean(self._ious(p[None], t[None])) for p, t in zip(labels, truth, strict=True)]
        return _nanmean(self._ious(labels, truth)) or 0.0, [1.0 if v is None else v for v in per_tile]

    def _missed(self, tried: list[_Candidate]) -> str:
        """One sentence: no graph met the rule, the best figure reached, and what would help."""
        best = max(tried, key=self._merit)
        how = _variant(best.format, best.smoothed, len(best.keep_float))
        helps = [] if self.held_out.scenes else ["several calibration scenes (one held out whole)"]
        helps += [] if self._labelled else ["calibration labels (--calib-labels)"]
        helps.append(f"more layers in float than {self.target.max_float:.0%} of them")
        ratio = "not measured" if best.ratio is None else f"{best.ratio:.2%}"
        return (f"No int8 graph met the rule within the search's budget ({len(tried)} graphs): the best "
                f"reached {ratio} ({how}) of the {self.required:.2%} required; {', '.join(helps)} "
                f"would help; built {self._built(best)}, which the bench ranks as measured.")

    def _built(self, best: _Candidate) -> str:
        c = self.chosen
        if c is best or self._merit(c) == self._merit(best):
            return "that graph"
        ratio = "not measured" if c.ratio is None else f"{c.ratio:.2%}"
        return (f"{_variant(c.format, c.smoothed, len(c.keep_float))} at {ratio}, the plainest within "
                f"{100 * MISS_TOLERANCE:.1f} point of it")

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
                self.note(f"{c.format} with {name} back in int8 ({len(keep)} layer(s) in float): "
                          f"{self._describe(c)}")
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
        if not self.options.smoothing:
            return None
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
        c = _Candidate(fmt, path, source is self.smoothed, keep)
        if self.held_out is not None:
            self._score(c)
        return c

    def _score(self, c: _Candidate) -> None:
        """``c``'s figures on the held-out tiles, by the engine's runtime, and whether it meets the rule."""
        labels = _labels(self.runtime.load(c.graph), self.held_out.tiles)
        c.agreement = float(np.mean(labels == self.reference))
        ious = self._ious(labels)
        c.miou = _nanmean(ious)
        if c.miou is not None and self.reference_miou:
            c.ratio = c.miou / self.reference_miou
        c.worst = self._worst(ious)
        c.meets = self.target is None or (c.ratio is not None and c.ratio >= self.required)

    def _worst(self, ious: np.ndarray) -> dict | None:
        """The class whose IoU falls most from the float graph's, and by how much."""
        n = max(len(ious), len(self.reference_ious))  # the fallback counts the class ids it sees
        pad = [np.pad(np.asarray(x, float), (0, n - len(x)), constant_values=np.nan)
               for x in (ious, self.reference_ious)]
        change = pad[0] - pad[1]
        if not np.any(np.isfinite(change)):
            return None
        i = int(np.nanargmin(np.where(np.isfinite(change), change, np.inf)))
        name = self.options.classes[i] if i < len(self.options.classes) else f"class {i}"
        return {"class": name, "change": float(change[i])}

    def _merit(self, c: _Candidate) -> float:
        return c.ratio if c.ratio is not None else -1.0

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
        return figures_line(c.figures(), self._labelled) + (
            ", meets the target" if c.meets else ", misses the target")

    def _record(self, plains: list[_Candidate], tried: list[_Candidate], unchecked: str | None,
                sensitivity: list[dict] | None = None) -> dict:
        c = self.chosen
        layers = len(self.plain.layers_of(c.format))
        base = PLAIN_OF.get(c.format, c.format)
        plain = next((p for p in plains if p.format == base), c)
        scored = self.held_out is not None
        record = {
            "format": c.format, "format_description": FORMATS[c.format].description,
            "formats": {p.format: p.figures() for p in plains} if unchecked is None else {},
            "quantized_layers": layers - len(c.keep_float),
            "float_layers": [{"name": n, "op": self.plain.layers.get(n, "?")} for n in c.keep_float],
            "smoothing": self.smoothing if c.smoothed else None,
            "smoothing_tried": self.smoothing,
            "plain": plain.figures() if scored else None,
            "final": c.figures() if scored else None,
            "reference": {"miou": self.reference_miou} if self._labelled and scored else None,
            "target": self._target_record() if unchecked is None else None,
            "criterion": self.criterion() if unchecked is None else None,
            "met": c.meets if unchecked is None else None,
            "unchecked": unchecked,
            "tried": len(tried),
            "method": self.method if unchecked is None else None,
            "methods": self.methods,
        }
        if sensitivity is not None:
            record["sensitivity"] = sensitivity
        return record

    def _target_record(self) -> dict:
        held = self.held_out
        return {**self.target.to_dict(), "metric": "miou" if self._labelled else "miou_vs_float",
                "margin": held.margin(self.target.ratio), "required": self.required,
                "held_out_tiles": len(held.tiles), "held_out_scenes": list(held.scenes),
                "held_out_from": "scenes" if held.scenes else "calibration scene windows"}


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


def class_iou(pred: np.ndarray, truth: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """IoU of each class id in ``pred`` or ``truth`` (a confusion matrix's arithmetic, as the bench's;
    NaN where a class is in neither), pixels labelled ``ignore_index`` left out."""
    keep = truth != ignore_index
    p, t = pred[keep].astype(np.int64), truth[keep].astype(np.int64)
    n = int(max(p.max(initial=0), t.max(initial=0))) + 1
    counts = np.bincount(t * n + p, minlength=n * n).reshape(n, n)
    tp = np.diag(counts).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / (counts.sum(0) + counts.sum(1) - tp)


def _nanmean(values: np.ndarray) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def _variant(fmt: str, smoothed: bool, kept: int) -> str:
    return fmt + (", smoothed" if smoothed else "") + (f", {kept} layer(s) in float" if kept else "")


def figures_line(f: dict | None, labelled: bool) -> str:
    """A candidate's figures: the criterion's ratio first, then the worst class, agreement and speed."""
    if not f:
        return "not measured"
    parts = []
    if f.get("ratio") is not None:
        against = "of the float mIoU" if labelled else "mIoU against the float labels"
        parts.append(f"{100 * f['ratio']:.2f}% {against}")
    elif f.get("miou") is not None:
        parts.append(f"mIoU {100 * f['miou']:.2f}")
    if f.get("worst_class"):
        w = f["worst_class"]
        parts.append(f"worst class {w['class']} {100 * w['change']:+.2f} IoU points")
    if f.get("agreement") is not None:
        parts.append(f"agreement {100 * f['agreement']:.2f}%")
    if f.get("p50_ms") is not None:
        parts.append(f"{f['p50_ms']:.1f} ms")
    return ", ".join(parts)


def chosen_line(record: dict) -> str:
    """The graph the search kept, as the spec, the report and the precision label record it."""
    kept = record.get("float_layers") or []
    smoothed = (record.get("smoothing") or {}).get("layers") or []
    parts = [f"chosen: {record['format']}"]
    if smoothed:
        parts.append(f"smoothed on {len(smoothed)} layer(s) ({', '.join(smoothed)})")
    names = f" ({', '.join(k['name'] for k in kept)})" if kept else ""
    parts.append(f"{len(kept)} layer(s) in float{names}")
    verdict = {True: "meets the target", False: "misses the target", None: "unchecked"}[record.get("met")]
    return ", ".join(parts) + f"; {verdict} (precision {precision_label({'int8': record})})"


def describe_int8(record: dict) -> list[str]:
    """A few lines on what an int8 search did (``segbench build``, the report and the page): the format
    chosen and why, the criterion and its held-out data, the smoothing, the layers kept in float,
    accuracy and speed before and after, the worst layers where explained."""
    if not record:
        return []
    kept = record.get("float_layers") or []
    lines = [f"format {record['format']} ({record['format_description']}) for {record.get('runtime', '?')}"
             + (f", of {', '.join(record['formats'])}" if len(record.get("formats") or {}) > 1 else "")]
    if record.get("unchecked"):
        lines.append(f"not checked against a target ({record['unchecked']})")
    else:
        lines += _target_lines(record)
    if record.get("smoothing"):
        layers = record["smoothing"]["layers"]
        lines.append(f"outliers smoothed on {len(layers)} layer(s): {', '.join(layers)}")
    for layer, why in (record.get("smoothing_tried") or {}).get("skipped") or []:
        lines.append(f"smoothing left {layer} alone: {why}")
    if kept:
        lines.append(f"{len(kept)} of {record['quantized_layers'] + len(kept)} layers kept in float: "
                     + ", ".join(f"{k['name']} ({k['op']})" for k in kept))
    if line := methods_line(record):
        lines.append(line)
    elif record.get("method") == "nncf-ac":
        lines.append("found by NNCF's accuracy control (--int8-method nncf-ac)")
    if "search_seconds" in record:
        lines.append(f"search: {record['tried']} graph(s) in {record['search_seconds']:.1f} s")
    return lines + sensitivity_lines(record.get("sensitivity"))


def _target_lines(record: dict) -> list[str]:
    t = record["target"]
    labelled = t["metric"] == "miou"
    what = {"miou": "of the float mIoU", "miou_vs_float": "mIoU against the float graph's labels",
            }.get(t["metric"], "label agreement with float")
    extra = f" + {100 * t['margin']:.2f} point margin" if t.get("margin") is not None else ""
    held = f"{t['held_out_tiles']} held-out tiles"
    if t.get("held_out_scenes"):
        held += f" of {len(t['held_out_scenes'])} scene(s) calibration never saw"
    elif "held_out_from" in t:
        held += " of the calibration scene's own windows (one scene)"
    verdict = "met" if record["met"] else "MISSED (built anyway; the bench ranks it as measured)"
    lines = [f"target {100 * t['ratio']:.1f}% {what}{extra} on {held}: {verdict}"]
    lines.append(f"plain int8: {figures_line(record.get('plain'), labelled)}; "
                 f"final: {figures_line(record.get('final'), labelled)}")
    if record.get("missed"):
        lines.append(record["missed"])
    return lines


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
    notes += ["below target"] if record.get("met") is False else []
    return f"int8 ({', '.join(notes)})" if notes else "int8"
