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
mistake is reported in one sentence naming the key. The tables' keys, types
and ranges are checked by pydantic (unknown keys refused); ``[bench]``'s model
is made from :class:`~segbench.bench.options.BenchOptions`' fields (their
types, defaults, choices and the ranges their command-line parsers take), so
a study and ``segbench bench`` accept the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
)

from segbench.argfields import KEY, default_of
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
    """A :class:`Study` from parsed TOML; relative paths resolve against ``base``.

    The tables' keys, types and ranges are checked by pydantic (:class:`_StudyFile`; ``[bench]``'s
    model is made from :class:`BenchOptions`' fields); what needs the catalogue, the engine registry
    or the whole file (unique names, a checkpoint without its config) is checked here.
    """
    from segbench.engines.registry import get_kind
    from segbench.train.catalogue import get_entry

    file = _validate(_StudyFile, {"study": {}, **data})
    name = file.study.name
    out = _path(base, file.study.out or f"{name}-study")
    datasets = [DatasetEntry(d.name, _path(base, d.path), d.isprs) for d in file.datasets]
    if not datasets:
        raise InputError("The study names no dataset; add a [[datasets]] table with name and path.")
    _unique([d.name for d in datasets], "dataset")
    networks = [_network(n, i, base, get_entry) for i, n in enumerate(file.networks)]
    if not networks:
        raise InputError("The study names no network; add networks = [\"segformer-b0\", ...].")
    _unique([n.name for n in networks], "network")
    engines = list(file.engines)
    if not engines:
        raise InputError("The study names no engine; add engines = [\"torch-fp32\", \"ort-fp32\", ...].")
    for e in engines:
        try:
            get_kind(e)
        except UsageError as exc:  # in a file, not on the command line: the input is wrong
            raise InputError(f"The study file names an unknown engine: {exc}") from None
    _unique(engines, "engine")
    recipe = RecipeOptions(**{**file.recipe.model_dump(), "pretrained": {
        k: _path(base, v) for k, v in file.recipe.pretrained.items()}})
    bench = bench_options(data.get("bench") or {})
    if bench.reference not in engines:
        engines = [bench.reference, *engines]  # every network's own reference is measured first
    return Study(name, out, tuple(datasets), tuple(networks), tuple(engines), recipe, bench, path)


def _network(n, i: int, base: Path, get_entry) -> NetworkEntry:
    """A catalogue network (its name checked against the catalogue), or an mmseg model imported."""
    if isinstance(n, str):
        get_entry(n)  # one sentence listing the catalogue when unknown
        return NetworkEntry(n)
    if n.checkpoint and not n.config:
        raise InputError(f"networks #{i + 1} ({n.name}) names a checkpoint but no config.")
    if not n.checkpoint:
        get_entry(n.config or n.name)
    return NetworkEntry(n.name, _path(base, n.config) if n.config else None,
                        _path(base, n.checkpoint) if n.checkpoint else None)


def bench_options(table: dict) -> BenchOptions:
    """``[bench]``: :class:`BenchOptions` from a study's table, each key checked against its field's
    type, range and choices; a key not given keeps the field's one default (or a study's,
    :data:`STUDY_DEFAULTS`)."""
    checked = _validate(_bench_table(), {"bench": table}).bench
    try:
        return BenchOptions(**dict(checked))
    except UsageError as exc:  # in a file, not on the command line: the input is wrong
        raise InputError(f"[bench] {exc}") from None


# -- the file's schema: keys, types and ranges, checked by pydantic --------------------------------
Name = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0)]


