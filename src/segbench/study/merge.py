"""Studies (and bench reports) from several machines merged into one study, ranked once.

Datasets are matched by name and networks by name; every engine row keeps
the machine it ran on. A bench report joins the dataset whose classes are
its model's, under the network its model's architecture names. Rows of a
merged study keep their machines, so merges of merges lose nothing.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from segbench.bench.report import machine_rows, merged_provenance, read_json_report, report_label
from segbench.errors import InputError
from segbench.study.render import rank_study
from segbench.train.catalogue import CATALOGUE


def is_study(report: dict) -> bool:
    return report.get("kind") == "study"


def load_any_report(path: str | os.PathLike[str]) -> dict:
    """A study report or a bench report from ``path``; one sentence when it is neither."""
    report = read_json_report(path)
    if isinstance(report, dict) and (is_study(report) and "datasets" in report or "engines" in report):
        return report
    raise InputError(f"{path} is neither a segbench study report nor a bench report.")


def merge_studies(reports: Sequence[dict]) -> dict:
    """One study of ``reports`` (studies and bench reports, merged ones too), ranked across all rows.

    Each engine row carries its machine; the reports given are not changed.
    Refuses, in one sentence, a dataset whose class set differs between
    studies and a bench report whose classes are no dataset's.
    """
    studies = [r for r in reports if is_study(r)]
    if not studies:
        raise InputError("Give at least one study report to merge bench reports into.")
    first = studies[0]
    merged = {"kind": "study", **merged_provenance(reports), "study": first.get("study"),
              "rule": first.get("rule"), "ranking": first.get("ranking"), "datasets": []}
    sources: dict[str, dict] = {}  # dataset name -> the study it first came from
    for study in studies:
        for dataset in study.get("datasets", []):
            _add_dataset(merged, study, dataset, sources.setdefault(dataset["name"], study))
    for report in reports:
        if not is_study(report):
            _add_bench(merged, report)
    return rank_study(merged)


def _add_dataset(merged: dict, study: dict, dataset: dict, source: dict) -> None:
    """Add one study's dataset: a new one whole, else its networks into the one of the same name
    (``source``: the study that dataset came from)."""
    into = next((d for d in merged["datasets"] if d["name"] == dataset["name"]), None)
    if into is None:
        into = {**_without(dataset, "networks"), "networks": []}
        merged["datasets"].append(into)
    elif into.get("classes") != dataset.get("classes"):
        raise InputError(
            f"The {report_label(source)} and the {report_label(study)} give dataset "
            f"{dataset['name']!r} different classes ({', '.join(into.get('classes') or [])} against "
            f"{', '.join(dataset.get('classes') or [])}); merge only studies of one class set per dataset.")
    for network in dataset.get("networks", []):
        _add_network(into, network, machine_rows(study, network.get("engines") or []))


def _add_network(dataset: dict, network: dict, rows: list[dict]) -> None:
    """Add a network's rows under the dataset's network of that name (its figures from the one that ran)."""
    into = next((n for n in dataset["networks"] if n["name"] == network["name"]), None)
    if into is None:
        into = {**_without(network, "engines"), "engines": []}
        dataset["networks"].append(into)
    elif into.get("status") != "ok" and network.get("status") == "ok":
        into.update(_without(network, "engines"))
    into["engines"] += [{**r, "network": network["name"]} for r in rows]


def _add_bench(merged: dict, report: dict) -> None:
    """Add a bench report's rows under its model's network, in the dataset of its model's classes."""
    model = report.get("model") or {}
    names, arch = model.get("class_names"), model.get("architecture")
    label = report_label(report)
    if not names or not arch:
        raise InputError(f"The bench {label} does not say which model and classes it measured; "
                         "re-run 'segbench bench' to merge it into a study.")
    matching = [d for d in merged["datasets"] if d["classes"] == names]
    if len(matching) > 1:  # the dataset that already has the network, when that decides it
        matching = [d for d in matching if any(n["name"] == arch for n in d["networks"])] or matching
    if len(matching) != 1:
        which = "no dataset" if not matching else f"{len(matching)} datasets"
        raise InputError(f"The bench {label} measured {arch} on classes {', '.join(names)}, which "
                         f"{which} of the studies has; merge a bench report into a study whose "
                         "dataset has exactly its class set.")
    network = {"name": arch, "family": _family(arch), "source": "bench", "status": "ok", "reason": None,
               "params": model.get("params"), "gflops": model.get("gflops"), "tile": model.get("tile"),
               "train_seconds": None, "accuracy": None}
    _add_network(matching[0], network, machine_rows(report, report["engines"]))


def _family(architecture: str) -> str:
    """The catalogue family of a network name ("other" when it is not in the catalogue)."""
    entry = CATALOGUE.get(architecture)
    return entry.family if entry else "other"


def _without(entry: dict, key: str) -> dict:
    """A deep copy of ``entry`` without ``key``."""
    return copy.deepcopy({k: v for k, v in entry.items() if k != key})


def show_reports(paths: Sequence[Path], out: Path | None = None, console: Console | None = None) -> dict:
    """``segbench report``: render one report or merge several; studies get the study's renderings.

    Bench reports alone keep the bench's own rendering and merge.
    """
    from segbench.bench.report import console as make_console
    from segbench.bench.report import write_json
    from segbench.study.render import render_tables, write_study

    reports = [load_any_report(p) for p in paths]
    if not any(is_study(r) for r in reports):
        from segbench.bench.run import show_reports as show_bench_reports

        return show_bench_reports(list(paths), out, console)
    console = console or make_console()
    report = merge_studies(reports) if len(reports) > 1 else rank_study(reports[0])
    for table in render_tables(report):
        console.print(table)
    if out is not None:
        written = write_study(report, out)
        if len(reports) > 1:
            written.insert(0, write_json(report, Path(out) / "merged.json"))
        console.print(f"Written: {', '.join(str(p) for p in written)}")
    return report
