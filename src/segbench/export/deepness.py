"""A copy of an exported model that the Deepness QGIS plugin runs as is.

Deepness (PUTvision/qgis-plugin-deepness) reads its settings from the ONNX
file's ``metadata_props``: ``model_type``, ``class_names`` (JSON, id -> name),
``resolution`` (cm per pixel), ``tiles_size``, ``tiles_overlap`` (percent of
the tile), ``standardization_mean`` / ``standardization_std`` and
``seg_thresh``. It scales pixels to 0..1 (divides by 255) and then computes
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
        "tiles_size": json.dumps(spec.tile),
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
    onnx.checker.check_model(model)
    dest = deepness_path(onnx_path)
    with atomic_output(dest) as tmp:
        onnx.save(model, str(tmp))
    return dest
