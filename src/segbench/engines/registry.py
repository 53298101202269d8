"""Every engine kind segbench knows: list them, check them, build and load them by name.

An engine kind is a backend (ONNX Runtime, OpenVINO, torch, TensorRT,
TensorRT for RTX) at a precision, compiled by its :class:`Runner` class from
one graph variant of the exported model (see :mod:`segbench.export.variants`).
Runtimes are imported only when a kind is checked, built or loaded, so a
missing or broken runtime only matters to the engines that need it, and says
so in one sentence.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.engines.base import MODES, Runner
from segbench.engines.onnxruntime import OrtRunner
from segbench.engines.openvino import OpenVinoRunner
from segbench.engines.tensorrt import TensorRTRunner
from segbench.engines.torch import TorchRunner
from segbench.errors import InputError, RuntimeMissingError, SegbenchError, SpecError, UsageError, first_line
from segbench.export.qualify import Int8Options, Int8Request
from segbench.export.variants import check_graph, prepare_graph
from segbench.extras import RuntimeBrokenError, RuntimeNotInstalledError
from segbench.files import check_output, new_folders, sha256_file
from segbench.protect import Inputs
from segbench.spec import BuildRecord, ModelSpec, sidecar_path


@dataclass(frozen=True)
class EngineKind:
    """One buildable engine: backend x precision, and the graph variant it compiles."""

    name: str
    runner: type[Runner]
    precision: str  # fp32 | fp16 | bf16 | int8
    graph: str  # fp32 | fp16 | int8 (ONNX variants) | pt2 (torch.export program)
    device: str  # cpu | cuda
    suffix: str  # artifact file suffix
    description: str
    compiled: bool = False  # torch: torch.compile the program when loaded

    @property
    def backend(self) -> str:
        """The runtime's name: onnxruntime, openvino, torch, tensorrt."""
        return self.runner.runtime


_KINDS = [
    EngineKind("ort-fp32", OrtRunner, "fp32", "fp32", "cpu", ".onnx", "ONNX Runtime, fp32"),
    EngineKind("ort-fp16", OrtRunner, "fp16", "fp16", "cpu", ".onnx", "ONNX Runtime, fp16 graph"),
    EngineKind("ort-int8", OrtRunner, "int8", "int8", "cpu", ".onnx",
               "ONNX Runtime, its fastest int8 (QOperator or Q/DQ, measured)"),
    EngineKind("openvino-fp32", OpenVinoRunner, "fp32", "fp32", "cpu", ".xml", "OpenVINO, fp32"),
    EngineKind("openvino-bf16", OpenVinoRunner, "bf16", "fp32", "cpu", ".xml",
               "OpenVINO, bf16 execution (CPUs with AVX512_BF16 or AMX)"),
    EngineKind("openvino-int8", OpenVinoRunner, "int8", "int8", "cpu", ".xml",
               "OpenVINO, its fastest int8 (Q/DQ or NNCF, measured)"),
    EngineKind("torch-fp32", TorchRunner, "fp32", "pt2", "cpu", ".pt2", "PyTorch reference, fp32"),
    EngineKind("torch-cuda-fp32", TorchRunner, "fp32", "pt2", "cuda", ".pt2", "PyTorch on CUDA, fp32"),
    EngineKind("torch-fp16", TorchRunner, "fp16", "pt2", "cuda", ".pt2", "PyTorch on CUDA, fp16"),
    EngineKind("torch-bf16", TorchRunner, "bf16", "pt2", "cuda", ".pt2", "PyTorch on CUDA, bf16"),
    EngineKind("torch-compile-fp16", TorchRunner, "fp16", "pt2", "cuda", ".pt2",
               "PyTorch on CUDA, fp16, torch.compile", compiled=True),
    EngineKind("ort-cuda-fp32", OrtRunner, "fp32", "fp32", "cuda", ".onnx",
               "ONNX Runtime, CUDA provider (onnxruntime-gpu), fp32"),
    EngineKind("ort-cuda-fp16", OrtRunner, "fp16", "fp16", "cuda", ".onnx",
               "ONNX Runtime, CUDA provider (onnxruntime-gpu), fp16 graph"),
    EngineKind("trt-fp32", TensorRTRunner, "fp32", "fp32", "cuda", ".plan", "TensorRT, fp32"),
    EngineKind("trt-fp16", TensorRTRunner, "fp16", "fp16", "cuda", ".plan", "TensorRT, fp16 graph"),
    EngineKind("trt-int8", TensorRTRunner, "int8", "int8", "cuda", ".plan", "TensorRT, int8 Q/DQ"),
    EngineKind("trtrtx-fp32", TensorRTRunner, "fp32", "fp32", "cuda", ".plan",
               "TensorRT for RTX, fp32"),
    EngineKind("trtrtx-fp16", TensorRTRunner, "fp16", "fp16", "cuda", ".plan",
               "TensorRT for RTX, fp16 graph"),
    EngineKind("trtrtx-int8", TensorRTRunner, "int8", "int8", "cuda", ".plan",
               "TensorRT for RTX, int8 Q/DQ"),
]
KINDS: dict[str, EngineKind] = {k.name: k for k in _KINDS}


