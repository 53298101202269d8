"""A study's cells as tasks on dask.distributed: one task per model cell, one per bench engine.

A model cell (train or import, evaluate, export) runs as one task on a worker
and writes its folder and ``cell.json`` there, exactly as the sequential run
(:func:`segbench.study.run.run_study`) does. When it is done, each engine of
its bench is one task (the reference engine first, the others once its labels
exist); the client gathers their rows into the bench's ``report.json`` and the
cell's record, and rewrites ``study.json`` after every cell. Cells whose
inputs are ready run at once; the others wait for them.

So the study folder must be shared by the client and every worker at one path
(checked first), and the cells' keys, records and tables are the sequential
run's. A worker that dies mid-training has its task re-run elsewhere by Dask,
and the training resumes from its last saved state; Ctrl-C of the client
leaves every finished cell in place for the next run.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from segbench.bench.memory import describe
from segbench.bench.model import EngineRow
from segbench.errors import InputError
from segbench.signals import raise_if_pending
from segbench.study.cells import (
    Cell,
    StudyProgress,
    bench_cell,
    bench_config,
    dataset_info,
    model_cell,
    model_cell_work,
    needs_gpu,
    training_progress,
    write_study_json,
)
from segbench.study.studyfile import DatasetEntry, NetworkEntry, Study

#: how often the progress view is refreshed while tasks run (seconds)
REFRESH_S = 2.0
#: how often the estimate of the time left is worked out again (seconds)
ESTIMATE_S = 30.0
GPU = {"GPU": 1}
CELL_LOCK = ".segbench-model.lock"


def run_study_on_cluster(study: Study, client, console: Console) -> dict:
    """Every cell of ``study`` on the workers of ``client``; returns the study report."""
    run = _ClusterStudy(study, client, console)
    run.check()
    return run.run()


def training_resources(study: Study) -> dict[str, int] | None:
    """What a model cell asks its worker for: ``GPU=N`` for a training on N CUDA devices."""
    return {"GPU": study.recipe.gpus} if needs_gpu(study) else None


# -- on the workers ----------------------------------------------------------------------------

def model_cell_task(study: Study, dataset_name: str, network_name: str,
                    threads_by_host: dict[str, int]) -> dict:
    """One model cell on this worker (kept if it finished earlier with the same key); its record.
    Its training takes this worker's share of the host's cores (``threads_by_host``), unless the
    recipe names its threads."""
    from segbench.study.lock import HEARTBEAT_S, STALE_S, study_lock

    dataset, network = _entries(study, dataset_name, network_name)
    info = dataset_info(dataset)
    cell = model_cell(study, dataset, info, network)
    # One training per cell folder: a task of an earlier client may still run it (Dask cannot stop
    # a running task); the lock sits beside the folder, which a changed cell empties.
    with study_lock(cell.folder.parent, name=CELL_LOCK, wait_s=STALE_S + 2 * HEARTBEAT_S):
        threads = threads_by_host.get(socket.gethostname())
        return cell.run(lambda folder: model_cell_work(study, dataset, info, network, folder, _Silent(),
                                                       threads), Console(quiet=True))


def check_worker(folder: str, token: str) -> dict:
    """What a worker must offer a study: the client's study folder at the same path, writable, and
    a process that may start children (the bench measures each engine in a fresh process)."""
    mark = Path(folder) / f".segbench-shared-{token}"
    try:
        sees = mark.read_text() == token
    except OSError:
        sees = False
    return {"sees": sees, "writable": os.access(folder, os.W_OK | os.X_OK),
            "daemon": multiprocessing.current_process().daemon}


class _Silent:
    """The progress a model cell reports, on a worker: nobody watches there."""

    def step(self, text: str) -> None:
        pass


def _entries(study: Study, dataset_name: str, network_name: str) -> tuple[DatasetEntry, NetworkEntry]:
    dataset = next(d for d in study.datasets if d.name == dataset_name)
    network = next(n for n in study.networks if n.name == network_name)
    return dataset, network


# -- on the client -----------------------------------------------------------------------------

@dataclass
class _Task:
    """A submitted task: what it is (for the progress view) and what to do when it lands."""

    label: str
    on_done: object  # callable(future)
    folder: Path | None = None  # a model cell's folder (its training's iteration is read from there)


@dataclass
class _BenchCell:
    """A bench cell in flight: its engines' rows as their tasks land, then its record."""

    cell: Cell
    run: object  # segbench.bench.run.BenchRun
    started: float
    rows: dict[str, dict] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.rows) == len(self.run.order)


