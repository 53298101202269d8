"""Precision variants of an exported graph: fp16 and int8 Q/DQ.

Both keep float32 inputs and outputs, so every engine has the same contract.

* fp16: weights and activations in half precision, inputs/outputs float32
  (onnxconverter-common), with the final resize and argmax kept in float32.
* int8: a Q/DQ graph from static calibration (ONNX Runtime's
  ``quantize_static``) with symmetric signed int8 activations, per-channel
  symmetric weights and **unquantized biases**: the one combination that
  TensorRT's ONNX parser, ONNX Runtime and OpenVINO all accept (int32 biases
  make TensorRT fail with "DequantizeLinear input has type Int32").
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from segbench.errors import ExportError, InputError, first_line
from segbench.export.calibration import tiles_digest
from segbench.extras import require
from segbench.files import atomic_output, sha256_file
from segbench.logs import logger_level
from segbench.spec import BuildRecord, ModelSpec

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Q/DQ pairs go on the inputs of the compute-heavy ops only, where TensorRT
# places them too; quantizing element-wise constants (e.g. an attention scale)
# gives quantized scalars that TensorRT's Q/DQ optimizer rejects.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> ModelSpec:
    """Write the fp16 variant of ``src`` to ``dst``; returns its spec (also saved beside it)."""
    import onnx

    float16 = require("onnxconverter_common.float16", f"the fp16 graph of {Path(src).name}")
    spec = ModelSpec.load(src)
    source = _source(src)
    start = time.perf_counter()
    model = onnx.load(str(src))
    # Keep the tail in float32: the full-resolution resize and the argmax.
    tail = [n.name for n in model.graph.node if n.op_type in ("Resize", "ArgMax")][-1:]
    with warnings.catch_warnings():
        # One warning per weight below fp16's range, clamped to +-1e-7 (any trained
        # network has many); the engines' agreement with torch is what tells.
        warnings.filterwarnings("ignore", "the float32 number", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=tail)
    with atomic_output(dst) as tmp:
        onnx.save(half, str(tmp))
    record = BuildRecord(backend="onnx", precision="fp16", versions=_versions(),
                         build_seconds=time.perf_counter() - start,
                         artifact_bytes=Path(dst).stat().st_size, **source)
    out = spec.replace(build=record)
    out.save(dst)
    return out


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: np.ndarray,
    method: str = "minmax",
    exclude_tail: bool = True,
) -> ModelSpec:
    """Write the int8 Q/DQ variant of ``src`` calibrated on ``calibration`` tiles."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    spec = ModelSpec.load(src)
    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"Unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}."
        )
    if calibration.ndim != 4 or calibration.shape[1] != spec.num_bands or not len(calibration):
        raise InputError(
            f"Calibration tiles must be (N, {spec.num_bands}, {spec.tile}, {spec.tile}); "
            f"got {calibration.shape}."
        )
    source = _source(src)
    start = time.perf_counter()
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self):
            tile = next(self._it, None)
            return None if tile is None else {name: tile[None].astype(np.float32)}

    model = onnx.load(str(src))
    exclude = []
    if exclude_tail:  # the full-resolution resize and argmax stay in float
        exclude = [n.name for n in model.graph.node if n.op_type in ("Resize", "ArgMax")][-1:]
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    # ONNX Runtime's quantizer logs advice on the root logger; keep errors only.
    with atomic_output(dst) as tmp, logger_level(logging.getLogger(), logging.ERROR):
        try:
            quantize_static(
                str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                per_channel=True, calibrate_method=calib, nodes_to_exclude=exclude,
                op_types_to_quantize=list(QUANTIZED_OPS),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": False, "CalibTensorRangeSymmetric": True},
                calibration_providers=["CPUExecutionProvider"],
            )
        except (RuntimeError, ValueError) as exc:
            raise ExportError(f"int8 quantization failed: {first_line(exc)}") from exc
    record = BuildRecord(
        backend="onnx", precision="int8", versions=_versions(),
        build_seconds=time.perf_counter() - start, artifact_bytes=Path(dst).stat().st_size,
        calibration_digest=tiles_digest(calibration), **source,
        options={"calibration_method": method, "calibration_tiles": len(calibration),
                 "activations": "int8 symmetric", "weights": "int8 per-channel symmetric",
                 "bias": "float"},
    )
    out = spec.replace(build=record)
    out.save(dst)
    return out


def _source(src: str | os.PathLike[str]) -> dict[str, str]:
    """The build-record fields naming the ONNX file a variant is made from (hashed before reading)."""
    return {"source": Path(src).name, "source_kind": "onnx", "source_digest": sha256_file(src)}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
