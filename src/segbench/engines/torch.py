"""PyTorch engines: torch-fp32 (the reference on the CPU), torch-cuda-fp32, torch-fp16,
torch-bf16 and torch-compile-fp16 (CUDA).

The artifact is the ``torch.export`` program saved by ``segbench export``
(``.pt2``): the same graph as the mmseg model, loadable without mmseg or the
checkpoint. On CUDA the model and its inputs are channels-last, half
precisions run under autocast, and ``torch-compile-*`` compiles the program
with ``torch.compile`` when loaded (the first batches of each shape pay for
it). ``infer_tensor`` takes and returns tensors on the engine's device, so
the device tiler (:mod:`segbench.tiler.device`) never copies logits to the host.

On the CPU every call runs on the engine's own thread, whichever thread makes
it. torch's intra-op pool (OpenMP) belongs to the thread that calls it, and
once one thread had run the model, another thread's calls ran slower
(benchmarks/bench_sut_overheads.py, SegFormer-B0 at 256, batch 1, 2 cores:
98 ms against 65 ms with no call in the first thread, and 68 ms through the
engine's own thread). The LoadGen child warms an engine up in its main
thread and the batcher calls it from its worker: with one thread,
benchmarks/bench_scenarios.py's torch-fp32 Server figure went from 0.39 to
0.94 of Offline.
"""

from __future__ import annotations

import contextlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segbench.engines.base import Runner, check_tensor
from segbench.errors import EngineError, RuntimeMissingError, first_line
from segbench.extras import require
from segbench.files import atomic_output
from segbench.spec import ModelSpec


def _load_program(path: Path):
    torch = require("torch", "torch engines")
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise EngineError(
            f"{Path(path).name} is not a loadable torch.export program: {first_line(exc)}"
        ) from exc


class TorchRunner(Runner):
    """A torch.export program behind the Engine contract."""

    runtime = "torch"
    #: ``infer_tensor`` returns logits on the engine's device
    device_tensors = True

    @classmethod
    def check(cls, kind) -> None:
        torch = require("torch", kind.name)
        if kind.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeMissingError(f"{kind.name} needs a CUDA GPU, and this machine has none.")

    @classmethod
    def versions(cls, kind) -> dict[str, str]:
        torch = require("torch", kind.name)
        v = {"torch": torch.__version__}
        if torch.cuda.is_available():
            v["cuda"] = str(torch.version.cuda)
        return v

    @classmethod
    def compile_impl(cls, graph: Path, kind, dest: Path, spec: ModelSpec) -> dict:
        """Copy the exported program into place and check that it loads."""
        with atomic_output(dest) as tmp:
            shutil.copyfile(graph, tmp)
            _load_program(tmp)
        return {}

    def load_impl(self, artifact: Path) -> None:
        torch = require("torch", self.name)
        self._torch = torch
        if self.threads:
            torch.set_num_threads(self.threads)  # process-wide: torch has one intra-op pool
        self._cuda = self.device.startswith("cuda")
        before = torch.cuda.memory_allocated(self.device) if self._cuda else 0
        module = _load_program(artifact).module().to(self.device)
        if self._cuda:
            module = module.to(memory_format=torch.channels_last)
        self._module = torch.compile(module) if self.kind.compiled else module
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.kind.precision)
        #: device memory the loaded model holds (its weights and buffers), for the bench report
        self.device_memory_bytes = torch.cuda.memory_allocated(self.device) - before if self._cuda else None
        #: the one thread that runs the model on the CPU (see the module docstring); on CUDA the
        #: caller's thread, whose current stream the outputs are queued on
        self._thread = None if self._cuda else ThreadPoolExecutor(1, thread_name_prefix=self.name)

    def _autocast(self):
        if self._dtype is None:
            return contextlib.nullcontext()
        return self._torch.autocast("cuda" if self._cuda else "cpu", dtype=self._dtype)

    def infer_tensor(self, x):
        """Raw pixels ``(N, bands, tile, tile)``, a float32 tensor on the engine's device -> float32
        logits there (on CUDA queued on the current stream, not waited for)."""
        check_tensor(x, self.spec, self.name, self.device)
        if self._thread is None:
            return self._forward(x)
        return self._thread.submit(self._forward, x).result()

    def _forward(self, x):
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            if self._cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self._module(x)
        return out.float() if out.dtype != torch.float32 else out

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(tiles).to(self.device)
        return self.infer_tensor(x).cpu().numpy()

    def close_impl(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        self._module = None
