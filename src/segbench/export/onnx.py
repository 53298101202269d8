"""Checkpoint -> ONNX graph (and a torch.export program), verified against PyTorch.

The exported graph takes raw pixels ``(N, bands, tile, tile)`` float32 with a
dynamic batch dimension: normalization is baked in, so every engine takes raw
pixels and compilers can fold it into the first convolution. It returns
logits at full tile resolution, resized in the graph exactly as mmseg's
``predict`` does (one bilinear resize with the decode head's
``align_corners``), or uint8 labels when asked for an argmax output.

Uses the dynamo exporter (opset 18): the legacy exporter fails on PSPNet's
adaptive pooling. The same ``torch.export`` program is saved as ``.pt2`` for
the torch engines, which then need neither mmseg nor the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.cost import model_cost
from segbench.errors import ExportError, first_line
from segbench.export.mlm import mlm_missing, write_model_item
from segbench.extras import require
from segbench.files import atomic_output, check_output
from segbench.spec import BuildRecord, ModelSpec, sidecar_path

OPSET = 18
MAX_BATCH = 256
INPUT_NAME = "pixels"


@dataclass(frozen=True)
class Agreement:
    """How closely one model's output matches a reference on the same tiles."""

    tiles: int
    max_abs_diff: float  # logits; NaN for label outputs
    label_agreement: float  # fraction of pixels with the same argmax label

    def to_dict(self) -> dict:
        return {"tiles": self.tiles, "max_abs_diff": self.max_abs_diff,
                "label_agreement": self.label_agreement}


def deploy_module(model, spec: ModelSpec, labels: bool = False):
    """Wrap an mmseg segmentor: raw pixels in, full-resolution logits (or labels) out."""
    import torch
    import torch.nn.functional as F

    class DeployModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.segmentor = model
            self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
            self.align_corners = bool(getattr(model.decode_head, "align_corners", False))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels - self.mean) / self.std
            logits = self.segmentor._forward(x)
            logits = F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear",
                                   align_corners=self.align_corners)
            return logits.argmax(1).to(torch.uint8) if labels else logits

    return DeployModel().eval()


def compiled_ops(model) -> list[str]:
    """The layers of ``model`` that run mmcv's compiled extension ops (``mmcv._ext``).

    Neither ``torch.export`` nor ONNX can express these C++/CUDA kernels, so a
    network using one (PSANet's PSAMask, deformable convolutions, CARAFE, ...)
    cannot be exported; naming them is the useful part of the error.
    """
    import inspect
    import sys

    names = []
    for layer in model.modules():
        module = sys.modules.get(type(layer).__module__)
        if module is None or not type(layer).__module__.startswith("mmcv.ops"):
            continue
        try:
            compiled = "ext_loader.load_ext" in inspect.getsource(module)
        except (OSError, TypeError):
            continue
        if compiled:
            names.append(f"{type(layer).__name__} ({type(layer).__module__})")
    return sorted(set(names))