def get_kind(name: str) -> EngineKind:
    """The engine kind called ``name``, or one sentence listing the valid names."""
    try:
        return KINDS[name]
    except KeyError:
        raise UsageError(f"Unknown engine {name!r}; choose one of: {', '.join(KINDS)}.") from None


#: what :func:`probe` finds: the engine builds and runs here; builds, but runs only elsewhere (a
#: GPU); cannot, for want of a runtime or of hardware; or its runtime is installed and broken
STATES = ("available", "build only", "unavailable", "broken")


@dataclass(frozen=True)
class Availability:
    """What this machine can do with an engine kind, and why not where it cannot."""

    state: str  # one of STATES
    reason: str | None = None  # one sentence; None when available
    #: "unavailable" because its runtime is not installed (rather than for want of hardware)
    not_installed: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "available"


def _check(kind: EngineKind, run: bool) -> Availability | None:
    """None when the build (``run``: the run) side of ``kind`` works here; else what is wrong."""
    try:
        if run:
            kind.runner.check_run(kind)
        else:
            check_graph(kind.graph, kind.name)
            kind.runner.check(kind)
    except RuntimeBrokenError as exc:
        return Availability("broken", str(exc))
    except RuntimeNotInstalledError as exc:
        return Availability("unavailable", str(exc), not_installed=True)
    except RuntimeMissingError as exc:  # no such hardware here (a CUDA GPU, bf16 on the CPU)
        return Availability("unavailable", str(exc))
    except Exception as exc:  # a runtime that imports but fails when asked what it can do
        return Availability("broken", f"{kind.name} cannot be used here: its runtime failed "
                                      f"({type(exc).__name__}: {first_line(exc).rstrip('.')}).")
    return None


def probe(name: str, run: bool = True) -> Availability:
    """Whether this machine can build (and, with ``run``, also run) engine ``name``.

    Never raises for a runtime: one that is absent, or lacks its hardware, is
    "unavailable" (or "build only" where only running needs what is missing);
    one that is installed but raises on import or probe is "broken", with the
    error, so a broken install is never mistaken for an absent one.
    """
    kind = get_kind(name)
    found = _check(kind, run=False)
    if found is None and run:
        found = _check(kind, run=True)
        if found is not None and found.state == "unavailable":
            found = Availability("build only", found.reason, found.not_installed)
    return found or Availability("available")


def availability(name: str, run: bool = True) -> str | None:
    """None when this machine can build (and, with ``run``, also run) ``name``; else why not
    (:func:`probe` tells an absent runtime from a broken one)."""
    return probe(name, run).reason


def available_engines(run: bool = True) -> list[str]:
    """Names of the engines this machine can build (and run)."""
    return [name for name in KINDS if availability(name, run) is None]


def _require(kind: EngineKind, run: bool) -> None:
    """Raise the one-sentence reason, with the engines that run here instead, when ``kind`` cannot."""
    reason = availability(kind.name, run)
    if reason is not None:
        others = [n for n in available_engines(run) if n != kind.name]
        raise RuntimeMissingError(f"{reason.rstrip('.')}; engines that {'run' if run else 'build'} "
                                  f"here: {', '.join(others) or 'none'}.")


