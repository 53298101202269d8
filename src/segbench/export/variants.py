"""Graph variants of an exported model, made once and kept beside it.

``fp32`` is the exported ONNX file itself and ``pt2`` the ``torch.export``
program written with it by ``segbench export``. ``fp16`` and ``int8`` (Q/DQ)
are derived from the ONNX file here and cached beside it
(``model.fp16.onnx``, ``model.int8-minmax.onnx``). A cached variant is reused
only when its spec names what it was made from and that still matches: the
SHA-256 of the ONNX file (``build.source_digest``, with ``build.source``),
and for int8 also the calibration set's digest and method. A missing digest
never matches, and ``force`` remakes the variant whatever its record says.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segbench.errors import InputError, SegbenchError
from segbench.export.calibration import tiles_digest
from segbench.export.precision import quantize_int8, to_fp16
from segbench.extras import require
from segbench.files import sha256_file
from segbench.spec import BuildRecord, ModelSpec

GRAPHS = ("fp32", "fp16", "int8", "pt2")
#: the optional module each derived variant needs to be made
NEEDS = {"fp16": "onnxconverter_common"}


def check_graph(graph: str, purpose: str) -> None:
    """Raise RuntimeMissingError when this machine cannot make the variant ``graph``."""
    if graph in NEEDS:
        require(NEEDS[graph], purpose)


def graph_path(onnx_path: str | os.PathLike[str], graph: str, method: str = "minmax") -> Path:
    """Where the variant ``graph`` of ``onnx_path`` lives (beside it)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.with_suffix("")
    return {
        "fp32": onnx_path,
        "fp16": Path(f"{stem}.fp16.onnx"),
        "int8": Path(f"{stem}.int8-{method}.onnx"),
        "pt2": onnx_path.with_suffix(".pt2"),
    }[graph]


def prepare_graph(
    onnx_path: str | os.PathLike[str],
    graph: str,
    calibration: np.ndarray | None = None,
    method: str = "minmax",
    force: bool = False,
) -> Path:
    """The variant ``graph`` of ``onnx_path``, made unless a current one is cached (or ``force``).

    int8 needs ``calibration`` tiles, except to reuse a current variant
    calibrated earlier (its spec names that calibration set).
    """
    onnx_path = Path(onnx_path)
    path = graph_path(onnx_path, graph, method)
    if graph == "fp32":
        return path
    if graph == "pt2":
        if not path.is_file():
            raise InputError(
                f"torch engines need the exported program {path.name} beside {onnx_path.name}; "
                "re-run 'segbench export'."
            )
        return path
    source = sha256_file(onnx_path)
    if graph == "fp16":
        if force or not is_current(path, source):
            to_fp16(onnx_path, path)
        return path
    if calibration is None:
        if not force and is_current(path, source, method=method):
            return path
        raise InputError(
            "int8 engines need calibration scenes (--calib); give training scenes, "
            "never the evaluation scenes."
        )
    if force or not is_current(path, source, tiles_digest(calibration), method):
        quantize_int8(onnx_path, path, calibration, method)
    return path


def is_current(
    path: Path,
    source_digest: str,
    calibration_digest: str | None = None,
    method: str | None = None,
) -> bool:
    """True when the variant at ``path`` was made from ``source_digest`` (and this calibration)."""
    record = _record(path)
    if record is None or not record.source_digest or record.source_digest != source_digest:
        return False
    if method is None:
        return True
    # int8: made with this method, from a calibration set it names (and this one when given)
    return (record.options.get("calibration_method") == method and bool(record.calibration_digest)
            and calibration_digest in (None, record.calibration_digest))


def _record(path: Path) -> BuildRecord | None:
    if not path.is_file():
        return None
    try:
        return ModelSpec.load(path).build
    except SegbenchError:
        return None
