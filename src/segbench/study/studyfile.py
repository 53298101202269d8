"""A study file (TOML): which datasets, networks and engines to compare, and how.

::

    [study]
    name = "seed"
    out = "studies/seed-out"          # relative to the study file

    [[datasets]]
    name = "potsdam"
    path = "data/potsdam"              # a segbench dataset folder (segbench data prepare)
    isprs = true                       # mF1 and mIoU without clutter, OA over all

    networks = ["pspnet-r18", { name = "my-psp", config = "psp.py", checkpoint = "iter_80000.pth" }]
    engines = ["torch-fp32", "ort-fp32", "openvino-int8"]

    [recipe]                           # defaults: the seed recipe
    iters = 80000
    crop = 512
    pretrained = { "segformer-b0" = "mit_b0.pth" }

    [bench]                            # segbench.bench.options.BenchOptions: its fields, types
    overlap = 128                      # and defaults (batch = "auto", measured per engine); maps
    blend = "cosine"                   # are on in a study
    reference = "torch-fp32"

Top-level keys (``networks``, ``engines``) must come before the first table,
as TOML requires. Relative paths are relative to the study file. Every
mistake is reported in one sentence naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tomllib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segbench.argfields import KEY
from segbench.bench.options import STUDY_DEFAULTS, BenchOptions
from segbench.errors import InputError, UsageError
from segbench.tiler.options import AUTO

SPLITS_TO_SCORE = ("test", "val")  # the first split a dataset has scenes in is scored


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    path: Path
    isprs: bool = False


@dataclass(frozen=True)
class NetworkEntry:
    """A catalogue network trained by the study, or an mmseg model imported (not trained)."""

    name: str
    config: Path | None = None
    checkpoint: Path | None = None

    @property
    def imported(self) -> bool:
        return self.checkpoint is not None


@dataclass(frozen=True)
class RecipeOptions:
    iters: int = 80_000
    crop: int = 512
    batch: int = 4
    lr: float | dict[str, float] | None = None  # one rate, or per network; None: each one's own
    device: str = "cpu"
    gpus: int = 1  # one training on this many GPUs (processes), batch images each
    threads: int | None = None  # torch's CPU threads per training (None: the machine's, or a Dask
    # worker's share); a CPU training's weights depend on it, so set it to compare layouts
    pretrained: dict[str, Path] = field(default_factory=dict)

    def lr_for(self, network: str) -> float | None:
        return self.lr.get(network) if isinstance(self.lr, dict) else self.lr


@dataclass(frozen=True)
class Study:
    name: str
    out: Path
    datasets: tuple[DatasetEntry, ...]
    networks: tuple[NetworkEntry, ...]
    engines: tuple[str, ...]
    recipe: RecipeOptions
    bench: BenchOptions
    path: Path | None = None

    def to_dict(self) -> dict:
        return _plain(asdict(self))


def digest(value: Any) -> str:
    """A short, stable digest of plain data (the part of a study a cell depends on)."""
    text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read and check a study file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Study file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"Study file {path} is not valid TOML ({exc}).") from exc
    return parse_study(data, path.parent.resolve(), path)


def parse_study(data: dict, base: Path, path: Path | None = None) -> Study:
    """A :class:`Study` from parsed TOML; relative paths resolve against ``base``."""
    from segbench.engines.registry import get_kind
    from segbench.train.catalogue import get_entry

    _known(data, {"study", "datasets", "networks", "engines", "recipe", "bench"}, "the study file")
    head = _table(data, "study")
    _known(head, {"name", "out"}, "[study]")
    name = _str(head, "name", "[study]", required=True)
    out = _path(base, _str(head, "out", "[study]") or f"{name}-study")

    datasets = []
    for i, d in enumerate(data.get("datasets") or []):
        where = f"[[datasets]] #{i + 1}"
        if not isinstance(d, dict):
            raise InputError(f"{where} must be a table with name and path.")
        _known(d, {"name", "path", "isprs"}, where)
        datasets.append(DatasetEntry(_str(d, "name", where, required=True),
                                     _path(base, _str(d, "path", where, required=True)),
                                     bool(d.get("isprs", False))))
    if not datasets:
        raise InputError("The study names no dataset; add a [[datasets]] table with name and path.")
    _unique([d.name for d in datasets], "dataset")

    networks = []
    for i, n in enumerate(data.get("networks") or []):
        if isinstance(n, str):
            get_entry(n)  # one sentence listing the catalogue when unknown
            networks.append(NetworkEntry(n))
            continue
        where = f"networks #{i + 1}"
        if not isinstance(n, dict):
            raise InputError(f"{where} must be a catalogue name or a table {{ name, config, checkpoint }}.")
        _known(n, {"name", "config", "checkpoint"}, where)
        name_i = _str(n, "name", where, required=True)
        config = _str(n, "config", where)
        checkpoint = _str(n, "checkpoint", where)
        if checkpoint and not config:
            raise InputError(f"{where} ({name_i}) names a checkpoint but no config.")
        if not checkpoint:
            get_entry(config or name_i)
        networks.append(NetworkEntry(name_i, _path(base, config) if config else None,
                                     _path(base, checkpoint) if checkpoint else None))
    if not networks:
        raise InputError("The study names no network; add networks = [\"segformer-b0\", ...].")
    _unique([n.name for n in networks], "network")

    engines = data.get("engines") or []
    if not engines or not all(isinstance(e, str) for e in engines):
        raise InputError("The study names no engine; add engines = [\"torch-fp32\", \"ort-fp32\", ...].")
    for e in engines:
        try:
            get_kind(e)
        except UsageError as exc:  # in a file, not on the command line: the input is wrong
            raise InputError(f"The study file names an unknown engine: {exc}") from None
    _unique(engines, "engine")

    recipe = _recipe(_table(data, "recipe"), base)
    bench = _bench(_table(data, "bench"))
    if bench.reference not in engines:
        engines = [bench.reference, *engines]  # every network's own reference is measured first
    return Study(name, out, tuple(datasets), tuple(networks), tuple(engines), recipe, bench, path)


def _recipe(t: dict, base: Path) -> RecipeOptions:
    _known(t, {"iters", "crop", "batch", "lr", "device", "gpus", "threads", "pretrained"}, "[recipe]")
    pretrained = t.get("pretrained") or {}
    if not isinstance(pretrained, dict):
        raise InputError("[recipe] pretrained must be a table: network name -> local file.")
    return RecipeOptions(
        iters=_int(t, "iters", "[recipe]", RecipeOptions.iters),
        crop=_int(t, "crop", "[recipe]", RecipeOptions.crop),
        batch=_int(t, "batch", "[recipe]", RecipeOptions.batch),
        lr=_lr(t),
        device=str(t.get("device", "cpu")),
        gpus=_int(t, "gpus", "[recipe]", RecipeOptions.gpus),
        threads=_int(t, "threads", "[recipe]", 1) if "threads" in t else None,
        pretrained={str(k): _path(base, str(v)) for k, v in pretrained.items()},
    )


def _lr(t: dict) -> float | dict[str, float] | None:
    if isinstance(t.get("lr"), dict):
        return {str(k): _float(t["lr"], k, "[recipe] lr") for k in t["lr"]}
    return _float(t, "lr", "[recipe]")


def _bench(t: dict) -> BenchOptions:
    """``[bench]``: :class:`BenchOptions`, each key checked against its field's type and choices;
    a key not given keeps the field's one default (or a study's, :data:`STUDY_DEFAULTS`)."""
    _known(t, BenchOptions.names(), "[bench]")
    hints = typing.get_type_hints(BenchOptions)
    options = {f.name: f for f in dataclasses.fields(BenchOptions)}
    given = {k: _option_value(options[k], hints[k], v, "[bench]") for k, v in t.items()}
    values = {**STUDY_DEFAULTS, **given}
    try:
        return BenchOptions(**values)
    except UsageError as exc:  # in a file, not on the command line: the input is wrong
        raise InputError(f"[bench] {exc}") from None


def _option_value(f: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
    """A study file's value for option ``f`` (of type ``hint``), or one sentence naming the key."""
    kinds = set(typing.get_args(hint)) - {type(None)} or {hint}
    parse = f.metadata[KEY].parse if KEY in f.metadata else None
    if isinstance(value, list) and parse is not None:  # scenarios = ["server", "offline"]
        try:
            return parse(",".join(map(str, value)))
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{where} {f.name}: {exc}.") from None
    if str in kinds and int in kinds and value == AUTO:  # batch = "auto"
        return value
    if bool in kinds and float in kinds and value is False:  # int8_target = false: plain int8
        return value
    if kinds == {bool}:
        if not isinstance(value, bool):
            raise InputError(f"{where} {f.name} must be true or false; got {value!r}.")
        return value
    if int in kinds:
        either = " or 'auto'" if str in kinds else ""
        minimum = 0 if f.name == "overlap" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InputError(f"{where} {f.name} must be an integer of at least {minimum}{either}; "
                             f"got {value!r}.")
        return value
    if float in kinds:
        return _float({f.name: value}, f.name, where)
    value = _str({f.name: value}, f.name, where, required=True)
    choices = f.metadata[KEY].choices if KEY in f.metadata else None
    if choices and value not in choices:
        raise InputError(f"{where} {f.name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def _table(data: dict, key: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(f"[{key}] must be a table.")
    return value


def _known(table: dict, names: set[str], where: str) -> None:
    unknown = sorted(set(table) - names)
    if unknown:
        raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(names))}.")


def _str(table: dict, key: str, where: str, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None and required:
        raise InputError(f"{where} needs {key}.")
    if value is not None and (not isinstance(value, str) or not value):
        raise InputError(f"{where} {key} must be a non-empty string.")
    return value


def _int(table: dict, key: str, where: str, default: int, minimum: int = 1) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{where} {key} must be an integer of at least {minimum}; got {value!r}.")
    return value


def _float(table: dict, key: str, where: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{where} {key} must be a positive number; got {value!r}.")
    return float(value)


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _unique(names: list[str], what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise InputError(f"The study names {what} {n!r} twice.")
        seen.add(n)


def _plain(value: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
