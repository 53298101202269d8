"""Outlier smoothing (SmoothQuant) of a float graph before int8 quantization.

A few activation channels much larger than the rest (outliers, as trained
networks have after normalisation layers) set a per-tensor activation scale
that leaves the other channels a handful of int8 steps. SmoothQuant (Xiao et
al., 2023) divides each such input channel ``j`` of a layer by
``s_j = max|X_j|^a / max|W_j|^(1-a)`` and multiplies the layer's weights for
that channel by ``s_j``: the float function is unchanged, and the activation
is as easy to quantize as the weights. The division is folded into the
producer where it can be (a convolution's output channels through ReLU or
pooling, a LayerNormalization's scale and bias), else it is one ``Mul``
before the layers that share the activation.

Only layers whose activation channels are uneven are smoothed (the largest
channel more than :data:`SPREAD` times the median). Every layer whose input is
uneven takes its share: grouped and depthwise convolutions too (SegFormer's
Mix-FFN reads its first projection through a depthwise 3x3; each input channel
scales the weights of its own group), and each layer's channels are measured
on the axis that layer reads them on (axis 1 for a convolution, the last for a
MatMul or Gemm, also on a channels-last 4-D tensor); a layer left alone is
named in :attr:`Smoothed.skipped` with the reason. ONNX Runtime's own
SmoothQuant needs Intel Neural Compressor 2.x (its ONNX adaptor is gone from
3.x), and NNCF's is part of its own quantizer, whose uint8 activations
TensorRT refuses; this one rewrites the float graph, so every int8 format
(:mod:`.quantize`) starts from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.export.probe import abs_max, float_tensors

#: smooth a layer whose largest activation channel is more than this times the median one
SPREAD = 16.0
#: SmoothQuant's migration strength (0: all on the activations, 1: all on the weights)
ALPHA = 0.5
#: ops between a producer and the activation that commute with a positive per-channel scale
_HOMOGENEOUS = ("Relu", "LeakyRelu", "MaxPool", "AveragePool", "Identity")


@dataclass(frozen=True)
class Smoothed:
    """What smoothing did: the layers whose inputs were smoothed, and how many divisions were folded."""

    path: Path
    layers: tuple[str, ...]
    folded: int
    inserted: int
    skipped: tuple[tuple[str, str], ...] = ()  # (layer, why) of uneven inputs left alone

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "folded": self.folded, "inserted": self.inserted,
                "alpha": ALPHA, "spread": SPREAD, "skipped": [list(x) for x in self.skipped]}


def smooth(graph: str | os.PathLike[str], dst: str | os.PathLike[str], tiles: np.ndarray,
           alpha: float = ALPHA, spread: float = SPREAD) -> Smoothed:
    """Write the smoothed float graph of ``graph`` to ``dst`` (statistics from ``tiles``)."""
    import onnx

    model = onnx.load(str(graph))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    uses = {name: len(consumers.get(name, [])) for name in inits}

    # activation -> the layers that read it and whose weights can take the scale
    groups: dict[str, list] = {}
    for n in g.node:
        weight = _weight(n, inits, uses)
        if weight is not None and n.input[0] not in inits:
            groups.setdefault(n.input[0], []).append(n)
    if not groups:
        return _unchanged(model, dst)
    channel_max = _channel_max(model, groups, tiles)

    smoothed, skipped, folded, inserted = [], [], 0, 0
    for act, layers in groups.items():
        a = channel_max.get(act)
        if a is None:
            skipped += [(n.name, "its input's rank is unknown") for n in layers]
            continue
        if not np.all(np.isfinite(a)) or a.max() <= spread * max(np.median(a), 1e-12):
            continue
        w = np.max([_weight_channel_max(n, inits) for n in layers], axis=0)
        if w.shape != a.shape:
            skipped += [(n.name, f"{a.shape[0]} input channels, weights for {w.shape[0]}") for n in layers]
            continue
        s = np.where((a > 0) & (w > 0), a ** alpha / np.maximum(w, 1e-12) ** (1 - alpha), 1.0)
        s = np.clip(s, 1e-4, 1e4).astype(np.float32)
        for n in layers:
            _scale_weight(n, inits, s)
        if _fold_into_producer(act, s, producers, consumers, layers, inits):
            folded += 1
        else:
            _insert_division(g, act, s, layers, inits)
            inserted += 1
        smoothed += [n.name for n in layers]
    onnx.save(model, str(dst))
    return Smoothed(Path(dst), tuple(smoothed), folded, inserted, tuple(skipped))


def _channel_max(model, groups: dict, tiles: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each group's activation, over the axis its layers read as channels:
    axis 1 for a convolution, the last for MatMul/Gemm. Where that is not the axis
    :func:`~segbench.export.probe.abs_max` reduces to (a channels-last 4-D input of a MatMul, a 1-D
    convolution's 3-D input), a copy of the graph moves the axis last and flattens the rest."""
    import onnx

    ranks = float_tensors(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted: dict[str, int] = {}
    names: dict[str, str] = {}
    for i, (act, layers) in enumerate(groups.items()):
        rank = ranks.get(act, 0)
        if not rank:
            continue
        axis = 1 if layers[0].op_type == "Conv" else rank - 1
        if axis == (1 if rank == 4 else rank - 1):
            wanted[act], names[act] = rank, act
            continue
        perm = [d for d in range(rank) if d != axis] + [axis]
        moved, flat = f"_smooth_probe_t{i}", f"_smooth_probe_f{i}"
        probe.graph.node.extend([onnx.helper.make_node("Transpose", [act], [moved], perm=perm),
                                 onnx.helper.make_node("Flatten", [moved], [flat], axis=rank - 1)])
        wanted[flat], names[act] = 2, flat
    found = abs_max(probe, wanted, tiles, per_channel=True)
    return {act: found[name] for act, name in names.items() if name in found}


def _unchanged(model, dst) -> Smoothed:
    import onnx

    onnx.save(model, str(dst))
    return Smoothed(Path(dst), (), 0, 0)


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _weight(node, inits, uses):
    """The weight initializer of a layer whose input channels can be rescaled, or None."""
    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
        name = node.input[1]  # grouped and depthwise too: each input channel scales its own group
    elif node.op_type == "MatMul" and node.input[1] in inits:
        name = node.input[1]
    elif node.op_type == "Gemm" and node.input[1] in inits and not _attr(node, "transA", 0):
        name = node.input[1]
    else:
        return None
    return name if uses.get(name) == 1 else None  # a weight shared with another node is left alone


def _weight_array(node, inits) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[node.input[1]])