def _by_type(**branches: Any) -> Any:
    """A union whose branch is chosen by the value's own kind (``number``, ``str``, ``bool``,
    ``dict``; else the first branch), so that a wrong value hears its branch's error alone."""
    def pick(value: Any) -> str:
        kind = ("bool" if isinstance(value, bool) else "str" if isinstance(value, str)
                else "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "number")
        return "~" + (kind if kind in branches else next(iter(branches)))

    members = tuple(Annotated[t, Tag("~" + kind)] for kind, t in branches.items())
    return Annotated[Union[members], Discriminator(pick)]  # noqa: UP007 (a tuple of members)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Head(_Table):
    name: Name
    out: Name | None = None


class _Dataset(_Table):
    name: Name
    path: Name
    isprs: bool = False


class _Network(_Table):
    name: Name
    config: Name | None = None
    checkpoint: Name | None = None


class _Recipe(_Table):  # the defaults are RecipeOptions'
    iters: Count = RecipeOptions.iters
    crop: Count = RecipeOptions.crop
    batch: Count = RecipeOptions.batch
    lr: _by_type(number=Positive, dict=dict[str, Positive]) | None = RecipeOptions.lr
    device: Name = RecipeOptions.device
    gpus: Count = RecipeOptions.gpus
    threads: Count | None = RecipeOptions.threads
    pretrained: dict[str, Name] = Field(default_factory=dict)


_NetworkItem = _by_type(str=Name, dict=_Network)


class _StudyFile(_Table):
    study: _Head
    datasets: list[_Dataset] = Field(default_factory=list)
    networks: list[_NetworkItem] = Field(default_factory=list)
    engines: list[Name] = Field(default_factory=list)
    recipe: _Recipe = Field(default_factory=_Recipe)
    bench: dict = Field(default_factory=dict)  # checked by _bench_table()


@functools.cache
def _bench_table() -> type[BaseModel]:
    """``{"bench": table}``'s model, made from :class:`BenchOptions`' fields: their types, ranges and
    choices; their defaults (a study's own, :data:`STUDY_DEFAULTS`, where it has one)."""
    hints = typing.get_type_hints(BenchOptions)
    fields = {f.name: (_option_type(f, hints[f.name]), STUDY_DEFAULTS.get(f.name, default_of(f)))
              for f in dataclasses.fields(BenchOptions)}
    table = create_model("bench", __base__=_Table, **fields)
    return create_model("BenchFile", __base__=_Table, bench=(table, ...))


def _option_type(f: dataclasses.Field, hint: Any) -> Any:
    """An option's type with its range and choices: counts of at least 1 (an overlap of 0),
    positive numbers (or the range its command-line parser takes), non-empty names, a string beside a
    count is ``auto`` (batch), a boolean beside a number is ``false`` (int8_target), a tuple an array
    its parser takes (scenarios)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    kinds = set(args) - {type(None)}
    meta = f.metadata.get(KEY)
    parse = meta.parse if meta is not None else None
    branches: dict[str, Any] = {}
    if int in kinds:
        branches["number"] = Annotated[int, Field(ge=0 if f.name == "overlap" else 1)]
    elif float in kinds:
        branches["number"] = Annotated[float, AfterValidator(_parsed(parse))] if parse else Positive
    if any(typing.get_origin(k) is tuple for k in kinds):
        branches["list"] = Annotated[list[str], AfterValidator(_parsed(parse, ","))]
    if meta is not None and meta.choices:
        branches["str"] = Literal[tuple(meta.choices)]
    elif str in kinds:
        branches["str"] = Literal[AUTO] if int in kinds else Name
    if bool in kinds:
        branches["bool"] = bool if kinds == {bool} else Literal[False]
    chosen = _by_type(**branches) if len(branches) > 1 else next(iter(branches.values()))
    return chosen | None if type(None) in args else chosen


def _parsed(parse, join: str | None = None):
    """A value checked by the option's command-line parser (its ranges and names written once)."""
    def check(value: Any) -> Any:
        try:
            return parse(join.join(value) if join is not None else str(value))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None

    return check


def _validate(model: type[BaseModel], data: dict) -> Any:
    """``data`` checked by ``model``, or the first mistake in one sentence naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(_sentence(exc.errors(), model)) from None


def _sentence(errors: list, model: type[BaseModel]) -> str:
    first = errors[0]
    where, key, table = _where(first["loc"], model)
    if first["type"] == "extra_forbidden":
        unknown = sorted(str(_where(e["loc"], model)[1]) for e in errors
                         if e["type"] == "extra_forbidden" and _where(e["loc"], model)[0] == where)
        return f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(table.model_fields)}."
    if first["type"] == "missing":
        return f"{where} needs {key}."
    if key is None and first["type"] in ("model_type", "dict_type"):
        return f"{where} must be a table."
    if first["type"] == "value_error":  # an option's parser: its own sentence
        return f"{where} {key}: {first['ctx']['error']}."
    subject, msg = (where if key is None else f"{where} {key}"), first["msg"]
    said = (msg.replace("Input should be", "should be", 1) if msg.startswith("Input should be")
            else f": {msg[:1].lower()}{msg[1:]}")
    return f"{subject}{'' if said.startswith(':') else ' '}{said}; got {first['input']!r}."


def _where(loc: tuple, model: type[BaseModel]) -> tuple[str, Any, Any]:
    """Where an error is, as the file says it (``[recipe]``, ``[[datasets]] #2``), the key there (None
    for the table itself) and the table's model."""
    loc = [p for p in loc if not (isinstance(p, str) and p.startswith("~"))]  # _by_type's branches
    top = loc[0] if loc else None
    field = model.model_fields.get(top) if top is not None else None
    if len(loc) > 1 and isinstance(loc[1], int):  # an array's item
        label = "[[datasets]]" if top == "datasets" else str(top)
        return f"{label} #{loc[1] + 1}", (loc[2] if len(loc) > 2 else None), _ITEMS.get(top)
    table = field.annotation if field is not None else None
    if table is dict or (isinstance(table, type) and issubclass(table, BaseModel)):
        return f"[{top}]", (loc[1] if len(loc) > 1 else None), table
    return "the study file", top, model


#: the tables of the file's arrays
_ITEMS = {"datasets": _Dataset, "networks": _Network}


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
