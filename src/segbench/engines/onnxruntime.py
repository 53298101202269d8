"""ONNX Runtime engines: ort-fp32, ort-fp16, ort-int8 on the CPU; ort-cuda-fp32, ort-cuda-fp16.

The artifact is the graph variant itself (fp32, fp16 or int8 Q/DQ ONNX),
copied beside its own spec. The CPU execution provider always runs; the CUDA
provider is used for ``device="cuda"`` (the ``ort-cuda-*`` engines) where
onnxruntime-gpu is installed, and there ``infer_tensor`` binds torch tensors
on the GPU as the session's input and output (I/O binding), so the device
tiler never copies logits to the host. onnxruntime-gpu is not installed on
the machines segbench is tested on: the CUDA path is unverified.

Session options are chosen by measurement (benchmarks/bench_ort_options.py,
SegFormer-B0, batch 4 at 512, one process per option set): the memory-pattern
planner is off. With it on, ONNX Runtime keeps the activations of the first
run in its arena and then allocates one more block for the planned pattern,
nearly doubling the peak (1910 MB against 1050 MB) for no gain in speed (same
ms per batch within 2%). Turning the arena off too saves another 150 MB but
costs 35-50% in speed, so the arena stays. The options are recorded in the
engine's build record and the session is created with the recorded ones.
Batches in flight, OpenVINO's throughput streams done by hand (threads each
running ``session.run`` on one session with one intra-op thread), gain nothing
for the tiler's batches: 472.6 ms per batch against 464.9 sequential
(SegFormer-B0, batch 4 at 512, 2 cores), at twice the peak (2196 MB); so the
tiler's batches run one at a time. Single tiles are another matter: loaded in
``"throughput"`` mode for ``batch=1`` (the dynamic batcher under Server load,
where most batches hold one tile), the engine runs one stream per core, each
``session.run`` on one intra-op thread, and up to that many threads may call
``infer`` at once (its ``inflight``): SegFormer-B0 at 256, 2 cores, 28.0 ms
per tile against 38.4 (fp32) and 17.3 against 28.6 (int8) one call at a time
(benchmarks/bench_ort_options.py, ``--batch 1``); the labels are the same.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from segbench.engines.base import Runner, check_input_shape, check_tensor, overlapped
from segbench.errors import EngineError, InputError, RuntimeMissingError, first_line
from segbench.extras import require
from segbench.files import atomic_output
from segbench.spec import ModelSpec

#: the defaults, from benchmarks/bench_ort_options.py; recorded in every ort-* build record
SESSION_OPTIONS: dict[str, Any] = {
    "enable_mem_pattern": False,
    "enable_cpu_mem_arena": True,
    "graph_optimization_level": "ORT_ENABLE_ALL",
}


def session_options(settings: dict[str, Any] | None = None):
    """An ``onnxruntime.SessionOptions`` from ``settings`` (keys of :data:`SESSION_OPTIONS`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in {**SESSION_OPTIONS, **(settings or {})}.items():
        if key == "graph_optimization_level":
            value = getattr(ort.GraphOptimizationLevel, value)
        setattr(opts, key, value)
    return opts


def create_session(path: Path, device: str = "cpu", settings: dict[str, Any] | None = None):
    """An inference session on ``path`` with ``settings``; one sentence if ONNX Runtime refuses it."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeMissingError(
                "ONNX Runtime has no CUDA provider here; install onnxruntime-gpu or use device cpu."
            )
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        return ort.InferenceSession(str(path), session_options(settings), providers=providers)
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise EngineError(
            f"ONNX Runtime cannot load {Path(path).name}: {first_line(exc)}"
        ) from exc


class OrtRunner(Runner):
    """An ONNX Runtime session behind the Engine contract."""

    runtime = "onnxruntime"
    int8_formats = "onnxruntime"

    @classmethod
    def check(cls, kind) -> None:
        require("onnxruntime", kind.name)

    @classmethod
    def check_run(cls, kind) -> None:
        ort = require("onnxruntime", kind.name)
        if kind.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeMissingError(f"{kind.name} needs ONNX Runtime's CUDA provider, which this "
                                      "installation lacks; install onnxruntime-gpu on a CUDA machine.")

    @classmethod
    def versions(cls, kind) -> dict[str, str]:
        return {"onnxruntime": require("onnxruntime", kind.name).__version__}

    @classmethod
    def build_options(cls, kind) -> dict[str, Any]:
        return {"session_options": dict(SESSION_OPTIONS)}

    @classmethod
    def compile_impl(cls, graph: Path, kind, dest: Path, spec: ModelSpec) -> dict:
        """Check that ONNX Runtime can load the graph variant (a failure names it, not a temporary
        copy), and copy it into place."""
        create_session(graph).get_inputs()
        with atomic_output(dest) as tmp:
            shutil.copyfile(graph, tmp)
        return {}

    def load_impl(self, artifact: Path) -> None:
        record = self.spec.build.options if self.spec.build else {}
        #: the session options this engine runs with (those recorded at build time)
        self.session_options = {**SESSION_OPTIONS, **record.get("session_options", {})}
        if self.threads:
            self.session_options["intra_op_num_threads"] = self.threads
        self.inflight = self._streams()
        if self.inflight > 1:
            self.session_options["intra_op_num_threads"] = 1
        self._session = create_session(artifact, self.device, self.session_options)
        inp = self._session.get_inputs()[0]
        check_input_shape(inp.shape, self.spec, artifact)
        self._input = inp.name
        self._output = self._session.get_outputs()[0].name
        self.device_tensors = self.device.startswith("cuda") and self.spec.output == "logits"

    @classmethod
    def tuned_for(cls, batch: int | None) -> bool:
        return batch == 1  # single tiles run on streams (see the module docstring)

    def _streams(self) -> int:
        """Calls that run at once: one per core (or per allowed thread) for single tiles in
        throughput mode on the CPU, else one (see the module's docstring)."""
        if self.mode != "throughput" or self.batch != 1 or self.device != "cpu":
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, self.threads or cores or 1)

    @property
    def config(self) -> str:
        return f"{self.inflight} streams of one thread" if self.inflight > 1 else super().config

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: tiles})[0]

    def infer_stream(self, batches):
        """Several batches in flight where the engine runs streams (one thread each), in order."""
        if self.inflight == 1:
            yield from super().infer_stream(batches)
            return
        yield from overlapped(self.infer, batches, self.inflight)

    def infer_tensor(self, x):
        """Float32 torch tensors on the GPU in and out, bound to the session (CUDA engines only)."""
        if not self.device_tensors:
            raise InputError(f"{self.name} runs on {self.device}; give it numpy tiles (infer).")
        torch = require("torch", f"{self.name} with device tensors")
        check_tensor(x, self.spec, self.name, self.device)
        x = x.contiguous()
        tile, index = self.spec.tile, x.device.index or 0
        out = torch.empty((x.shape[0], self.spec.num_classes, tile, tile), dtype=torch.float32,
                          device=x.device)
        torch.cuda.current_stream(x.device).synchronize()  # ORT reads x on its own stream
        binding = self._session.io_binding()
        binding.bind_input(self._input, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self._output, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self._session.run_with_iobinding(binding)  # returns once its stream has finished
        return out

    def close_impl(self) -> None:
        self._session = None