def _exported_program(torch, module, example, spec: ModelSpec):
    """``torch.export`` of the deploy module with a dynamic batch; one sentence when it fails."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with _quiet():
            return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ExportError(f"torch.export failed for {spec.architecture}: {first_line(exc)}") from exc


def _check_outputs(checkpoint: str | os.PathLike[str], out: Path) -> None:
    """Before any work: the ONNX file, its .pt2 program and its spec can be written
    (:func:`segbench.files.check_output`; an earlier export there is replaced) and replace neither
    the checkpoint nor a file of it."""
    from segbench.protect import Inputs

    outputs = [out, out.with_suffix(".pt2"), sidecar_path(out)]
    for path in outputs:
        check_output(path, create=True, artifact=True)
    Inputs().add_artifact(checkpoint).refuse(outputs)


def export_model(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    labels: bool = False,
    verify_tiles: np.ndarray | None = None,
    min_agreement: float = 0.999,
    seed: int = 0,
) -> tuple[Path, ModelSpec, Agreement]:
    """Export a segbench checkpoint to ``out`` (.onnx) and ``out`` with suffix .pt2.

    The ONNX graph is verified with ONNX Runtime against the PyTorch model on
    random tiles and on ``verify_tiles`` (real imagery, raw pixels) before it
    is renamed into place; a graph whose labels agree on fewer than
    ``min_agreement`` of the pixels is refused. With the ``stac`` extra, a
    STAC MLM item describes it beside it (:mod:`segbench.export.mlm`).
    """
    torch = require("torch", "segbench export")
    require("mmseg", "segbench export")
    from segbench.checkpoint import load_model

    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"The output {out} must end in .onnx.")
    _check_outputs(checkpoint, out)
    model, spec = load_model(checkpoint)
    spec = spec.replace(output="labels" if labels else "logits", build=None)
    if ops := compiled_ops(model):  # fail in a second, not after minutes of tracing
        raise ExportError(f"{spec.architecture} cannot be exported: it uses mmcv's compiled op "
                          f"{', '.join(ops)}, which ONNX cannot express; choose a network without it.")
    module = deploy_module(model, spec, labels)
    tiles = _verification_tiles(spec, verify_tiles, seed)
    start = time.perf_counter()
    example = torch.from_numpy(tiles[:2].copy())  # batch 2: size-1 dims get specialised
    program = _exported_program(torch, module, example, spec)
    with torch.inference_mode():
        reference = np.concatenate([module(torch.from_numpy(t[None])).numpy() for t in tiles])
    pt2 = out.with_suffix(".pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        try:
            with _quiet():
                torch.onnx.export(
                    program, (example,), str(tmp), dynamo=True, opset_version=OPSET,
                    input_names=[INPUT_NAME], output_names=["labels" if labels else "logits"],
                    external_data=False, optimize=True, verify=False, report=False,
                )
        except Exception as exc:
            raise ExportError(
                f"ONNX export failed for {spec.architecture}: {first_line(exc)}"
            ) from exc
        agreement = compare_onnx(tmp, tiles, reference)
        if agreement.label_agreement < min_agreement:
            raise ExportError(
                f"The ONNX graph disagrees with PyTorch on {1 - agreement.label_agreement:.3%} "
                f"of pixels (max |diff| {agreement.max_abs_diff:.3g}); not writing {out.name}."
            )
    seconds = time.perf_counter() - start
    params, gflops = model_cost(model, spec.num_bands, spec.tile)
    with atomic_output(pt2) as tmp:
        torch.export.save(program, str(tmp))
    versions = {"torch": torch.__version__, "onnx_opset": str(OPSET)}
    record = BuildRecord(
        backend="onnx", precision="fp32", versions=versions, build_seconds=seconds,
        artifact_bytes=out.stat().st_size, source_digest=spec.checkpoint_digest,
        source=Path(checkpoint).name, source_kind="checkpoint",
        options={"verification": agreement.to_dict(), "params": params, "gflops": gflops},
    )
    onnx_spec = spec.replace(build=record)
    onnx_spec.save(out)
    spec.replace(build=BuildRecord(backend="torch.export", precision="fp32", versions=versions,
                                   artifact_bytes=pt2.stat().st_size,
                                   source_digest=spec.checkpoint_digest,
                                   source=Path(checkpoint).name, source_kind="checkpoint")).save(pt2)
    if mlm_missing() is None:  # the STAC MLM item, where the 'stac' extra is installed
        write_model_item(out, onnx_spec)
    return out, onnx_spec, agreement


def compare_onnx(path: str | os.PathLike[str], tiles: np.ndarray, reference: np.ndarray) -> Agreement:
    """Run ``path`` with ONNX Runtime (CPU) on ``tiles`` and compare to ``reference``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = np.concatenate([session.run(None, {name: t[None]})[0] for t in tiles])
    return agreement(outputs, reference)


def agreement(output: np.ndarray, reference: np.ndarray) -> Agreement:
    """Max |diff| of logits and argmax agreement between two output batches."""
    if output.shape != reference.shape:
        raise ExportError(f"Output shape {output.shape} differs from the reference {reference.shape}.")
    if reference.ndim == 4:  # logits
        diff = float(np.max(np.abs(output.astype(np.float32) - reference)))
        agree = float(np.mean(output.argmax(1) == reference.argmax(1)))
    else:
        diff = float("nan")
        agree = float(np.mean(output == reference))
    return Agreement(tiles=len(reference), max_abs_diff=diff, label_agreement=agree)


def _verification_tiles(spec: ModelSpec, real: np.ndarray | None, seed: int) -> np.ndarray:
    """Random raw-pixel tiles in the input's range, followed by the real tiles."""
    rng = np.random.default_rng(seed)
    high = {"uint8": 255.0, "uint16": 4095.0}.get(spec.input_dtype, 1.0)
    shape = (2, spec.num_bands, spec.tile, spec.tile)
    tiles = [rng.uniform(0, high, size=shape).astype(np.float32)]
    if real is not None and len(real):
        tiles.append(np.asarray(real, dtype=np.float32))
    return np.concatenate(tiles)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress chatter; errors still raise."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)

