"""int8 graph formats, and one calibration that serves them all.

Each runtime runs a different int8 graph fastest, and TensorRT accepts only
one kind, so an int8 engine asks for its runtime's :data:`CANDIDATES` and
:mod:`.qualify` keeps the fastest that meets the accuracy target:

* ``qdq-s8``: Q/DQ with symmetric signed int8 activations and weights and
  **float biases**, the one graph TensorRT's ONNX parser takes (int32 biases:
  "DequantizeLinear input has type Int32"); OpenVINO reads it as int8 too.
* ``qdq-u8``: Q/DQ with asymmetric uint8 activations (ONNX Runtime's CPU
  kernels are u8s8; signed activations fall back to slower paths).
* ``qop-u8``: QOperator (QLinearConv, QLinearMatMul) with uint8 activations;
  MatMuls of two activations (attention's) stay in float, where they run faster.
* ``nncf``: NNCF's ``nncf.quantize``, OpenVINO's own quantizer.

Weights are int8 per output channel in every format. Only the compute-heavy
ops are quantized (:data:`QUANTIZED_OPS`), where TensorRT places Q/DQ too;
quantizing element-wise constants (an attention scale) gives quantized
scalars TensorRT's Q/DQ optimizer rejects. The classifier (the last of them)
stays in float: its int8 output would be the logits themselves on 256 steps.

:class:`Calibrated` collects activation ranges once per float graph and
range convention (ONNX Runtime's calibration cache) and writes any format
with any layers kept in float from them, so the search's many variants cost
a graph rewrite each, not a calibration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.errors import ExportError, InputError, first_line
from segbench.extras import require
from segbench.logs import logger_level

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Format:
    """One way of writing an int8 graph."""

    name: str
    description: str
    tool: str = "onnxruntime"  # or "nncf"
    qoperator: bool = False
    signed_activations: bool = True  # int8 symmetric; else uint8 asymmetric
    #: MatMuls of two activations (attention's) stay in float: QLinearMatMul requantizes them
    #: slower than float runs them (SegFormer-B0 at 256^2: 20.1 ms against 21.4 with them)
    weight_matmuls_only: bool = False

    @property
    def tensorrt_compatible(self) -> bool:
        return self.tool == "onnxruntime" and not self.qoperator and self.signed_activations


FORMATS = {f.name: f for f in (
    Int8Format("qdq-s8", "Q/DQ, int8 symmetric activations, float biases"),
    Int8Format("qdq-u8", "Q/DQ, uint8 asymmetric activations", signed_activations=False),
    Int8Format("qop-u8", "QOperator, uint8 asymmetric activations, MatMuls with weights", qoperator=True,
               signed_activations=False, weight_matmuls_only=True),
    Int8Format("nncf", "NNCF nncf.quantize", tool="nncf", signed_activations=False),
    # not a candidate: NNCF's quantize_with_accuracy_control (segbench.export.accuracy_control) writes it
    Int8Format("nncf-ac", "NNCF quantize_with_accuracy_control, layers reverted to float by the criterion",
               tool="nncf", signed_activations=False),
)}
#: the formats each runtime's int8 engine is chosen from (by measured speed at the accuracy target)
CANDIDATES = {"onnxruntime": ("qop-u8", "qdq-u8"), "openvino": ("qdq-s8", "nncf"), "tensorrt": ("qdq-s8",)}
RUNTIMES = tuple(CANDIDATES)


def usable(fmt: str) -> bool:
    """True when this machine can write ``fmt`` (NNCF's format needs the 'quant' extra's nncf)."""
    import importlib.util

    return FORMATS[fmt].tool != "nncf" or importlib.util.find_spec("nncf") is not None


def check_calibration(calibration: np.ndarray, bands: int, method: str) -> None:
    """One sentence for a calibration set or method the quantizer cannot use."""
    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"Unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}."
        )
    if calibration.ndim != 4 or calibration.shape[1] != bands or not len(calibration):
        raise InputError(f"Calibration tiles must be (N, {bands}, tile, tile); got {calibration.shape}.")


class Calibrated:
    """A float graph with its calibration tiles: writes int8 variants of it in any format.

    Activation ranges are collected on the first variant of each range
    convention (symmetric for ``qdq-s8``, min/max otherwise) and reused;
    NNCF collects its own statistics on every call.
    """

    def __init__(self, graph: str | os.PathLike[str], calibration: np.ndarray,
                 method: str = "minmax") -> None:
        import onnx

        self.graph = Path(graph)
        self.calibration = calibration
        self.method = method
        model = onnx.load(str(self.graph), load_external_data=False)
        self.input_name = model.graph.input[0].name
        compute = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
        weights = {i.name for i in model.graph.initializer}
        #: the MatMuls whose second input is an activation (attention's), which some formats leave
        self.activation_matmuls = {n.name for n in compute
                                   if n.op_type == "MatMul" and n.input[1] not in weights}
        # In float whatever the format: the classifier (the last compute layer), whose int8 output
        # would put the logits on a grid of 256 steps where near-ties become ties, and the
        # full-resolution resize and argmax after it.
        self.tail = [n.name for n in compute[-1:]]
        self.tail += [n.name for n in model.graph.node if n.op_type in ("Resize", "ArgMax")][-1:]
        #: every node int8 quantizes, in graph order: name -> op type
        self.layers = {n.name: n.op_type for n in compute[:-1]}
        self._cache = tempfile.TemporaryDirectory(prefix="segbench-calibration-")

    def close(self) -> None:
        self._cache.cleanup()

    def __enter__(self) -> Calibrated:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def layers_of(self, fmt: Int8Format | str) -> dict[str, str]:
        """The layers ``fmt`` quantizes (name -> op type)."""
        fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
        if not fmt.weight_matmuls_only:
            return self.layers
        return {n: op for n, op in self.layers.items() if n not in self.activation_matmuls}

    def quantize(self, fmt: Int8Format | str, dst: str | os.PathLike[str],
                 keep_float: tuple[str, ...] | list[str] = ()) -> Path:
        """Write ``fmt``'s int8 graph of the float graph to ``dst``, ``keep_float`` layers left in float."""
        fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
        exclude = [*self.tail, *keep_float]
        try:
            if fmt.tool == "nncf":
                self._nncf(Path(dst), exclude)
            else:
                self._onnxruntime(fmt, Path(dst), exclude)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ExportError(f"int8 quantization ({fmt.name}) failed: {first_line(exc)}") from exc
        return Path(dst)

    def _onnxruntime(self, fmt: Int8Format, dst: Path, exclude: list[str]) -> None:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        symmetric = fmt.signed_activations
        extra = {"QuantizeBias": False, "ActivationSymmetric": symmetric, "WeightSymmetric": True,
                 "CalibTensorRangeSymmetric": symmetric, "MatMulConstBOnly": fmt.weight_matmuls_only}
        cache = Path(self._cache.name) / f"ranges-{'symmetric' if symmetric else 'minmax'}.json"
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.method]
        # ONNX Runtime's quantizer logs advice on the root logger; keep errors only.
        with logger_level(logging.getLogger(), logging.ERROR):
            quantize_static(
                str(self.graph), str(dst), tile_reader(self.input_name, self.calibration),
                quant_format=QuantFormat.QOperator if fmt.qoperator else QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8, per_channel=True, calibrate_method=method,
                nodes_to_exclude=exclude, op_types_to_quantize=list(QUANTIZED_OPS),
                extra_options=extra, calibration_providers=["CPUExecutionProvider"],
                calibration_cache_path=str(cache),
            )

    def _nncf(self, dst: Path, exclude: list[str]) -> None:
        import onnx

        nncf = require("nncf", "openvino-int8 from NNCF (the 'quant' extra)")
        dataset = nncf.Dataset([{self.input_name: t[None].astype(np.float32)} for t in self.calibration])
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
                logger_level(logging.getLogger("nncf"), logging.ERROR):
            model = nncf.quantize(onnx.load(str(self.graph)), dataset, subset_size=len(self.calibration),
                                  ignored_scope=nncf.IgnoredScope(names=exclude, validate=False))
        onnx.save(model, str(dst))


def tile_reader(name: str, tiles: np.ndarray):
    """ONNX Runtime's calibration reader over ``tiles``, one at a time, as the input ``name``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tiles)

        def get_next(self):
            tile = next(self._it, None)
            return None if tile is None else {name: tile[None].astype(np.float32)}

    return Reader()


def ort_session(graph: str | os.PathLike[str] | bytes):
    """An ONNX Runtime CPU session on a graph file or serialized graph, quietly."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OrtGraphs:
    """Candidate graphs run by ONNX Runtime on the CPU (a :class:`~segbench.export.qualify.GraphRuntime`)."""

    name = "onnxruntime"

    def load(self, graph: str | os.PathLike[str] | bytes):
        session = ort_session(graph)
        name = session.get_inputs()[0].name
        return lambda tiles: session.run(None, {name: tiles})[0]
