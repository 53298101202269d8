"""The bench report (:class:`segbench.bench.model.Report`): made, ranked, merged, written and rendered.

A report holds the machine (CPU, cores, memory, GPU, library versions), the
configuration, the model, one row per engine and the ranking rule. Reports of
one model from several machines merge into one, ranked once, each row
labelled with its machine, so a GPU box and a CPU box compare side by side.
``report.json`` is the source of truth; the table, Markdown, CSV, plot and
page (:mod:`segbench.bench.tables`, :mod:`~segbench.bench.figures`,
:mod:`~segbench.bench.page`) render it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import psutil

from segbench import __version__
from segbench.bench.figures import plot
from segbench.bench.model import FORMAT, EngineRow, Gpu, Machine, Provenance, Report, Study, read, to_json
from segbench.bench.page import bench_page
from segbench.bench.rank import RankRule, rank
from segbench.bench.tables import to_csv, to_markdown
from segbench.errors import InputError
from segbench.files import write_text
from segbench.machine import cpu_model, nvidia_driver

LIBRARIES = ("numpy", "onnxruntime", "openvino", "torch", "tensorrt", "tensorrt_rtx_bindings",
             "rasterio", "mmseg")


def console():
    """A rich console; wide enough for the table when output is not a terminal."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def machine_info() -> Machine:
    """What ran the bench: CPU model, cores, memory, GPU and driver, library versions."""
    libraries = {}
    for name in LIBRARIES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001  (absent or broken: not part of this machine's stack)
            continue
        libraries[name] = str(getattr(module, "__version__", "?"))
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = Gpu(name=torch.cuda.get_device_name(), cuda=torch.version.cuda, driver=nvidia_driver(),
                      memory_bytes=torch.cuda.get_device_properties(0).total_memory)
    except ImportError:
        pass
    return Machine(hostname=platform.node(), cpu=cpu_model(), cores=os.cpu_count(),
                   memory_bytes=psutil.virtual_memory().total, platform=platform.platform(),
                   python=platform.python_version(), gpu=gpu, libraries=libraries)


def provenance() -> dict:
    """What every new report starts with: the format, segbench's version, the time, this machine."""
    return {"format": FORMAT, "segbench": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_info()}


def write_json(report: Report | Study, path: str | os.PathLike[str]) -> Path:
    """Write the report atomically (an interrupted bench keeps the last complete report)."""
    return write_text(path, to_json(report))


def load_report(path: str | os.PathLike[str]) -> Report:
    """The bench report in ``path``; one sentence when it is not one."""
    report = read(path)
    if not isinstance(report, Report):
        raise InputError(f"{path} is not a segbench bench report.")
    return report


# What makes two reports comparable: the same model, classes, bands and tile.
MODEL_KEYS = ("architecture", "checkpoint_digest", "classes", "class_names", "bands", "tile")


def rank_report(report: Report) -> Report:
    """Rank the report's rows (in place) by the report's own rule; returns the report."""
    rule = RankRule.from_report(report)
    rank(report.engines, rule)
    report.ranking, report.rule = rule.to_model(), rule.text()
    return report


def merge_reports(reports: Sequence[Report]) -> Report:
    """One report, ranked once, whose rows carry the machine and model they ran on.

    Reports (merged ones too) must be of one model and class set. The merged
    rows are ranked by the first report's rule, on one rank order and one
    Pareto front; the reports given are not changed.
    """
    if len(reports) == 1:
        return reports[0]
    for other in reports[1:]:
        _check_comparable(reports[0], other)
    first = reports[0]
    merged = Report(**merged_provenance(reports), model=first.model, config=first.config,
                    ranking=RankRule.from_report(first).to_model(),
                    engines=[row for r in reports for row in _labelled_rows(r)])
    return rank_report(merged)


def merged_provenance(reports: Sequence[Provenance]) -> dict:
    """What a merge of ``reports`` (merged ones too) starts with: version, time, machines, sources."""
    return {
        "format": FORMAT,
        "segbench": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": None,
        "machines": [m for r in reports for m in r.all_machines],
        "merged_from": [c for r in reports for c in r.merged_from or [r.created]],
    }


def machine_rows(report: Provenance, rows: list[EngineRow]) -> list[EngineRow]:
    """Copies of ``rows``, each with ``report``'s machine (rows of a merged report keep theirs)."""
    machine = report.machine.label if report.machine else None
    return [r.model_copy(deep=True, update={"machine": r.machine or machine}) for r in rows]


def _labelled_rows(report: Report) -> list[EngineRow]:
    """Copies of the report's rows, each with its machine and model (rows of a merged report keep theirs)."""
    model = report.model.architecture if report.model else None
    return [r.model_copy(update={"model": r.model or model}) for r in machine_rows(report, report.engines)]


def _check_comparable(a: Report, b: Report) -> None:
    """Refuse, in one sentence, to merge reports of different models or class sets."""
    if not a.model or not b.model:
        raise InputError(f"The {(a if not a.model else b).label()} does not say which model it "
                         "measured; re-run 'segbench bench' to merge it.")
    for key in MODEL_KEYS:
        va, vb = getattr(a.model, key), getattr(b.model, key)
        if va is not None and vb is not None and va != vb:
            raise InputError(
                f"The {a.label()} and the {b.label()} are of different models "
                f"({key} {va!r} against {vb!r}); merge only reports of one model and class set."
            )


#: the files :func:`write_all` writes: the JSON report and its renderings
REPORT_SUFFIXES = (".json", ".md", ".csv", ".png", ".html")


def write_all(report: Report, out_dir: str | os.PathLike[str], stem: str = "report") -> list[Path]:
    """The JSON report and its Markdown, CSV, PNG and HTML renderings in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_json(report, out_dir / f"{stem}.json")]
    for suffix, text in ((".md", to_markdown(report)), (".csv", to_csv(report))):
        paths.append(write_text(out_dir / f"{stem}{suffix}", text))
    paths.append(plot(report, out_dir / f"{stem}.png"))
    paths.append(write_text(out_dir / f"{stem}.html", bench_page(report)))
    return paths
