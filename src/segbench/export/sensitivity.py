"""Which quantized layers do the damage: a ranking, then the measured gain of the worst.

Two steps, by cost. First every quantized layer is ranked by the
quantization noise on its activation inputs, from one run of the Q/DQ graph
over a few tiles (ONNX Runtime's ``qdq_loss_debug``: each tensor before and
after its Q/DQ pair). The noise is measured per channel and averaged in dB,
so that a tensor with a few outlier channels, which leave every other
channel a handful of int8 steps, ranks worst although its overall SQNR
(dominated by the outliers) looks fine. Then the worst few are measured:
the Q/DQ graph with that one layer back in float (its activation and weight
read before their Q/DQ pairs, everything else quantized as before), run on
held-out tiles by the engine's own runtime (OpenVINO's kernels err where ONNX
Runtime's do not), gives the label agreement with the float graph it gains.
Keeping one layer in float of a graph of ``n`` costs one session, not a
recalibration, so measuring ``k`` layers costs ``k`` short runs.

fp16 graphs get the same two steps (:func:`rank_fp16_layers`): the noise is
that of rounding each layer's activation inputs and weights to half
precision (values below fp16's normal range lose their digits, and an
activation that overflows was kept float32 already), measured on the float
graph's own activations; the gain is that of converting the graph with the
layer kept float32.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

#: tiles the ranking's one run of the Q/DQ graph looks at
RANK_TILES = 4


@dataclass(frozen=True)
class LayerError:
    """One quantized layer: how noisy its int8 inputs are, and what keeping it in float gains."""

    name: str
    op: str
    sqnr_db: float  # mean per-channel signal-to-quantization-noise of its worst activation input
    gain: float | None = None  # label agreement with float gained when it alone stays float

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "sqnr_db": round(self.sqnr_db, 2),
                "gain": None if self.gain is None else round(self.gain, 6)}


def rank_layers(qdq_graph: str | os.PathLike[str], layers: dict[str, str],
                tiles: np.ndarray) -> list[LayerError]:
    """The quantized ``layers`` (name -> op) of a Q/DQ graph, noisiest inputs first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from segbench.export.quantize import tile_reader

    model = onnx.load(str(qdq_graph))
    inputs = _activation_inputs(model, layers)
    shapes = _shapes(model)
    reader = tile_reader(model.graph.input[0].name, tiles[:RANK_TILES])
    with tempfile.TemporaryDirectory(prefix="segbench-sensitivity-") as tmp:
        augmented = Path(tmp) / "augmented.onnx"
        modify_model_output_intermediate_tensors(str(qdq_graph), str(augmented),
                                                 op_types_for_saving=["QuantizeLinear", "DequantizeLinear"])
        activations = collect_activations(str(augmented), reader)
    matching = create_activation_matching(activations)  # tensor -> its values before and after Q/DQ
    wanted = {x for xs in inputs.values() for x in xs}
    errors = {x: channel_sqnr_db(m["pre_qdq"], m["post_qdq"], shapes.get(x))
              for x, m in matching.items() if x in wanted}
    ranked = []
    for layer, op in layers.items():
        values = [errors[x] for x in inputs.get(layer, ()) if x in errors]
        if values:
            ranked.append(LayerError(layer, op, float(min(values))))
    return sorted(ranked, key=lambda e: e.sqnr_db)


#: the op types whose inputs an fp16 ranking measures (the layers that carry the arithmetic)
FP16_LAYER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: the floor of a recorded SQNR (a value that overflows half precision has none)
SQNR_FLOOR_DB = -100.0


def rank_fp16_layers(model, kept_float: set[str], tiles: np.ndarray) -> list[LayerError]:
    """The Conv/MatMul/Gemm nodes of a float ``model`` that its fp16 variant converts (all but
    ``kept_float``), worst first: the per-channel SQNR of rounding each one's activation inputs (on
    ``tiles``) and weights to half precision, the worst of them."""
    import onnx
    from onnx import numpy_helper

    from segbench.export.quantize import ort_session

    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = [n for n in model.graph.node if n.op_type in FP16_LAYER_OPS and n.name not in kept_float]
    wanted = list(dict.fromkeys(x for n in layers for x in n.input if x and x not in weights))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph_outputs = {o.name for o in probe.graph.output}
    inputs = {i.name for i in probe.graph.input}
    for name in wanted:
        if name not in graph_outputs and name not in inputs:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    fetched = [x for x in wanted if x not in inputs]
    session = ort_session(probe.SerializeToString())
    feed = model.graph.input[0].name
    activations: dict[str, list[np.ndarray]] = {x: [] for x in wanted}
    for tile in tiles[:RANK_TILES]:
        x = tile[None].astype(np.float32)
        for name, value in zip(fetched, session.run(fetched, {feed: x}) if fetched else [], strict=True):
            activations[name].append(value)
        for name in wanted:
            if name in inputs:
                activations[name].append(x)
    shapes = _shapes(model)
    ranked = []
    for node in layers:
        errors = []
        for tensor in node.input:
            if tensor in weights and weights[tensor].dtype == np.float32 and weights[tensor].ndim >= 2:
                w = weights[tensor]
                errors.append(channel_sqnr_db([w], [_half(w)], w.shape))
            elif tensor in activations and activations[tensor]:
                values = activations[tensor]
                errors.append(channel_sqnr_db(values, [_half(v) for v in values], shapes.get(tensor)))
        if errors:
            ranked.append(LayerError(node.name, node.op_type, max(SQNR_FLOOR_DB, float(min(errors)))))
    return sorted(ranked, key=lambda e: e.sqnr_db)


