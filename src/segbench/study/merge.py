"""Studies (and bench reports) from several machines merged into one study, ranked once.

Datasets are matched by name and networks by name; every engine row keeps
the machine it ran on. A bench report joins the dataset whose classes are
its model's, under the network its model's architecture names. Rows of a
merged study keep their machines, so merges of merges lose nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from segbench.bench.model import Dataset, EngineRow, Network, Report, Study, read
from segbench.bench.report import (
    REPORT_SUFFIXES,
    machine_rows,
    merge_reports,
    merged_provenance,
    write_all,
    write_json,
)
from segbench.bench.report import console as make_console
from segbench.bench.tables import render_table
from segbench.errors import InputError
from segbench.study.outputs import write_study
from segbench.study.render import rank_study, render_tables
from segbench.train.catalogue import CATALOGUE


def merge_studies(reports: Sequence[Report | Study]) -> Study:
    """One study of ``reports`` (studies and bench reports, merged ones too), ranked across all rows.

    Each engine row carries its machine; the reports given are not changed.
    Refuses, in one sentence, a dataset whose class set differs between
    studies and a bench report whose classes are no dataset's.
    """
    studies = [r for r in reports if isinstance(r, Study)]
    if not studies:
        raise InputError("Give at least one study report to merge bench reports into.")
    first = studies[0]
    merged = Study(**merged_provenance(reports), study=first.study, rule=first.rule, ranking=first.ranking)
    sources: dict[str, Study] = {}  # dataset name -> the study it first came from
    for study in studies:
        for dataset in study.datasets:
            _add_dataset(merged, study, dataset, sources.setdefault(dataset.name, study))
    for report in reports:
        if isinstance(report, Report):
            _add_bench(merged, report)
    return rank_study(merged)


def _add_dataset(merged: Study, study: Study, dataset: Dataset, source: Study) -> None:
    """Add one study's dataset: a new one whole, else its networks into the one of the same name
    (``source``: the study that dataset came from)."""
    into = next((d for d in merged.datasets if d.name == dataset.name), None)
    if into is None:
        into = dataset.model_copy(deep=True, update={"networks": []})
        merged.datasets.append(into)
    elif into.classes != dataset.classes:
        raise InputError(
            f"The {source.label()} and the {study.label()} give dataset "
            f"{dataset.name!r} different classes ({', '.join(into.classes)} against "
            f"{', '.join(dataset.classes)}); merge only studies of one class set per dataset.")
    for network in dataset.networks:
        _add_network(into, network, machine_rows(study, network.engines))


def _add_network(dataset: Dataset, network: Network, rows: list[EngineRow]) -> None:
    """Add a network's rows under the dataset's network of that name (its figures from the one that ran)."""
    into = next((n for n in dataset.networks if n.name == network.name), None)
    if into is None:
        into = network.model_copy(deep=True, update={"engines": []})
        dataset.networks.append(into)
    elif not into.ok and network.ok:
        engines = into.engines
        into = network.model_copy(deep=True, update={"engines": engines})
        dataset.networks[[n.name for n in dataset.networks].index(network.name)] = into
    into.engines += [r.model_copy(update={"network": network.name}) for r in rows]


def _add_bench(merged: Study, report: Report) -> None:
    """Add a bench report's rows under its model's network, in the dataset of its model's classes."""
    model = report.model
    if model is None or not model.class_names or not model.architecture:
        raise InputError(f"The bench {report.label()} does not say which model and classes it measured; "
                         "re-run 'segbench bench' to merge it into a study.")
    names, arch = model.class_names, model.architecture
    matching = [d for d in merged.datasets if d.classes == names]
    if len(matching) > 1:  # the dataset that already has the network, when that decides it
        matching = [d for d in matching if any(n.name == arch for n in d.networks)] or matching
    if len(matching) != 1:
        which = "no dataset" if not matching else f"{len(matching)} datasets"
        raise InputError(f"The bench {report.label()} measured {arch} on classes {', '.join(names)}, "
                         f"which {which} of the studies has; merge a bench report into a study whose "
                         "dataset has exactly its class set.")
    network = Network(name=arch, family=_family(arch), source="bench", params=model.params,
                      gflops=model.gflops, tile=model.tile)
    _add_network(matching[0], network, machine_rows(report, report.engines))


def _family(architecture: str) -> str:
    """The catalogue family of a network name ("other" when it is not in the catalogue)."""
    entry = CATALOGUE.get(architecture)
    return entry.family if entry else "other"


def show_reports(paths: Sequence[Path], out: Path | None = None, console: Console | None = None
                 ) -> Report | Study:
    """``segbench report``: render one report or merge several; studies get the study's renderings.

    Bench reports alone keep the bench's own rendering and merge.
    """
    console = console or make_console()
    if out is not None:
        _check_out(paths, Path(out))
    reports = [read(p) for p in paths]
    if not any(isinstance(r, Study) for r in reports):
        return _show_bench(reports, len(paths), out, console)
    report = merge_studies(reports) if len(reports) > 1 else rank_study(reports[0])
    for table in render_tables(report):
        console.print(table)
    if out is not None:
        written = write_study(report, out)
        if len(reports) > 1:
            written.insert(0, write_json(report, Path(out) / "merged.json"))
        console.print(f"Written: {', '.join(str(p) for p in written)}")
    return report


#: what ``report -o`` may write: a bench report's renderings (one report, or merged) and a study's
REPORT_NAMES = (*(f"{stem}{suffix}" for stem in ("report", "merged") for suffix in REPORT_SUFFIXES),
                "study.md", "study.tex", "study.html", "study-networks.csv", "study-engines.csv")


def _check_out(paths: Sequence[Path], out: Path) -> None:
    """Before any work: ``out`` can be the folder of the renderings, none of which replaces an input."""
    from segbench.files import check_output
    from segbench.protect import Inputs

    inputs = Inputs()
    for path in paths:
        inputs.add(path)
    inputs.refuse([out, *(out / name for name in REPORT_NAMES)])
    check_output(out, folder=True, create=True)
    for name in REPORT_NAMES:
        check_output(out / name, create=True)


def _show_bench(reports: list[Report], count: int, out: Path | None, console: Console) -> Report:
    """Render one bench report, or merge several (e.g. a GPU box and a CPU box) into one table."""
    report = merge_reports(reports)
    console.print(render_table(report))
    if out is not None:
        written = write_all(report, out, stem="merged" if count > 1 else "report")
        console.print(f"Written: {', '.join(str(p) for p in written)}")
    return report
