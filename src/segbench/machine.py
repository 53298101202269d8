"""What this machine is, as reports and kept measurements name it (no heavy imports)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version, or None without one."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        return text.split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        return None
