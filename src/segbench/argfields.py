"""Options defined once: dataclass fields that carry their command-line help, and the argparse
options generated from them.

A command's options are one frozen dataclass (:class:`segbench.tiler.options.TilingOptions`,
:class:`segbench.bench.options.BenchOptions`, :class:`segbench.workflow.SegmentOptions`): each field
holds the one default, its type and, in :func:`option`'s metadata, its help text and how the command
line spells it. :func:`add_options` makes the argparse options of a parser from such a class, and
:func:`from_args` makes the object back from the parsed namespace; a study file and the demo fill the
same objects, so the command line, the library and a study cannot disagree on a default.

Why generated argparse rather than tyro, typer or cyclopts: it needs no new dependency, and the
existing parser (its subcommands, groups, mutually exclusive options, exit status 2 for a wrong
command line and help layout) stays as it is; those libraries would each replace the whole parser to
generate one subcommand's options.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

#: the metadata key of a field's command-line spelling
KEY = "segbench.cli"


@dataclass(frozen=True)
class CliOption:
    """How a field appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()  # default: --field-name
    parse: Callable[[str], Any] | None = None  # default: from the field's type
    choices: tuple | None = None
    metavar: str | None = None
    nargs: str | None = None
    group: str | None = None  # an argument group's title
    exclusive: str | None = None  # fields sharing this name exclude each other
    default_help: str | None = None  # what the default means, when its value does not say


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, **cli: Any) -> Any:
    """A dataclass field with its one ``default`` and its command-line spelling (:class:`CliOption`)."""
    return field(default=default, default_factory=default_factory, metadata={KEY: CliOption(help, **cli)})


def cli_fields(cls: type, only: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options (those made by :func:`option`), in order;
    ``only`` keeps those named."""
    keep = None if only is None else set(only)
    return [f for f in dataclasses.fields(cls) if KEY in f.metadata and (keep is None or f.name in keep)]


def add_options(parser: argparse.ArgumentParser, cls: type, only: Iterable[str] | None = None,
                groups: dict[str, Any] | None = None, default_help: dict[str, str] | None = None) -> None:
    """Add the options of ``cls`` (or those named in ``only``) to ``parser``, in argument groups by
    their ``group`` titles (``groups``: those the caller made already, by title); ``default_help``
    overrides what the help says of a default, by field."""
    hints = typing.get_type_hints(cls)
    groups = {None: parser, **(groups or {})}
    exclusive: dict[str, Any] = {}
    for f in cli_fields(cls, only):
        meta: CliOption = f.metadata[KEY]
        where = groups.get(meta.group)
        if where is None:
            where = groups[meta.group] = parser.add_argument_group(meta.group)
        if meta.exclusive is not None:
            if meta.exclusive not in exclusive:
                exclusive[meta.exclusive] = where.add_mutually_exclusive_group()
            where = exclusive[meta.exclusive]
        said = (default_help or {}).get(f.name, meta.default_help)
        where.add_argument(*(meta.flags or (flag(f.name),)), dest=f.name,
                           **_argument(f, meta, hints[f.name], said))


def flag(name: str) -> str:
    """The long option of a field: ``min_area`` -> ``--min-area``."""
    return "--" + name.replace("_", "-")


def from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """An object of ``cls`` from the options parsed into ``args`` (those ``args`` holds), ``given``
    besides."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **given})


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (made by its factory where it has one)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _argument(f: dataclasses.Field, meta: CliOption, hint: Any, said: str | None) -> dict[str, Any]:
    """``add_argument``'s keywords for one field."""
    default = default_of(f)
    help_text = meta.help + _default_text(default, said)
    kind = _plain_type(hint)
    if kind is bool and meta.parse is None:
        if default is not False:
            raise TypeError(f"{f.name}: a boolean option defaults to False (a flag that turns it on).")
        return dict(action="store_true", help=help_text)
    parse = meta.parse or kind
    if parse is None:
        raise TypeError(f"{f.name}: give option(parse=...) for a field of type {hint}.")
    keywords = dict(type=parse, default=default, help=help_text, choices=meta.choices,
                    metavar=meta.metavar, nargs=meta.nargs)
    if f.default is MISSING and f.default_factory is MISSING:
        keywords.update(required=True)
        del keywords["default"]
    return {k: v for k, v in keywords.items() if v is not None}


def _default_text(default: Any, said: str | None) -> str:
    if said is not None:
        return f" (default: {said})"
    if default is None or default is False or default == []:
        return ""
    return f" (default: {default})"


def _plain_type(hint: Any) -> type | None:
    """``int`` for ``int`` or ``int | None``; None for a union of several types (give ``parse``)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    if typing.get_origin(hint) is list:
        (hint,) = typing.get_args(hint)
    return hint if hint in (bool, int, float, str, Path) else None


# -- parsers of command-line values ----------------------------------------------------------------
def positive(text: str) -> int:
    """A positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def positive_or_auto(text: str) -> int | str:
    """A positive integer, or ``auto``."""
    if text == "auto":
        return text
    try:
        return positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text} is neither 'auto' nor a positive integer") from None


def ratio_or_off(text: str) -> float | bool:
    """A ratio in (0, 1], or ``off`` (False)."""
    if text == "off":
        return False
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is neither 'off' nor a ratio in (0, 1]")
    return value


def bounded(low: float, high: float) -> Callable[[str], float]:
    """A number in ``[low, high]``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} must be a number from {low:g} to {high:g}")
        return value

    return parse


#: LoadGen's scenarios as segbench names them (segbench.bench.scenarios runs them; the one list)
SCENARIO_NAMES = ("single-stream", "multi-stream", "server", "offline", "accuracy")


def scenario_names(text: str) -> tuple[str, ...]:
    """Comma-separated scenario names, each one of :data:`SCENARIO_NAMES`."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)} is not a scenario; choose "
                                         f"from {', '.join(SCENARIO_NAMES)}")
    return names


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names, each once."""
    found = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing")
    return found