def build(
    onnx_path: str | os.PathLike[str],
    name: str,
    out_dir: str | os.PathLike[str] | None = None,
    calibration: np.ndarray | None = None,
    method: str = "minmax",
    force: bool = False,
    force_graph: bool | None = None,
    int8: Int8Options | None = None,
    note=None,
) -> Path:
    """Build engine ``name`` from an exported model; reuse it when built from the same graph and options.

    ``force`` remakes the engine and its graph variant (``force_graph``, when
    given, decides for the variant alone). ``int8`` sets an int8 engine's
    accuracy target and held-out tiles (default: its runtime's first format,
    unchecked); ``note`` receives one line per step of the int8 search.
    Returns the artifact path; its spec (with the build record) is saved
    beside it.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"Model {onnx_path} does not exist; export one with 'segbench export'.")
    kind = get_kind(name)
    _require(kind, run=False)
    out_dir = Path(out_dir) if out_dir else onnx_path.parent
    check_output(out_dir, folder=True, create=True)
    artifact = out_dir / f"{onnx_path.stem}.{name}{kind.suffix}"
    check_output(artifact, create=True, artifact=True)
    Inputs().add_artifact(onnx_path).refuse([artifact, sidecar_path(artifact)])
    request = None
    if kind.graph == "int8":
        request = Int8Request(kind.runner.int8_formats, kind.runner.graph_runtime(kind),
                              int8 or Int8Options(target=None))
    explain_on = (int8.held_out.tiles if kind.graph == "fp16" and int8 is not None and int8.explain
                  and int8.held_out is not None else None)  # fp16's sensitivity, on the same tiles
    graph = prepare_graph(onnx_path, kind.graph, calibration, method,
                          force=force if force_graph is None else force_graph, int8=request, note=note,
                          explain_on=explain_on)
    spec = ModelSpec.load(graph)
    digest = sha256_file(graph)
    settings = kind.runner.build_options(kind)
    if not force and _is_current(artifact, name, digest, settings):
        return artifact
    start = time.perf_counter()
    with new_folders(out_dir):
        options = kind.runner.compile(graph, kind, artifact, spec)
    seconds = time.perf_counter() - start
    record = BuildRecord(
        backend=kind.backend,
        precision=kind.precision,
        engine=name,
        versions=kind.runner.versions(kind),
        build_seconds=seconds,
        artifact_bytes=artifact_bytes(artifact),
        calibration_digest=spec.build.calibration_digest if spec.build else None,
        source_digest=digest,
        source=graph.name,
        source_kind="pt2" if kind.graph == "pt2" else "onnx",
        options={**(spec.build.options if spec.build else {}), **options},
    )
    spec.replace(build=record).save(artifact)
    return artifact


def load(artifact: str | os.PathLike[str], device: str | None = None, mode: str = "latency",
         batch: int | None = None, threads: int | None = None, spec: ModelSpec | None = None) -> Runner:
    """Load a built engine from its artifact and spec.

    ``mode`` says how it will run: ``"latency"`` (one call at a time, the
    default) or ``"throughput"`` (batches back to back, as the tiler runs
    them: OpenVINO then compiles for throughput and keeps several requests
    in flight; other backends run as in latency mode). ``batch``, the batch
    size the caller will send, lets OpenVINO's throughput mode compile for
    that size (a model with a dynamic batch runs about 15% slower there).
    ``threads`` caps the CPU threads of the runtime (several engines sharing
    a machine, e.g. Dask workers); None leaves the runtime's default.
    ``spec``: the artifact's spec, when the caller has read it already.
    """
    if mode not in MODES:
        raise InputError(f"Unknown engine mode {mode!r}; choose one of: {', '.join(MODES)}.")
    artifact = Path(artifact)
    if not artifact.is_file():
        raise InputError(f"Engine {artifact} does not exist; build it with 'segbench build'.")
    spec = spec if spec is not None else ModelSpec.load(artifact)
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
    kind.runner.check(kind)
    return kind.runner(artifact, spec, kind, device, mode, batch, threads)


def artifact_bytes(artifact: Path) -> int:
    """Size on disk of an artifact, with its weight files (OpenVINO's .bin)."""
    size = artifact.stat().st_size
    weights = artifact.with_suffix(".bin")
    if artifact.suffix == ".xml" and weights.is_file():
        size += weights.stat().st_size
    return size


def _is_current(artifact: Path, name: str, source_digest: str, settings: dict) -> bool:
    """True when ``artifact`` is engine ``name`` built from ``source_digest`` with ``settings``."""
    if not artifact.is_file():
        return False
    try:
        record = ModelSpec.load(artifact).build
    except SegbenchError:
        return False
    return (record is not None and record.engine == name and bool(record.source_digest)
            and record.source_digest == source_digest
            and all(record.options.get(k) == v for k, v in settings.items()))
