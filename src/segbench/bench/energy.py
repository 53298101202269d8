"""Energy a piece of work used, where the machine exposes a counter: Linux powercap (Intel RAPL, also
on AMD's recent kernels) for the CPU packages, NVML for NVIDIA GPUs (``nvidia-ml-py``). Where neither
is readable (a VM, a container, no root) the meter says so; it never estimates.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Energy:
    """Joules used, and what measured them; or None with the reason none could be read."""

    joules: float | None
    source: str | None
    note: str | None = None


def _rapl_packages() -> list[Path]:
    """The top-level RAPL domains (packages; their sub-domains are counted inside them)."""
    if not POWERCAP.is_dir():
        return []
    return [p for p in sorted(POWERCAP.glob("intel-rapl:*")) if p.name.count(":") == 1
            and (p / "energy_uj").is_file()]


def _read_uj(domain: Path) -> tuple[int, int] | None:
    try:
        return int((domain / "energy_uj").read_text()), int((domain / "max_energy_range_uj").read_text())
    except (OSError, ValueError):  # often root-only
        return None


class EnergyMeter:
    """``with EnergyMeter() as meter: work()`` then ``meter.energy``: the CPU packages' energy (RAPL)
    and, when the process has imported torch with CUDA, the GPU's (NVML)."""

    def __enter__(self) -> EnergyMeter:
        self._rapl = {p: v for p in _rapl_packages() if (v := _read_uj(p)) is not None}
        self._nvml = _nvml_handle()
        self._gpu_mj = _nvml_energy_mj(self._nvml)
        self.energy = Energy(None, None, "measuring")
        return self

    def __exit__(self, *exc) -> None:
        joules, sources = 0.0, []
        for domain, (start, wrap) in self._rapl.items():
            end = _read_uj(domain)
            if end is not None:
                joules += ((end[0] - start) % wrap) / 1e6
                sources.append("RAPL")
        if self._gpu_mj is not None and (end_mj := _nvml_energy_mj(self._nvml)) is not None:
            joules += (end_mj - self._gpu_mj) / 1e3
            sources.append("NVML")
        if sources:
            self.energy = Energy(joules, "+".join(dict.fromkeys(sources)))
        else:
            self.energy = Energy(None, None, "no RAPL (powercap) or NVML energy counter is readable here")


def _nvml_handle():
    """NVML's handle of the current CUDA device, when torch already runs on one and nvidia-ml-py is
    installed; None otherwise (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    except Exception:  # noqa: BLE001  (no nvidia-ml-py, or no NVML: not measured)
        return None


def _nvml_energy_mj(handle) -> int | None:
    if handle is None:
        return None
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except Exception:  # noqa: BLE001  (a GPU without the counter)
        return None
