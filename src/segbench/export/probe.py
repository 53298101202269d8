"""How large a graph's intermediate tensors get on real tiles: max |x|, per tensor or per channel.

A copy of the graph gets one ``Abs -> ReduceMax`` per tensor asked for, as extra outputs, so a run
returns a few numbers per tensor rather than the tensors themselves; the maxima are taken over
the tiles one at a time. Outlier smoothing (:mod:`.smoothing`) reads the per-channel maxima of
layer inputs, the fp16 variant (:mod:`.precision`) the maxima of every float tensor.
"""

from __future__ import annotations

import numpy as np


def float_tensors(model) -> dict[str, int]:
    """Every float32 tensor a node makes, with its rank (0 where shape inference could not tell)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    out = {}
    for node in model.graph.node:
        for name in node.output:
            info = infos.get(name)
            if info is not None and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                out[name] = len(info.type.tensor_type.shape.dim)
    return out


def abs_max(model, tensors: dict[str, int], tiles: np.ndarray,
            per_channel: bool = False) -> dict[str, np.ndarray]:
    """max |x| over ``tiles`` of each tensor in ``tensors`` (name -> rank): a scalar, or with
    ``per_channel`` one value per channel (axis 1 of a 4-D tensor, the last axis otherwise)."""
    import onnx

    from segbench.export.quantize import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    opset = next((o.version for o in probe.opset_import if o.domain in ("", "ai.onnx")), 18)
    outputs = {}
    for i, (name, rank) in enumerate(tensors.items()):
        if per_channel and not rank:
            continue
        axes = [a for a in range(rank) if a != (1 if rank == 4 else rank - 1)] if per_channel else None
        absolute, reduced = f"_probe_abs_{i}", f"_probe_max_{i}"
        probe.graph.node.append(onnx.helper.make_node("Abs", [name], [absolute]))
        if axes is None:
            probe.graph.node.append(onnx.helper.make_node("ReduceMax", [absolute], [reduced], keepdims=0))
        elif opset >= 18:
            axes_name = f"_probe_axes_{i}"
            probe.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), axes_name))
            probe.graph.node.append(onnx.helper.make_node("ReduceMax", [absolute, axes_name], [reduced],
                                                          keepdims=0))
        else:
            probe.graph.node.append(onnx.helper.make_node("ReduceMax", [absolute], [reduced], axes=axes,
                                                          keepdims=0))
        probe.graph.output.append(onnx.helper.make_tensor_value_info(reduced, onnx.TensorProto.FLOAT, None))
        outputs[reduced] = name
    if not outputs:
        return {}
    session = ort_session(probe.SerializeToString())
    wanted = list(outputs)
    result: dict[str, np.ndarray] = {}
    for tile in tiles:
        values = session.run(wanted, {model.graph.input[0].name: tile[None].astype(np.float32)})
        for key, value in zip(wanted, values, strict=True):
            name = outputs[key]
            result[name] = value if name not in result else np.maximum(result[name], value)
    return result