def measure_fp16_gains(errors: list[LayerError], agreement: Callable[[set[str]], float]) -> list[LayerError]:
    """``errors`` with each one's measured gain: ``agreement(kept float32)`` of the fp16 variant with
    that layer kept float32 too, less that of the variant as it is."""
    base = agreement(set())
    return [replace(e, gain=agreement({e.name}) - base) for e in errors]


def _half(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to half precision and back (overflow becomes inf, as on the device)."""
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def channel_sqnr_db(pre: list[np.ndarray], post: list[np.ndarray], shape: tuple | None) -> float:
    """Mean over channels of each channel's SQNR in dB (channels: axis 1 of 4-D tensors, the last axis
    otherwise); the whole tensor's SQNR when its shape is unknown."""
    signal, noise = 0.0, 0.0
    for x, q in zip(pre, post, strict=True):
        x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
        if shape is not None and len(shape) >= 2 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            per = int(np.prod(shape[1:]))
            if x.size % per == 0:
                full = (x.size // per, *shape[1:])
                x, q = x.reshape(full), q.reshape(full)
                axis = 1 if x.ndim == 4 else x.ndim - 1
                others = tuple(a for a in range(x.ndim) if a != axis)
                signal = signal + np.sum(x * x, axis=others)
                noise = noise + np.sum((x - q) ** 2, axis=others)
                continue
        signal = signal + np.sum(x * x)
        noise = noise + np.sum((x - q) ** 2)
    signal, noise = np.atleast_1d(signal), np.atleast_1d(noise)
    live = signal > 0
    if not live.any():
        return float("inf")
    ratio = signal[live] / np.maximum(noise[live], 1e-30)
    return float(np.mean(10 * np.log10(ratio)))


def measure_gains(qdq_graph: str | os.PathLike[str], float_graph: str | os.PathLike[str],
                  errors: list[LayerError], agreement: Callable[[bytes], float]) -> list[LayerError]:
    """``errors`` with each one's measured gain: ``agreement(graph bytes)`` (label agreement with float
    on held-out tiles) of the Q/DQ graph with that layer alone in float, less the graph's own."""
    import onnx

    model = onnx.load(str(qdq_graph))
    floats = {i.name: i for i in onnx.load(str(float_graph)).graph.initializer}
    base = agreement(model.SerializeToString())
    out = []
    for e in errors:
        variant = with_float_layers(model, floats, [e.name])
        out.append(replace(e, gain=agreement(variant.SerializeToString()) - base))
    return out


def with_float_layers(model, float_initializers: dict, names: list[str]):
    """A copy of a Q/DQ ``model`` whose layers ``names`` read their activations and weights before
    their Q/DQ pairs (the float graph's weights), every other layer quantized as before."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producers = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    have = {i.name for i in g.initializer}
    for node in g.node:
        if node.name not in names:
            continue
        for i, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = dq.input[0]
            q = producers.get(source)
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]  # the activation before quantization
            elif source.endswith("_quantized") and source[: -len("_quantized")] in float_initializers:
                weight = source[: -len("_quantized")]
                if weight not in have:
                    g.initializer.append(float_initializers[weight])
                    have.add(weight)
                node.input[i] = weight
        for output in node.output:  # its quantized output: readers of the Q/DQ pair read it as it is
            for q in [r for r in readers.get(output, []) if r.op_type == "QuantizeLinear"]:
                for dq in [r for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"]:
                    for reader in readers.get(dq.output[0], []):
                        reader.input[:] = [output if x == dq.output[0] else x for x in reader.input]
                    if any(o.name == dq.output[0] for o in g.output):  # the graph's output keeps its name
                        dq.op_type, dq.input[:] = "Identity", [output]
                        del dq.attribute[:]
    return out


def _activation_inputs(model, layers: dict[str, str]) -> dict[str, list[str]]:
    """The activations each layer quantizes, as the float tensors entering their Q/DQ pairs: its
    inputs, and its outputs where the quantizer quantized them too (ONNX Runtime's Q/DQ Conv does)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name not in layers:
            continue
        for tensor in node.input:
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                found.setdefault(node.name, []).append(q.input[0])
        found.setdefault(node.name, []).extend(o for o in node.output if o in quantized)
    return found


def _shapes(model) -> dict[str, tuple]:
    """Tensor shapes by shape inference (symbolic dimensions as names)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
    return shapes
