"""Optional extras: import what an extra provides, or say in one sentence which extra to install.

A runtime can be absent (``ModuleNotFoundError``) or installed but broken (an
``OSError`` from a missing shared library, an ``ImportError`` from a half
installed package, anything its import raises); either way the user gets a
:class:`~segbench.errors.RuntimeMissingError` naming the extra, never a traceback: its subclass
:class:`RuntimeNotInstalledError` or :class:`RuntimeBrokenError`, which ``segbench engines`` and
the tests tell apart.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from segbench.errors import RuntimeMissingError, first_line

#: top-level module -> the segbench extra that installs it (pyproject.toml)
EXTRAS = {
    "torch": "train",
    "mmseg": "train",
    "mmengine": "train",
    "mmcv": "train",
    "onnxscript": "train",
    "onnxconverter_common": "quant",
    "openvino": "openvino",
    "tensorrt_rtx_bindings": "tensorrt-rtx",
    "matplotlib": "plot",
    "distributed": "cluster",
    "dask": "cluster",
    "shapely": "gis",
    "pyogrio": "gis",
    "pystac": "stac",
    "stac_model": "stac",
    "mlperf_loadgen": "loadgen",
}
#: modules no extra provides, with how to get them
OTHER = {
    "tensorrt": "install TensorRT from NVIDIA's package index on a machine with an NVIDIA GPU "
                "('pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com')",
}


class RuntimeNotInstalledError(RuntimeMissingError):
    """The module is not installed at all (``ModuleNotFoundError`` for the module itself)."""


class RuntimeBrokenError(RuntimeMissingError):
    """The module is installed but its import fails (a missing shared library, a half installed
    package, anything its import raises): a broken install to repair, not an absent one."""


def install_hint(module: str) -> str:
    """How to install ``module``: the segbench extra, or where else it comes from."""
    top = module.split(".")[0]
    if top in EXTRAS:
        return f"run pip install 'segbench[{EXTRAS[top]}]'"
    return OTHER.get(top, f"run 'pip install {top}'")


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose`` (e.g. "openvino-fp32"); one sentence if that fails."""
    try:
        return importlib.import_module(module)
    except Exception as exc:
        top = module.split(".")[0]
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == top
        if missing:
            raise RuntimeNotInstalledError(f"{purpose} needs {top}, which is not installed; "
                                           f"{install_hint(top)}.") from None
        raise RuntimeBrokenError(f"{purpose} needs {top}, which is installed but fails to import "
                                 f"({type(exc).__name__}: {first_line(exc).rstrip('.')}); "
                                 f"{install_hint(top)}.") from None