class _ClusterStudy:
    """The client's side: checks, submissions in dependency order, records, the progress view."""

    def __init__(self, study: Study, client, console: Console) -> None:
        self.study, self.client, self.console = study, client, console
        self.out = Path(study.out)
        self.cells = [(d, dataset_info(d), n) for d in study.datasets for n in study.networks]
        self.tasks: dict[object, _Task] = {}  # future -> task
        self.counts = {"done": 0, "failed": 0}
        self.gpu_workers = False
        self.threads_by_host: dict[str, int] = {}
        self.progress = StudyProgress(console, total=len(self.cells) * (1 + len(study.engines)))
        self._estimated = (-ESTIMATE_S, "")  # (when, text)

    # -- before anything runs

    def check(self) -> None:
        """Same segbench on every worker, the study folder shared, GPU workers where cells need them."""
        from segbench.cluster.segment import check_resources, check_workers, worker_resources

        self.threads_by_host = check_workers(self.client, [])
        self.out.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        mark = self.out / f".segbench-shared-{token}"
        mark.write_text(token)
        try:
            answers = self.client.run(check_worker, str(self.out.absolute()), token)
        finally:
            mark.unlink()
        for address, answer in sorted(answers.items()):
            if not answer["sees"]:
                raise InputError(f"The Dask worker at {address} does not see the study folder "
                                 f"{self.out.absolute()}; put it on storage that every worker and this "
                                 "client share, at the same path.")
            if not answer["writable"]:
                raise InputError(f"The Dask worker at {address} cannot write to the study folder "
                                 f"{self.out.absolute()}.")
            if answer["daemon"]:
                raise InputError(f"The Dask worker at {address} runs as a daemonic process, which may not "
                                 "start the bench's measuring processes; start the workers with "
                                 "DASK_DISTRIBUTED__WORKER__DAEMON=False.")
        check_resources(self.client, training_resources(self.study))
        offered = self.client.run_on_scheduler(worker_resources)
        self.gpu_workers = any(have.get("GPU", 0) >= 1 for have in offered.values())

    # -- the run

    def run(self) -> dict:
        try:
            with self.progress:
                for dataset, info, network in self.cells:
                    self._start_model(dataset, info, network)
                while self.tasks:
                    self._wait()
                    raise_if_pending()
        except BaseException:
            self.client.cancel(list(self.tasks))  # finished cells stay; running ones resume next time
            raise
        return write_study_json(self.study, self.out)

    def _wait(self) -> None:
        from distributed import wait

        try:
            done, _ = wait(list(self.tasks), timeout=REFRESH_S, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing landed yet: only the view is refreshed
            done = []
        for future in done:
            self.tasks.pop(future).on_done(future)
        self._show()

    def _start_model(self, dataset: DatasetEntry, info, network: NetworkEntry) -> None:
        cell = model_cell(self.study, dataset, info, network)
        if kept := cell.kept():
            self.console.print(f"[dim]{cell.label}: model done earlier, kept[/dim]")
            self._model_done(dataset, info, network, kept)
            return
        future = self.client.submit(model_cell_task, self.study, dataset.name, network.name,
                                    self.threads_by_host,
                                    key=f"model-{dataset.name}-{network.name}-{uuid.uuid4().hex[:8]}",
                                    resources=training_resources(self.study), pure=False)
        self.tasks[future] = _Task(cell.label, lambda f: self._model_landed(dataset, info, network, cell, f),
                                   folder=cell.folder)

    def _model_landed(self, dataset, info, network, cell: Cell, future) -> None:
        try:
            record = future.result()
        except Exception as exc:  # noqa: BLE001  (the task itself failed: a worker died too often)
            record = cell.record(cell.failed(exc), time.perf_counter(), self.console)
        else:
            cell.say(record, self.console)  # recorded on the worker, said here
        self._model_done(dataset, info, network, record)

    def _model_done(self, dataset, info, network, record: dict) -> None:
        self._count(record)
        self.progress.advance(cells=1)
        if record["status"] == "ok":
            self._start_bench(dataset, info, network, record)
        else:
            self.progress.advance(cells=len(self.study.engines))  # no bench for a failed model
        write_study_json(self.study, self.out)

    def _start_bench(self, dataset, info, network, model: dict) -> None:
        from segbench.bench.run import BenchRun

        cell = bench_cell(self.study, dataset, network, model)
        if kept := cell.kept():
            self.console.print(f"[dim]{cell.label}: bench done earlier, kept[/dim]")
            self.progress.advance(cells=len(self.study.engines))
            self._bench_done(kept)
            return
        started = cell.start()
        try:
            run = BenchRun(bench_config(self.study, dataset, info, model, cell.folder), self.console)
        except Exception as exc:  # noqa: BLE001  (as the sequential run: one failed cell)
            self.progress.advance(cells=len(self.study.engines))
            self._bench_done(cell.record(cell.failed(exc), started, self.console))
            return
        bench = _BenchCell(cell, run, started)
        for name in run.order:
            if row := run.kept(name):
                bench.rows[name] = row
                self.progress.advance(cells=1)
        reference = run.config.options.reference
        if reference in run.order and reference not in bench.rows:
            ref_future = self._submit_engine(bench, reference, None)
        else:
            ref_future = bench.rows.get(reference)
        for name in run.order:
            if name not in bench.rows and name != reference:
                self._submit_engine(bench, name, ref_future)
        if bench.complete:
            self._bench_finish(bench)

    def _submit_engine(self, bench: _BenchCell, name: str, reference):
        from segbench.bench.run import measure_engine_task

        gpu = bench.run.kinds[name].device == "cuda" and self.gpu_workers
        future = self.client.submit(measure_engine_task, bench.run.config, name, reference,
                                    key=f"engine-{name}-{uuid.uuid4().hex[:8]}",
                                    resources=GPU if gpu else None, pure=False)
        self.tasks[future] = _Task(f"{bench.cell.label} / {name}",
                                   lambda f: self._engine_landed(bench, name, f))
        return future

    def _engine_landed(self, bench: _BenchCell, name: str, future) -> None:
        try:
            row = future.result()
        except Exception as exc:  # noqa: BLE001  (a worker died too often while measuring it)
            kind = bench.run.kinds[name]
            row = EngineRow(name=name, backend=kind.backend, precision=kind.precision, device=kind.device,
                            status="failed", reason=describe(exc), inputs=bench.run.inputs)
        bench.rows[name] = row
        self.progress.advance(f"{bench.cell.label} / {name}: {row.status}")
        bench.run.write([bench.rows[n] for n in bench.run.order if n in bench.rows])
        if bench.complete:
            self._bench_finish(bench)

    def _bench_finish(self, bench: _BenchCell) -> None:
        report = bench.run.finish([bench.rows[n] for n in bench.run.order], show_table=False)
        self._bench_done(bench.cell.record({"report": str(bench.cell.folder / "report.json"),
                                            "engines": len(report.engines)},
                                           bench.started, self.console))

    def _bench_done(self, record: dict) -> None:
        self._count(record)
        write_study_json(self.study, self.out)

    # -- what the user sees

    def _count(self, record: dict) -> None:
        self.counts["done" if record["status"] == "ok" else "failed"] += 1

    def _show(self) -> None:
        """Cells done / running (where, and the training's iteration) / waiting / failed."""
        where = {}
        for address, keys in self.client.processing().items():
            for key in keys:
                where[key] = address
        running, waiting = [], 0
        for future, task in self.tasks.items():
            address = where.get(future.key)
            if address is None:
                waiting += 1
                continue
            logged = training_progress(task.folder) if task.folder else None
            running.append(f"{task.label} on {address}" + (f" (iteration {logged.iteration}/"
                                                          f"{self.study.recipe.iters})" if logged else ""))
        self.progress.step(f"{self.counts['done']} done, {len(running)} running, {waiting} waiting, "
                           f"{self.counts['failed']} failed{self._estimate()}"
                           + (f": {'; '.join(running)}" if running else ""))

    def _estimate(self) -> str:
        """', about 3.2 h left on 8 workers' from the measured rates (:mod:`segbench.study.plan`),
        worked out again every :data:`ESTIMATE_S`."""
        from segbench.study.plan import plan_study, render_duration

        now = time.monotonic()
        if now - self._estimated[0] >= ESTIMATE_S:
            workers = len(self.client.scheduler_info().get("workers", {})) or 1
            plan = plan_study(self.study)
            known = plan.wall_seconds(workers)
            text = f", about {render_duration(known)} left on {workers} workers" if known else ""
            if plan.unknown:
                text += f" (+{len(plan.unknown)} cells not yet measured)"
            self._estimated = (now, text)
        return self._estimated[1]
