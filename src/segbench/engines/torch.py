"""PyTorch engines: torch-fp32 (the reference, CPU or CUDA), torch-fp16 and torch-bf16 (CUDA).

The artifact is the ``torch.export`` program saved by ``segbench export``
(``.pt2``): the same graph as the mmseg model, loadable without mmseg or the
checkpoint. Half precisions run under autocast on CUDA, channels-last.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np

from segbench.engines.base import Runner
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
        self._module = _load_program(artifact).module().to(self.device)
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.kind.precision)
        self._cuda = self.device.startswith("cuda")

    def _autocast(self):
        if self._dtype is None:
            return contextlib.nullcontext()
        return self._torch.autocast("cuda" if self._cuda else "cpu", dtype=self._dtype)

    def infer_impl(self, tiles: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            x = torch.from_numpy(tiles).to(self.device, non_blocking=True)
            if self._cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self._module(x)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        return out.cpu().numpy()

    def close_impl(self) -> None:
        self._module = None
