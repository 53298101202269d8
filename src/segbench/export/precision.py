"""Precision variants of an exported graph: fp16 and int8 Q/DQ.

Both keep float32 inputs and outputs, so every engine has the same contract.

* fp16: weights and activations in half precision, inputs/outputs float32
  (onnxconverter-common), with the final resize and argmax kept in float32.
* int8: the graph each runtime runs fastest at the accuracy target, from
  static calibration (:mod:`.quantize` has the formats, :mod:`.qualify` the
  search that chooses among them and keeps layers in float where needed).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segbench.export.calibration import tiles_digest
from segbench.export.probe import abs_max, float_tensors
from segbench.export.qualify import Int8Options, Int8Request, qualify
from segbench.export.quantize import CALIBRATION_METHODS, FORMATS, OrtGraphs, check_calibration
from segbench.extras import require
from segbench.files import atomic_output, sha256_file
from segbench.spec import BuildRecord, ModelSpec

__all__ = ["CALIBRATION_METHODS", "quantize_int8", "to_fp16"]


#: an activation as large as this on the checked tiles stays float32: fp16's largest finite value is
#: 65504, and half of it leaves room for tiles the check did not see
FP16_LIMIT = 65504 / 2


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str],
            tiles: np.ndarray | None = None, explain: np.ndarray | None = None) -> ModelSpec:
    """Write the fp16 variant of ``src`` to ``dst``; returns its spec (also saved beside it).

    Layers whose activations would overflow half precision stay float32: every float tensor's
    largest magnitude is measured on ``tiles`` (calibration tiles; without them, tiles drawn from
    the spec's band statistics), and the nodes that make or read one reaching :data:`FP16_LIMIT`
    are kept out of the conversion. With ``explain`` (held-out tiles), the converted layers are
    ranked by the damage half precision does to them and the worst measured
    (:func:`segbench.export.sensitivity.rank_fp16_layers`), into the spec's ``sensitivity``.
    """
    import onnx

    spec = ModelSpec.load(src)
    source = _source(src)
    start = time.perf_counter()
    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):  # nodes kept in float32 are named (as exports name them)
        node.name = node.name or f"{node.op_type}_{i}"
    # Keep the tail in float32: the full-resolution resize and the argmax.
    tail = [n.name for n in model.graph.node if n.op_type in ("Resize", "ArgMax")][-1:]
    checked = tiles if tiles is not None else _statistics_tiles(spec)
    hot = _overflowing_nodes(model, checked)
    half = _half_graph(model, tail + hot, Path(src).name)
    with atomic_output(dst) as tmp:
        onnx.save(half, str(tmp))
    check = {"tiles": len(checked), "from": "calibration" if tiles is not None else "spec statistics",
             "digest": tiles_digest(tiles) if tiles is not None else None, "limit": FP16_LIMIT}
    options = {"float32_nodes": hot, "overflow_check": check}
    if explain is not None:
        options["sensitivity"] = _explain_fp16(model, set(tail + hot), checked, explain, Path(src).name)
        options["sensitivity_tiles"] = tiles_digest(explain)
    record = BuildRecord(backend="onnx", precision="fp16", versions=_versions(),
                         build_seconds=time.perf_counter() - start,
                         artifact_bytes=Path(dst).stat().st_size, **source, options=options)
    out = spec.replace(build=record)
    out.save(dst)
    return out


def _half_graph(model, kept_float: list[str], name: str):
    """``model`` in half precision but for the nodes ``kept_float``, float32 inputs and outputs."""
    float16 = require("onnxconverter_common.float16", f"the fp16 graph of {name}")
    with warnings.catch_warnings():
        # One warning per weight below fp16's range, clamped to +-1e-7 (any trained
        # network has many); the engines' agreement with torch is what tells.
        warnings.filterwarnings("ignore", "the float32 number", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=kept_float)


def _explain_fp16(model, kept_float: set[str], rank_tiles: np.ndarray, held_out: np.ndarray,
                  name: str) -> list[dict]:
    """The layers half precision hurts most: ranked on ``rank_tiles``, the worst measured as the label
    agreement with the float graph on ``held_out`` tiles gained when each stays float32."""
    from segbench.export.qualify import EXPLAINED
    from segbench.export.quantize import ort_session
    from segbench.export.sensitivity import measure_fp16_gains, rank_fp16_layers

    feed = model.graph.input[0].name

    def labels(graph) -> np.ndarray:
        session = ort_session(graph.SerializeToString())
        out = [session.run(None, {feed: t[None].astype(np.float32)})[0] for t in held_out]
        return np.concatenate([o.argmax(1) if o.ndim == 4 else o for o in out])  # logits, or labels

    reference = labels(model)

    def agreement(extra: set[str]) -> float:
        return float(np.mean(labels(_half_graph(model, sorted(kept_float | extra), name)) == reference))

    with np.errstate(divide="ignore"):
        errors = rank_fp16_layers(model, kept_float, rank_tiles)[:EXPLAINED]
    worst = measure_fp16_gains(errors, agreement)
    return [e.to_dict() for e in sorted(worst, key=lambda e: -(e.gain or 0.0))]


def _overflowing_nodes(model, tiles: np.ndarray) -> list[str]:
    """Nodes that make or read a tensor reaching :data:`FP16_LIMIT` in magnitude on ``tiles``."""
    maxima = abs_max(model, float_tensors(model), tiles)
    hot = {name for name, value in maxima.items() if not np.isfinite(value) or value >= FP16_LIMIT}
    return [n.name for n in model.graph.node if hot & {*n.input, *n.output}]


def _statistics_tiles(spec: ModelSpec, count: int = 4) -> np.ndarray:
    """Tiles of normal noise with the spec's per-band mean and std (clipped at 0): a stand-in for
    imagery when no calibration scene is given."""
    rng = np.random.default_rng(0)
    mean = np.array(spec.mean, np.float32)[None, :, None, None]
    std = np.array(spec.std, np.float32)[None, :, None, None]
    noise = rng.standard_normal((count, spec.num_bands, spec.tile, spec.tile), dtype=np.float32)
    return np.maximum(mean + std * noise, 0).astype(np.float32)


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: np.ndarray,
    method: str = "minmax",
    request: Int8Request | None = None,
    note: Callable[[str], None] | None = None,
) -> ModelSpec:
    """Write the int8 variant of ``src`` for ``request``'s runtime (default: ONNX Runtime, unchecked),
    calibrated on ``calibration`` tiles; the search's record goes into its build record (``int8``)."""
    spec = ModelSpec.load(src)
    check_calibration(calibration, spec.num_bands, method)
    request = request or Int8Request("onnxruntime", OrtGraphs(), Int8Options(target=None))
    source = _source(src)
    start = time.perf_counter()
    with atomic_output(dst) as tmp:
        record = qualify(src, tmp, request.graph_runtime, request.runtime, calibration, method,
                         request.options, note or (lambda line: None))
    fmt = FORMATS[record["format"]]
    record["key"] = request.options.key(request.runtime)
    built = BuildRecord(
        backend="onnx", precision="int8", versions=_versions(),
        build_seconds=time.perf_counter() - start, artifact_bytes=Path(dst).stat().st_size,
        calibration_digest=tiles_digest(calibration), **source,
        options={"calibration_method": method, "calibration_tiles": len(calibration),
                 "activations": "int8 symmetric" if fmt.signed_activations else "uint8 asymmetric",
                 "weights": "int8 per-channel symmetric",
                 "bias": "int32" if fmt.qoperator else "float", "int8": record},
    )
    out = spec.replace(build=built)
    out.save(dst)
    return out


def _source(src: str | os.PathLike[str]) -> dict[str, str]:
    """The build-record fields naming the ONNX file a variant is made from (hashed before reading)."""
    return {"source": Path(src).name, "source_kind": "onnx", "source_digest": sha256_file(src)}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
