"""A copy of an exported model that the Deepness QGIS plugin runs as is.

Deepness (PUTvision/qgis-plugin-deepness) reads its settings from the ONNX
file's ``metadata_props``: ``model_type``, ``class_names`` (JSON, id -> name),
``resolution`` (cm per pixel), the tile size (its code reads ``tile_size``,
its documentation says ``tiles_size``: both are written), ``tiles_overlap``
(percent of the tile), ``standardization_mean`` / ``standardization_std`` and
``seg_thresh``. Deepness 0.6.5 installs ``onnxruntime<=1.17.0``, which loads
ONNX IR version 9 and opset 20 at most, so the copy is written at IR 9 (the
exporter writes 10, whose additions segbench graphs do not use) and an opset
no newer than 20. It scales pixels to 0..1 (divides by 255) and then computes
``(x - mean) / std``; segbench graphs take raw pixels and normalise inside, so
mean 0 and std 1/255 hand them the raw pixels back. Its segmentor reads
per-class probabilities (it thresholds them at ``seg_thresh``), so the copy
ends in a softmax over the classes; segbench's own engines keep the logits,
which they blend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segbench.errors import ExportError
from segbench.extras import require
from segbench.files import atomic_output
from segbench.spec import ModelSpec

SUFFIX = ".deepness.onnx"
#: what onnxruntime 1.17, the newest Deepness 0.6.5 installs, loads at most
MAX_IR_VERSION, MAX_OPSET = 9, 20


def deepness_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.deepness.onnx``."""
    path = Path(onnx_path)
    return path.with_name(path.stem + SUFFIX)


def deepness_metadata(spec: ModelSpec) -> dict[str, str]:
    """The metadata_props Deepness reads, for a model described by ``spec``."""
    stride = spec.stride or spec.tile - spec.tile // 4  # segbench's default: a quarter-tile overlap
    metadata = {
        "model_type": json.dumps("Segmentor"),
        "class_names": json.dumps({str(i): name for i, name in enumerate(spec.classes)}),
        "tile_size": json.dumps(spec.tile),  # what Deepness's code reads
        "tiles_size": json.dumps(spec.tile),  # what its documentation says
        "tiles_overlap": json.dumps(round(100 * (spec.tile - stride) / spec.tile)),
        "standardization_mean": json.dumps([0.0] * spec.num_bands),
        "standardization_std": json.dumps([1 / 255] * spec.num_bands),
        "seg_thresh": json.dumps(0.0),  # no probability floor: the most probable class, as segbench
    }
    if spec.gsd_m:
        metadata["resolution"] = json.dumps(round(spec.gsd_m * 100, 3))
    return metadata


def write_deepness_model(onnx_path: str | os.PathLike[str], spec: ModelSpec) -> Path:
    """Write ``<model>.deepness.onnx`` beside ``onnx_path``: softmax output and Deepness's metadata."""
    onnx = require("onnx", "the Deepness model")
    from onnx import helper

    if spec.output != "logits":
        raise ExportError("Deepness needs class probabilities; export with logits (without --labels).")
    model = onnx.load(str(onnx_path))
    graph = model.graph
    (output,) = graph.output
    logits = output.name
    output.name = "probabilities"
    graph.node.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1, name="probabilities"))
    del model.metadata_props[:]
    for key, value in deepness_metadata(spec).items():
        model.metadata_props.add(key=key, value=value)
    model = _for_onnxruntime_117(model, onnx)
    onnx.checker.check_model(model)
    dest = deepness_path(onnx_path)
    with atomic_output(dest) as tmp:
        onnx.save(model, str(tmp))
    return dest


def _for_onnxruntime_117(model, onnx):
    """``model`` at IR version 9 and an opset onnxruntime 1.17 runs (one sentence where it cannot be)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MAX_OPSET)
    if opset > MAX_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, MAX_OPSET)
        except Exception as exc:  # the converter raises its own types for ops it cannot move
            raise ExportError(f"Deepness's onnxruntime 1.17 runs opset {MAX_OPSET} at most, and this "
                              f"graph's opset {opset} does not convert to it ({exc}).") from exc
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model
