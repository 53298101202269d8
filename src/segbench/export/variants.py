"""Graph variants of an exported model, made once and kept beside it.

``fp32`` is the exported ONNX file itself and ``pt2`` the ``torch.export``
program written with it by ``segbench export``. ``fp16`` and ``int8`` are
derived from the ONNX file here and cached beside it (``model.fp16.onnx``;
one int8 graph per runtime, ``model.int8-onnxruntime-minmax.onnx``,
``model.int8-openvino-minmax.onnx``, ``model.int8-tensorrt-minmax.onnx``). A
cached variant is reused only when its spec names what it was made from and
that still matches: the SHA-256 of the ONNX file (``build.source_digest``,
with ``build.source``), and for int8 also the calibration set's digest and
method and the search's key (runtime, formats, accuracy target, held-out
tiles: :meth:`~segbench.export.qualify.Int8Options.key`). A missing digest
never matches, and ``force`` remakes the variant whatever its record says.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segbench.errors import InputError, SegbenchError
from segbench.export.calibration import tiles_digest
from segbench.export.precision import quantize_int8, to_fp16
from segbench.export.qualify import Int8Request
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


def graph_path(onnx_path: str | os.PathLike[str], graph: str, method: str = "minmax",
               runtime: str = "onnxruntime") -> Path:
    """Where the variant ``graph`` of ``onnx_path`` lives (beside it); int8 graphs per ``runtime``."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.with_suffix("")
    return {
        "fp32": onnx_path,
        "fp16": Path(f"{stem}.fp16.onnx"),
        "int8": Path(f"{stem}.int8-{runtime}-{method}.onnx"),
        "pt2": onnx_path.with_suffix(".pt2"),
    }[graph]


def prepare_graph(
    onnx_path: str | os.PathLike[str],
    graph: str,
    calibration: np.ndarray | None = None,
    method: str = "minmax",
    force: bool = False,
    int8: Int8Request | None = None,
    note: Callable[[str], None] | None = None,
    explain_on: np.ndarray | None = None,
) -> Path:
    """The variant ``graph`` of ``onnx_path``, made unless a current one is cached (or ``force``).

    int8 needs ``calibration`` tiles, except to reuse a current variant
    calibrated earlier (its spec names that calibration set); ``int8`` says
    for which runtime and to which target (default: ONNX Runtime's, plain);
    ``note`` receives one line per step of its search. ``explain_on``
    (held-out tiles) ranks an fp16 variant's layers by the damage half
    precision does to them (int8 variants are explained by their ``int8``).
    """
    onnx_path = Path(onnx_path)
    runtime = int8.runtime if int8 is not None else "onnxruntime"
    path = graph_path(onnx_path, graph, method, runtime)
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
    if graph == "fp16":  # overflow checked on the calibration tiles where given
        explained = _record(path).options.get("sensitivity_tiles") if _record(path) else None
        if force or not is_current(path, source) or (
                calibration is not None and _fp16_check(path) != tiles_digest(calibration)) or (
                explain_on is not None and explained != tiles_digest(explain_on)):
            to_fp16(onnx_path, path, calibration, explain_on)
        return path
    key = int8.options.key(runtime) if int8 is not None else None
    explain = int8 is not None and int8.options.explain
    if calibration is None:
        if not force and is_current(path, source, method=method, key=key, explain=explain):
            return path
        raise InputError(
            "int8 engines need calibration scenes (--calib); give training scenes, "
            "never the evaluation scenes."
        )
    if force or not is_current(path, source, tiles_digest(calibration), method, key, explain):
        quantize_int8(onnx_path, path, calibration, method, int8, note)
    return path


def is_current(
    path: Path,
    source_digest: str,
    calibration_digest: str | None = None,
    method: str | None = None,
    key: dict | None = None,
    explain: bool = False,
) -> bool:
    """True when the variant at ``path`` was made from ``source_digest`` (and this calibration, and
    for int8 the same search ``key``; with ``explain``, one that measured its layers' sensitivity)."""
    record = _record(path)
    if record is None or not record.source_digest or record.source_digest != source_digest:
        return False
    if method is None:
        return True
    # int8: made with this method, from a calibration set it names (and this one when given)
    search = record.options.get("int8") or {}
    return (record.options.get("calibration_method") == method and bool(record.calibration_digest)
            and calibration_digest in (None, record.calibration_digest)
            and (key is None or search.get("key") == key)
            and (not explain or "sensitivity" in search))


def _fp16_check(path: Path) -> str | None:
    """The digest of the tiles an fp16 variant's overflow check ran on (None: the spec's statistics)."""
    record = _record(path)
    return (record.options.get("overflow_check") or {}).get("digest") if record else None


def _record(path: Path) -> BuildRecord | None:
    if not path.is_file():
        return None
    try:
        return ModelSpec.load(path).build
    except SegbenchError:
        return None
