"""A STAC Item with the Machine Learning Model (MLM) extension beside an exported model.

``model.onnx`` gets ``model.mlm.json`` (its name with ``.onnx`` replaced, as
``model.deepness.onnx``), written with pystac and stac-model: the network's
name and architecture, its task (semantic segmentation), framework (ONNX,
with its opset), its input (the GeoTIFF bands, ``[-1, bands, tile, tile]``
float32 raw pixels), its output (logits ``[-1, classes, tile, tile]`` or
labels ``[-1, tile, tile]``, with the classes' names and colours), its
parameter count where the export recorded it, and two assets with hrefs
relative to the item: the graph (role ``mlm:model``, with its size and
SHA-256) and its segbench spec. A model has no footprint of its own: the
geometry is null and ``datetime`` is the export's time.

The graph standardises its input itself (``(x - mean) / std``, the spec's
per-band mean and std in raw pixel units), so ``mlm:input`` says so in its
description and leaves ``value_scaling`` null: a reader that scaled the
pixels first would standardise them twice. The MLM schema cannot be fetched
offline, so the fields are checked by stac-model's pydantic models instead.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from pathlib import Path

from segbench.errors import RuntimeMissingError
from segbench.extras import require
from segbench.files import sha256_file, write_text
from segbench.spec import ModelSpec, sidecar_path

SUFFIX = ".mlm.json"
#: the media type MLM recommends for ONNX graphs
ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx; profile=onnx"
PURPOSE = "the STAC MLM item beside each exported model"
TASK = "semantic-segmentation"


def mlm_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.mlm.json``."""
    path = Path(onnx_path)
    return path.with_name(path.stem + SUFFIX)


def mlm_missing() -> str | None:
    """None when pystac and stac-model import; else the one sentence that says how to install them."""
    try:
        require("pystac", PURPOSE)
        require("stac_model", PURPOSE)
    except RuntimeMissingError as exc:
        return str(exc)
    return None


def model_properties(onnx_path: str | os.PathLike[str], spec: ModelSpec):
    """The ``mlm:*`` properties of the graph at ``onnx_path``, as stac-model's ``MLModelProperties``."""
    require("stac_model", PURPOSE)
    from stac_model.base import ProcessingExpression
    from stac_model.input import InputStructure, ModelInput
    from stac_model.output import MLMClassification, ModelOutput, ModelResult
    from stac_model.schema import MLModelProperties

    input_name, output_name = _io_names(onnx_path, spec)
    t, build = spec.tile, spec.build
    model_input = ModelInput(
        name=input_name,
        bands=[f"band{b}" for b in spec.bands],
        input=InputStructure(shape=[-1, spec.num_bands, t, t],
                             dim_order=["batch", "bands", "height", "width"], data_type="float32"),
        value_scaling=None,
        description=(f"Raw pixel values ({spec.input_dtype} imagery as float32) of GeoTIFF bands "
                     f"{list(spec.bands)}, in {t} x {t} windows. The graph standardises them itself, "
                     f"(x - mean) / std with mean {list(spec.mean)} and std {list(spec.std)}: "
                     "give it raw pixels."),
    )
    classes = [MLMClassification(value=i, name=_class_name(name, i), description=name,
                                 color_hint="".join(f"{v:02X}" for v in colour))
               for i, (name, colour) in enumerate(zip(spec.classes, spec.palette, strict=True))]
    if spec.output == "labels":
        result = ModelResult(shape=[-1, t, t], dim_order=["batch", "height", "width"], data_type="uint8")
        what, post = "Class labels (argmax of the logits)", None
    else:
        result = ModelResult(shape=[-1, spec.num_classes, t, t],
                             dim_order=["batch", "channel", "height", "width"], data_type="float32")
        what = "Logits of each class at full tile resolution; the label is their argmax"
        post = ProcessingExpression(format="python", expression="numpy.argmax(logits, axis=1)",
                                    description="the class of each pixel")
    model_output = ModelOutput(name=output_name, tasks={TASK}, result=result, classes=classes,
                               post_processing_function=post, description=what)
    params = (build.options.get("params") if build else None) or None
    opset = build.versions.get("onnx_opset") if build else None
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return MLModelProperties(
        name=Path(onnx_path).stem,
        architecture=spec.architecture or "unknown",
        tasks={TASK},
        framework="ONNX",
        framework_version=f"opset {opset}" if opset else None,
        accelerator="amd64" if x86 else None,
        accelerator_constrained=False,
        accelerator_summary="verified with ONNX Runtime on CPU; 'segbench build' compiles it for "
                            "other engines (OpenVINO, TensorRT, ...)",
        total_parameters=int(params) if params else None,
        pretrained=None,
        input=[model_input],
        output=[model_output],
    )


def write_model_item(onnx_path: str | os.PathLike[str], spec: ModelSpec,
                     datetime: dt.datetime | None = None) -> Path:
    """Write ``<model>.mlm.json`` beside the graph ``onnx_path`` (atomically) and return its path."""
    pystac = require("pystac", PURPOSE)
    require("stac_model", PURPOSE)
    from pystac.extensions.file import FileExtension
    from stac_model.schema import MLModelExtension

    onnx_path = Path(onnx_path)
    dest = mlm_path(onnx_path)
    properties = {"title": f"{onnx_path.name}: {spec.architecture or 'segmentation model'}",
                  "description": f"Semantic segmentation into {spec.num_classes} classes "
                                 f"({', '.join(spec.classes)}), exported by segbench.",
                  "created": _iso(dt.datetime.now(dt.UTC))}
    if spec.gsd_m:
        properties["gsd"] = spec.gsd_m
    item = pystac.Item(id=onnx_path.stem, geometry=None, bbox=None,
                       datetime=datetime or dt.datetime.now(dt.UTC), properties=properties)
    MLModelExtension.ext(item, add_if_missing=True).apply(model_properties(onnx_path, spec))
    model = pystac.Asset(href=onnx_path.name, media_type=ONNX_MEDIA_TYPE, title="ONNX graph",
                         roles=["mlm:model", "mlm:weights", "data"],
                         extra_fields={"mlm:artifact_type": "onnx"})
    item.add_asset("model", model)
    FileExtension.ext(model, add_if_missing=True).apply(
        size=onnx_path.stat().st_size, checksum="1220" + sha256_file(onnx_path))  # multihash: SHA-256
    spec_file = sidecar_path(onnx_path)
    if spec_file.is_file():
        item.add_asset("spec", pystac.Asset(href=spec_file.name, media_type="application/json",
                                            title="segbench model spec", roles=["metadata"]))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    return write_text(dest, json.dumps(data, indent=2) + "\n")


def _io_names(onnx_path: str | os.PathLike[str], spec: ModelSpec) -> tuple[str, str]:
    """The graph's input and output names (segbench's defaults when it cannot be read)."""
    default = ("pixels", spec.output)
    try:
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:
        return default
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    return (inputs[0] if inputs else default[0]), (graph.output[0].name if graph.output else default[1])


def _class_name(name: str, value: int) -> str:
    """A class name as the classification extension wants it (letters, digits, ``-``, ``_``)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or f"class_{value}"


def _iso(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