def _input_axis(node) -> int:
    """The axis of ``node``'s weight that runs over its input channels."""
    if node.op_type == "Conv":
        return 1  # (O, I, kh, kw)
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        return 1  # (N, K)
    return 0  # MatMul / Gemm: (K, N)


def _grouped(node, w: np.ndarray) -> np.ndarray:
    """A convolution's weight ``(O, I/g, k...)`` as ``(g, O/g, I/g, k)``: input channel ``j`` is
    ``[j // (I/g), :, j % (I/g)]`` (one group, as a plain convolution, is ``(1, O, I, k)``)."""
    groups = _attr(node, "group", 1)
    return w.reshape(groups, w.shape[0] // groups, w.shape[1], -1)


def _weight_channel_max(node, inits) -> np.ndarray:
    w = np.abs(_weight_array(node, inits))
    if node.op_type == "Conv":
        return _grouped(node, w).max(axis=(1, 3)).ravel()
    axis = _input_axis(node)
    return w.max(axis=tuple(i for i in range(w.ndim) if i != axis))


def _scale_weight(node, inits, s: np.ndarray) -> None:
    from onnx import numpy_helper

    w = _weight_array(node, inits)
    if node.op_type == "Conv":
        g = _grouped(node, w)
        scaled = (g * s.reshape(g.shape[0], 1, g.shape[2], 1)).reshape(w.shape)
    else:
        shape = [1] * w.ndim
        shape[_input_axis(node)] = -1
        scaled = w * s.reshape(shape)
    inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled.astype(w.dtype), node.input[1]))


def _fold_into_producer(act: str, s: np.ndarray, producers, consumers, layers, inits) -> bool:
    """Divide ``act``'s channels by ``s`` inside the op that makes it, when nothing else reads the way
    there: a convolution (through ops that commute with the scale) or a LayerNormalization."""
    from onnx import numpy_helper

    if {id(n) for n in consumers.get(act, [])} != {id(n) for n in layers}:
        return False
    node = producers.get(act)
    while node is not None and node.op_type in _HOMOGENEOUS:  # the scale passes through these
        if len(consumers.get(node.input[0], [])) != 1:
            return False
        node = producers.get(node.input[0])
    if node is None:
        return False
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
        axis = 0 if node.op_type == "Conv" else 1
        if node.op_type == "ConvTranspose" and _attr(node, "group", 1) != 1:
            return False
        targets = [(node.input[1], axis)] + ([(node.input[2], 0)] if len(node.input) > 2 else [])
    elif node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] in inits:
        targets = [(node.input[1], 0)] + ([(node.input[2], 0)] if len(node.input) > 2 else [])
    else:
        return False
    arrays = {name: numpy_helper.to_array(inits[name]) for name, _ in targets}
    if any(name not in inits or arrays[name].shape[axis] != len(s) for name, axis in targets):
        return False
    for name, axis in targets:
        shape = [1] * arrays[name].ndim
        shape[axis] = -1
        inits[name].CopyFrom(numpy_helper.from_array(
            (arrays[name] / s.reshape(shape)).astype(arrays[name].dtype), name))
    return True


def _insert_division(g, act: str, s: np.ndarray, layers, inits) -> None:
    """One ``Mul`` by ``1 / s`` on ``act`` (channels on axis 1 for a convolution, last otherwise)."""
    import onnx
    from onnx import numpy_helper

    spatial = len(inits[layers[0].input[1]].dims) - 2  # a convolution's input has as many, after N, C
    shape = (1, -1) + (1,) * spatial if layers[0].op_type == "Conv" else (-1,)
    scale = f"{act}_smooth_scale"
    out = f"{act}_smoothed"
    g.initializer.append(numpy_helper.from_array((1.0 / s).reshape(shape).astype(np.float32), scale))
    g.node.append(onnx.helper.make_node("Mul", [act, scale], [out], name=f"{act}_smooth"))
    for n in layers:
        n.input[0] = out
    _topological_sort(g)


def _topological_sort(g) -> None:
    """Reorder ``g``'s nodes so that every node follows the producers of its inputs."""
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a missing input: leave the order as it was
            return
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
