"""Every engine kind segbench knows: list them, check them, build and load them by name.

An engine kind is a backend (ONNX Runtime, OpenVINO, torch, TensorRT,
TensorRT for RTX) at a precision, compiled from one graph variant of the
exported model (fp32, fp16 or int8 Q/DQ ONNX, or the torch.export program).
Backend modules are imported lazily, so a missing runtime only matters to the
engines that need it, and says so in one sentence.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.engines.base import Engine
from segbench.errors import InputError, RuntimeMissingError, SegbenchError, SpecError
from segbench.files import sha256_file
from segbench.spec import BuildRecord, ModelSpec


@dataclass(frozen=True)
class EngineKind:
    """One buildable engine: backend x precision, and the graph variant it compiles."""

    name: str
    backend: str  # module under segbench.engines
    precision: str  # fp32 | fp16 | bf16 | int8
    graph: str  # fp32 | fp16 | int8 (ONNX variants) | pt2 (torch.export program)
    device: str  # cpu | cuda
    suffix: str  # artifact file suffix
    description: str

    def module(self):
        return importlib.import_module(f"segbench.engines.{self.backend}")


_KINDS = [
    EngineKind("ort-fp32", "onnxruntime", "fp32", "fp32", "cpu", ".onnx", "ONNX Runtime, fp32"),
    EngineKind("ort-fp16", "onnxruntime", "fp16", "fp16", "cpu", ".onnx", "ONNX Runtime, fp16 graph"),
    EngineKind("ort-int8", "onnxruntime", "int8", "int8", "cpu", ".onnx", "ONNX Runtime, int8 Q/DQ"),
    EngineKind("openvino-fp32", "openvino", "fp32", "fp32", "cpu", ".xml", "OpenVINO, fp32"),
    EngineKind("openvino-bf16", "openvino", "bf16", "fp32", "cpu", ".xml",
               "OpenVINO, bf16 execution (CPUs with AVX512_BF16 or AMX)"),
    EngineKind("openvino-int8", "openvino", "int8", "int8", "cpu", ".xml",
               "OpenVINO, int8 from the Q/DQ graph"),
    EngineKind("torch-fp32", "torch", "fp32", "pt2", "cpu", ".pt2", "PyTorch reference, fp32"),
    EngineKind("torch-fp16", "torch", "fp16", "pt2", "cuda", ".pt2", "PyTorch on CUDA, fp16"),
    EngineKind("torch-bf16", "torch", "bf16", "pt2", "cuda", ".pt2", "PyTorch on CUDA, bf16"),
    EngineKind("trt-fp32", "tensorrt", "fp32", "fp32", "cuda", ".plan", "TensorRT, fp32"),
    EngineKind("trt-fp16", "tensorrt", "fp16", "fp16", "cuda", ".plan", "TensorRT, fp16 graph"),
    EngineKind("trt-int8", "tensorrt", "int8", "int8", "cuda", ".plan", "TensorRT, int8 Q/DQ"),
    EngineKind("trtrtx-fp32", "tensorrt", "fp32", "fp32", "cuda", ".plan", "TensorRT for RTX, fp32"),
    EngineKind("trtrtx-fp16", "tensorrt", "fp16", "fp16", "cuda", ".plan",
               "TensorRT for RTX, fp16 graph"),
    EngineKind("trtrtx-int8", "tensorrt", "int8", "int8", "cuda", ".plan",
               "TensorRT for RTX, int8 Q/DQ"),
]
KINDS: dict[str, EngineKind] = {k.name: k for k in _KINDS}


def get_kind(name: str) -> EngineKind:
    """The engine kind called ``name``, or one sentence listing the valid names."""
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"Unknown engine {name!r}; choose one of: {', '.join(KINDS)}.") from None


def availability(name: str, run: bool = True) -> str | None:
    """None when this machine can build (and, with ``run``, also run) ``name``; else why not."""
    kind = get_kind(name)
    module = kind.module()
    try:
        module.check(kind)
        if run and hasattr(module, "check_run"):
            module.check_run(kind)
    except RuntimeMissingError as exc:
        return str(exc)
    return None


def available_engines(run: bool = True) -> list[str]:
    """Names of the engines this machine can build (and run)."""
    return [name for name in KINDS if availability(name, run) is None]


def graph_path(onnx_path: Path, graph: str, method: str = "minmax") -> Path:
    """Where the graph variant ``graph`` of ``onnx_path`` lives (beside it)."""
    stem = onnx_path.with_suffix("")
    return {
        "fp32": onnx_path,
        "fp16": Path(f"{stem}.fp16.onnx"),
        "int8": Path(f"{stem}.int8-{method}.onnx"),
        "pt2": onnx_path.with_suffix(".pt2"),
    }[graph]


def prepare_graph(
    onnx_path: Path,
    graph: str,
    calibration: np.ndarray | None = None,
    method: str = "minmax",
) -> Path:
    """Make (or reuse) the graph variant an engine compiles from."""
    from segbench.export.calibration import tiles_digest
    from segbench.export.precision import quantize_int8, to_fp16

    path = graph_path(onnx_path, graph, method)
    source = ModelSpec.load(onnx_path)
    if graph == "fp32":
        return path
    if graph == "pt2":
        if not path.is_file():
            raise InputError(
                f"torch engines need the exported program {path.name} beside {onnx_path.name}; "
                "re-run 'segbench export'."
            )
        return path
    cached = _cached_spec(path)
    fresh = cached is not None and cached.checkpoint_digest == source.checkpoint_digest
    if graph == "fp16":
        if not fresh:
            to_fp16(onnx_path, path)
        return path
    if calibration is None:
        if fresh:
            return path
        raise InputError(
            "int8 engines need calibration scenes (--calib); give training scenes, "
            "never the evaluation scenes."
        )
    if not (fresh and cached.build and cached.build.calibration_digest == tiles_digest(calibration)):
        quantize_int8(onnx_path, path, calibration, method)
    return path


def build(
    onnx_path: str | os.PathLike[str],
    name: str,
    out_dir: str | os.PathLike[str] | None = None,
    calibration: np.ndarray | None = None,
    method: str = "minmax",
    force: bool = False,
) -> Path:
    """Build engine ``name`` from an exported model; reuse it when already built from the same graph.

    Returns the artifact path; its spec (with the build record) is saved beside it.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"Model {onnx_path} does not exist; export one with 'segbench export'.")
    kind = get_kind(name)
    module = kind.module()
    module.check(kind)
    graph = prepare_graph(onnx_path, kind.graph, calibration, method)
    spec = ModelSpec.load(graph)
    out_dir = Path(out_dir) if out_dir else onnx_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"{onnx_path.stem}.{name}{kind.suffix}"
    digest = sha256_file(graph)
    cached = _cached_spec(artifact)
    if not force and cached and cached.build and cached.build.source_digest == digest:
        return artifact
    start = time.perf_counter()
    options = module.compile(graph, kind, artifact, spec) or {}
    seconds = time.perf_counter() - start
    record = BuildRecord(
        backend=kind.backend,
        precision=kind.precision,
        engine=name,
        versions=module.versions(kind),
        build_seconds=seconds,
        artifact_bytes=artifact_bytes(artifact),
        calibration_digest=spec.build.calibration_digest if spec.build else None,
        source_digest=digest,
        options={**(spec.build.options if spec.build else {}), **options},
    )
    spec.replace(build=record).save(artifact)
    return artifact


def load(artifact: str | os.PathLike[str], device: str | None = None) -> Engine:
    """Load a built engine from its artifact and spec."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise InputError(f"Engine {artifact} does not exist; build it with 'segbench build'.")
    spec = ModelSpec.load(artifact)
    if spec.build is None or not spec.build.engine:
        raise SpecError(
            f"{artifact.name} has no engine build record in its spec; build it with 'segbench build'."
        )
    kind = get_kind(spec.build.engine)
    if artifact.suffix != kind.suffix:
        raise SpecError(
            f"{artifact.name} does not look like a {kind.name} engine (expected a {kind.suffix} "
            "file); the spec beside it belongs to another artifact."
        )
    module = kind.module()
    module.check(kind)
    return module.load(artifact, spec, kind, device)


def artifact_bytes(artifact: Path) -> int:
    """Size on disk of an artifact, with its weight files (OpenVINO's .bin)."""
    size = artifact.stat().st_size
    weights = artifact.with_suffix(".bin")
    if artifact.suffix == ".xml" and weights.is_file():
        size += weights.stat().st_size
    return size


def _cached_spec(path: Path) -> ModelSpec | None:
    if not path.is_file():
        return None
    try:
        return ModelSpec.load(path)
    except SegbenchError:
        return None
