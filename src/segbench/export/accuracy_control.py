"""NNCF's accuracy-controlled quantization, judged by the int8 search's own criterion.

``nncf.quantize_with_accuracy_control`` quantizes a graph with NNCF, scores it
with a validation function, and, while the score falls more than ``max_drop``
below the float graph's, ranks groups of quantizers by the score they cost
and reverts the worst to float, one group per iteration. Here the validation
function is the search's criterion (:mod:`.qualify`): the held-out tiles run
by the engine's own runtime, the mIoU against their labels, else against the
float graph's labels, so NNCF's "drop" is the search's ratio read the other
way (``max_drop = 1 - required``, relative). Each validated model is written
to a file and compiled by that runtime, as the search's candidates are.

The layers NNCF reverted are those of ``baseline`` (the compute layers its
plain graph quantizes, as the search counts layers) that carry no Q/DQ in the
result: NNCF also reverts the quantizers of element-wise ops, pooling and
concatenations (155 such nodes with one convolution on a PSPNet-R18), which
the search never quantizes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.extras import require
from segbench.logs import logger_level

#: (graph file, indices of held-out tiles) -> (the criterion's mIoU over them, one value per tile)
Evaluate = Callable[[Path, Sequence[int]], tuple[float, list[float]]]


@dataclass(frozen=True)
class AccuracyControlled:
    """What NNCF's accuracy control wrote: the graph, the layers it put back in float, its seconds."""

    graph: Path
    float_layers: tuple[str, ...]
    seconds: float
    validations: int  # models NNCF validated (compiled and run on held-out tiles)


def quantized_layers(graph: str | os.PathLike[str] | object) -> set[str]:
    """Names of the nodes of ``graph`` (a path or an ``onnx.ModelProto``) that read an input through
    a DequantizeLinear: the layers that run in int8."""
    import onnx

    model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized.intersection(n.input)}


def accuracy_control(float_graph: Path, calibration: np.ndarray, input_name: str, tiles: int,
                     evaluate: Evaluate, max_drop: float, max_layers: int, exclude: Sequence[str],
                     baseline: set[str], dst: Path) -> AccuracyControlled:
    """Write NNCF's accuracy-controlled int8 graph of ``float_graph`` to ``dst``.

    ``calibration``: the tiles NNCF collects statistics on (the search's); ``tiles``: how many
    held-out tiles ``evaluate`` scores; ``max_drop``: the relative drop of the criterion allowed;
    ``max_layers``: at most this many groups reverted to float (the search's float-layer limit);
    ``exclude``: nodes never quantized (the classifier); ``baseline``: the layers NNCF's plain graph
    quantizes."""
    import onnx

    nncf = require("nncf", "openvino-int8 with NNCF's accuracy control (the 'quant' extra)")
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    start = time.perf_counter()
    validate = _Validator(evaluate, dst.with_name(dst.stem + "-validated.onnx"))
    calib = nncf.Dataset([{input_name: t[None].astype(np.float32)} for t in calibration])
    held_out = nncf.Dataset(list(range(tiles)))
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=max_layers, ranking_subset_size=tiles,
                                                  num_ranking_workers=1)  # one runtime, 2 cores
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
            logger_level(logging.getLogger("nncf"), logging.ERROR):
        model = nncf.quantize_with_accuracy_control(
            onnx.load(str(float_graph)), calib, held_out, validate, max_drop=max_drop,
            drop_type=nncf.DropType.RELATIVE, subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=list(exclude), validate=False),
            advanced_accuracy_restorer_parameters=restorer)
    onnx.save(model, str(dst))
    validate.close()
    kept = quantized_layers(model)
    reverted = tuple(n for n in sorted(baseline) if n not in kept)
    return AccuracyControlled(dst, reverted, time.perf_counter() - start, validate.count)


class _Validator:
    """NNCF's ``validation_fn``: writes the model it is given (once per model) and scores it."""

    def __init__(self, evaluate: Evaluate, path: Path) -> None:
        self.evaluate, self.path = evaluate, path
        self._model: object | None = None  # the model last written (held, so its identity stays)
        self.count = 0

    def __call__(self, model, items) -> tuple[float, list[float]]:
        import onnx

        if model is not self._model:
            onnx.save(model, str(self.path))
            self._model = model
            self.count += 1
        return self.evaluate(self.path, [int(i) for i in items])

    def close(self) -> None:
        self._model = None
        self.path.unlink(missing_ok=True)


#: how much faster NNCF's graph must run to be kept over the search's where both meet the rule: the
#: spread of interleaved medians on a busy 2-core machine (a DeepLabV3+-R18 whose accuracy control
#: reverted nothing, the same graph as the search's, timed 70.5 against 72.0 ms)
FASTER_BY = 0.03


def contest(ours, rival, limit: int):
    """The better of the search's graph (``ours``) and NNCF's (``rival``), candidates with ``meets``,
    ``ratio``, ``p50_ms`` and ``keep_float``, and why (a clause about the winner): the one that meets
    the rule; where both do, the faster (NNCF's by :data:`FASTER_BY` at least); where neither does,
    the higher figure of those with at most ``limit`` layers in float (NNCF reverts groups of layers,
    and may pass it; the search's on a tie)."""
    def said(c) -> str:
        ratio = "not measured" if c.ratio is None else f"{c.ratio:.2%}"
        speed = "" if c.p50_ms is None else f", {c.p50_ms:.2f} ms"
        return f"{ratio}{speed}, {len(c.keep_float)} layer(s) in float"

    both = f"search {said(ours)}; NNCF accuracy control {said(rival)}"
    if ours.meets != rival.meets:
        return (ours if ours.meets else rival), f"only it meets the criterion ({both})"
    if not ours.meets and len(rival.keep_float) > limit:
        return ours, (f"neither meets the criterion, and NNCF's graph has more layers in float than the "
                      f"limit of {limit} ({both})")
    if not ours.meets:
        winner = rival if (rival.ratio or -1.0) > (ours.ratio or -1.0) else ours
        return winner, f"neither meets the criterion, it reaches the higher figure ({both})"
    if (rival.p50_ms or float("inf")) < (1 - FASTER_BY) * (ours.p50_ms or float("inf")):
        return rival, f"both meet the criterion, it is the faster ({both})"
    return ours, (f"both meet the criterion, NNCF's graph no faster by {FASTER_BY:.0%} or more ({both})")


#: how the build's output, the report and the page name each method's graph
METHOD_NAMES = {"search": "the search's graph", "nncf-ac": "NNCF accuracy control's graph"}


def methods_line(record: dict) -> str | None:
    """The contest of the search and NNCF's accuracy control as the build record keeps it (the build's
    output, the report and the page); None where one method ran."""
    methods = record.get("methods")
    if not methods:
        return None
    seconds = ", ".join(f"{name} {methods[name]['seconds']:.0f} s" for name in ("search", "nncf-ac"))
    return f"kept {METHOD_NAMES[methods['won']]}: {methods['why']}; time: {seconds}"
