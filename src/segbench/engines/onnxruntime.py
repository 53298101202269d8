"""ONNX Runtime engines: ort-fp32, ort-fp16, ort-int8.

The artifact is the graph variant itself (fp32, fp16 or int8 Q/DQ ONNX),
copied beside its own spec. The CPU execution provider always runs; the CUDA
provider is used for ``device="cuda"`` where onnxruntime-gpu is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from segbench.engines.base import check_input_shape
from segbench.errors import EngineError, RuntimeMissingError
from segbench.files import atomic_output
from segbench.spec import ModelSpec


def check(kind) -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise RuntimeMissingError(
            f"{kind.name} needs ONNX Runtime, which is not installed; "
            "run 'pip install onnxruntime'."
        ) from None


def versions(kind) -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def compile(graph: Path, kind, dest: Path, spec: ModelSpec) -> dict:
    """Copy the graph variant into place and check that ONNX Runtime can load it."""
    with atomic_output(dest) as tmp:
        shutil.copyfile(graph, tmp)
        _session(tmp, "cpu").get_inputs()
    return {}


def load(artifact: Path, spec: ModelSpec, kind, device: str | None = None) -> OrtEngine:
    return OrtEngine(artifact, spec, kind.name, device or "cpu")


def _session(path: Path, device: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeMissingError(
                "ONNX Runtime has no CUDA provider here; install onnxruntime-gpu or use device cpu."
            )
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise EngineError(
            f"ONNX Runtime cannot load {Path(path).name}: {str(exc).splitlines()[0]}"
        ) from exc


class OrtEngine:
    """An ONNX Runtime session behind the Engine contract."""

    def __init__(self, path: Path, spec: ModelSpec, name: str, device: str) -> None:
        self.name = name
        self.spec = spec
        self.device = device
        self._session = _session(path, device)
        inp = self._session.get_inputs()[0]
        check_input_shape(inp.shape, spec, path)
        self._input = inp.name

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: tiles})[0]

    def close(self) -> None:
        self._session = None
