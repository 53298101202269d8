"""``segbench study``: every cell of the comparison, resumable, into one ``study.json``.

A study has two kinds of cell per dataset x network:

* the model cell: train the catalogue network on the dataset with the
  study's recipe (or import the mmseg model it names), evaluate the
  checkpoint on the dataset's scored split, export it to ONNX;
* the bench cell: every engine built from that ONNX file and measured on
  the same split with the bench (one row per engine, each in a fresh process).

Each cell records a key: the digest of everything it depends on (the
dataset's description, the network entry, the recipe or the bench options,
and the cells upstream of it). A re-run skips a finished cell whose key is
unchanged; a killed training resumes from its saved state; the bench keeps
the engines it already measured on the same inputs; a failed cell is
recorded with its one-line reason and the study goes on, then retried by the
next run. So changing the study file re-runs only what the change touches.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from segbench.bench.model import Study as StudyReport
from segbench.study.cells import (
    STUDY_FILE,
    StudyProgress,
    bench_cell,
    dataset_info,
    model_cell,
    model_cell_work,
    run_bench_cell,
    write_study_json,
)
from segbench.study.studyfile import Study


def run_study(study: Study, console: Console | None = None, workers: int | None = None,
              scheduler: str | None = None) -> StudyReport:
    """Run (or resume) every cell of ``study``; returns the study report, also in ``out/study.json``.

    With ``workers`` (a LocalCluster of that many processes) or ``scheduler``
    (a running Dask cluster's address) the cells run as tasks there
    (:mod:`segbench.study.cluster`); otherwise one after another here. Either
    way one client at a time holds the study folder (:mod:`segbench.study.lock`).
    """
    from segbench.bench.report import console as make_console
    from segbench.study.lock import study_lock

    console = console or make_console()
    out = Path(study.out)
    _refuse_replacing_inputs(study)
    with study_lock(out):
        if workers or scheduler:
            report = _run_on_cluster(study, console, workers, scheduler)
        else:
            report = _run_here(study, console)
    _render(report, out, console)
    return report


def _run_on_cluster(study: Study, console: Console, workers: int | None,
                    scheduler: str | None) -> StudyReport:
    import dask

    from segbench.cluster.segment import dask_client
    from segbench.extras import require
    from segbench.study.cluster import run_study_on_cluster

    # The bench measures each engine in a child process, which a daemonic worker may not start.
    require("distributed", "--workers / --scheduler (the 'cluster' extra)")  # its defaults, then ours
    with dask.config.set({"distributed.worker.daemon": False}), dask_client(workers, scheduler) as client:
        return run_study_on_cluster(study, client, console)


def _run_here(study: Study, console: Console) -> StudyReport:
    out = Path(study.out)
    datasets = [dataset_info(d) for d in study.datasets]
    cells = [(d, info, n) for d, info in zip(study.datasets, datasets, strict=True)
             for n in study.networks]
    per_cell = 1 + len(study.engines)  # the model, then each engine
    progress = StudyProgress(console, total=len(cells) * per_cell)
    with progress:
        for i, (dataset, info, network) in enumerate(cells):
            model = model_cell(study, dataset, info, network).run(
                lambda f, d=dataset, i=info, n=network: model_cell_work(study, d, i, n, f, progress), console)
            progress.set(i * per_cell + 1)
            if model["status"] == "ok":
                bench_cell(study, dataset, network, model).run(
                    lambda f, d=dataset, i=info, m=model:
                        run_bench_cell(study, d, i, m, f, progress, console), console)
            progress.set((i + 1) * per_cell)
            write_study_json(study, out)
    return write_study_json(study, out)


# -- cells -------------------------------------------------------------------------------------


def _refuse_replacing_inputs(study: Study) -> None:
    """Before any work: the study folder, which the study writes into and clears cells of, can be one
    (:func:`segbench.files.check_output`) and holds no input (the study file, a dataset, an imported
    model's config or checkpoint, pretrained weights)."""
    from segbench.files import check_output
    from segbench.protect import Inputs

    inputs = Inputs()
    for path in (study.path, *(n.config for n in study.networks), *(n.checkpoint for n in study.networks),
                 *study.recipe.pretrained.values()):
        if path is not None:
            inputs.add(path)
    for dataset in study.datasets:
        inputs.add_folder(dataset.path)
    inputs.refuse_folder(study.out)
    check_output(study.out, folder=True, create=True, option="[study] out")


def _render(report: StudyReport, out: Path, console: Console) -> None:
    from segbench.study.outputs import write_study
    from segbench.study.render import render_tables

    for table in render_tables(report):
        console.print(table)
    written = write_study(report, out)
    console.print(f"Study report: {out / STUDY_FILE}; " + ", ".join(str(p) for p in written))
