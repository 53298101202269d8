"""``segbench study --plan``: the cells, what each needs, which are done, and the time left.

Nothing runs. A model cell's time is its iterations left (those its log
shows done are counted done) over the network's measured training rate
(iterations per second): from this study's finished trainings, or else from
other studies' ``study.json`` given with ``--rates-from`` (a short pilot study
on the target GPU), or else from the running training's own log. A bench
cell's time is the mean per engine of this study's finished bench cells, or
else of the other studies'. Cells of no measured rate are counted and said,
never guessed. The wall time on N workers is a list schedule of the cells
(longest first, each bench after its model), which is what Dask's scheduler
does with independent tasks. The study's progress view shows the same
estimate while it runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segbench.bench.model import Study as StudyReport
from segbench.bench.model import read
from segbench.engines.registry import get_kind
from segbench.errors import InputError
from segbench.study.studyfile import Study


@dataclass
class PlannedCell:
    dataset: str
    network: str
    state: str  # done | to run | failed | running | blocked
    needs: list[str] = field(default_factory=list)  # GPU, and the files it reads
    missing: list[str] = field(default_factory=list)  # needed files that are not there
    iterations_left: int | None = None
    rate: float | None = None  # iterations per second of the network's training
    rate_from: str | None = None
    model_s: float | None = None  # time left of the model cell (train or import, eval, export)
    bench_s: float | None = None  # time of its bench (None: unknown)
    bench_done: bool = False

    @property
    def seconds(self) -> float | None:
        """Time left of the model cell and its bench; None if either is unknown."""
        if self.state == "done" and self.bench_done:
            return 0.0
        if self.model_s is None or (self.bench_s is None and not self.bench_done):
            return None
        return self.model_s + (0.0 if self.bench_done else self.bench_s)


@dataclass
class Plan:
    study: Study
    cells: list[PlannedCell]

    def wall_seconds(self, workers: int) -> float:
        """The cells of known time, longest first, on ``workers`` workers (a list schedule)."""
        durations = sorted((c.seconds for c in self.cells if c.seconds), reverse=True)
        free = [0.0] * max(1, workers)
        for seconds in durations:
            heapq.heapreplace(free, free[0] + seconds)
        return max(free)

    @property
    def unknown(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.seconds is None]


def plan_study(study: Study, rates_from: Sequence[str | Path] = ()) -> Plan:
    """Every cell of ``study`` with its state, needs and time left, from measured rates."""
    from segbench.study.cells import bench_cell, model_cell, needs_gpu, read_cell, training_progress

    out = Path(study.out)
    records = {(d.name, n.name): (read_cell(out / d.name / n.name / "model"),
                                  read_cell(out / d.name / n.name / "bench"))
               for d in study.datasets for n in study.networks}
    rates = _rates(study, records, rates_from)
    bench_s = _bench_seconds(records, len(study.engines), rates_from)
    gpu_engines = [e for e in study.engines if get_kind(e).device == "cuda"]
    cells = []
    for dataset in study.datasets:
        for network in study.networks:
            model, bench = records[(dataset.name, network.name)]
            cell = PlannedCell(dataset.name, network.name, "to run")
            if needs_gpu(study):
                cell.needs.append("GPU (training)")
            if gpu_engines:
                cell.needs.append(f"GPU ({len(gpu_engines)} engines)")
            inputs = (network.config, network.checkpoint, study.recipe.pretrained.get(network.name))
            files = [Path(dataset.path) / "dataset.json", *(p for p in inputs if p is not None)]
            cell.needs += [str(f) for f in files]
            cell.missing = [str(f) for f in files if not Path(f).exists()]
            current = _current_key(study, dataset, network, model_cell)
            folder = out / dataset.name / network.name / "model"
            if model and model.get("status") == "ok" and model.get("key") == current:
                cell.state, cell.model_s = "done", 0.0
                cell.bench_done = bool(bench and bench.get("status") == "ok"
                                       and bench.get("key") == bench_cell(study, dataset, network, model).key)
            elif cell.missing:
                cell.state = "blocked"
            else:
                cell.state = "failed" if model and model.get("status") == "failed" else "to run"
                done, logged = 0, training_progress(folder)
                if logged and logged.iteration < study.recipe.iters:  # resumes after what it saved
                    cell.state, done = "running" if cell.state == "to run" else cell.state, logged.iteration
                if network.imported:
                    cell.iterations_left, cell.model_s = 0, None
                else:
                    cell.iterations_left = study.recipe.iters - done
                    cell.rate, cell.rate_from = rates.get(network.name, (None, None))
                    if cell.rate is None and logged and logged.seconds_per_iteration:
                        cell.rate, cell.rate_from = 1 / logged.seconds_per_iteration, "its log"
                    if cell.rate:
                        cell.model_s = cell.iterations_left / cell.rate
            cell.bench_s = bench_s
            cells.append(cell)
    return Plan(study, cells)


def _current_key(study, dataset, network, model_cell) -> str | None:
    """The model cell's key as the study is now (None when its dataset cannot be read)."""
    from segbench.study.cells import dataset_info

    try:
        return model_cell(study, dataset, dataset_info(dataset), network).key
    except Exception:  # noqa: BLE001  (a missing dataset: the cell cannot be done)
        return None


def _rates(study: Study, records: dict, rates_from: Sequence[str | Path]) -> dict[str, tuple[float, str]]:
    """Measured training rate per network: this study's trainings first, then the other studies'."""
    rates: dict[str, tuple[float, str]] = {}
    for path, report in zip(rates_from, _other_studies(rates_from), strict=True):
        iters = ((report.study or {}).get("recipe") or {}).get("iters")  # the study file, as read
        for dataset in report.datasets:
            for network in dataset.networks:
                if iters and network.train_seconds:
                    rates.setdefault(network.name, (iters / network.train_seconds, str(path)))
    for (_, network), (model, _) in records.items():
        if model and model.get("status") == "ok" and model.get("train_seconds"):
            rates[network] = (study.recipe.iters / model["train_seconds"], "this study")
    return rates


def _bench_seconds(records: dict, engines: int, rates_from: Sequence[str | Path]) -> float | None:
    """A bench cell's time: the mean per engine of this study's finished benches (else the other
    studies'), times the study's engines."""
    per_engine = [bench["seconds"] / max(1, bench.get("engines") or 1) for _, bench in records.values()
                  if bench and bench.get("status") == "ok" and bench.get("seconds")]
    if not per_engine:
        per_engine = [network.bench_seconds / max(1, len(network.engines))
                      for report in _other_studies(rates_from) for dataset in report.datasets
                      for network in dataset.networks if network.bench_seconds]
    return engines * sum(per_engine) / len(per_engine) if per_engine else None


def _other_studies(paths: Sequence[str | Path]) -> list[StudyReport]:
    studies = []
    for path in paths:
        report = read(path)
        if not isinstance(report, StudyReport):
            raise InputError(f"{path} is a bench report; --rates-from takes a study's study.json.")
        studies.append(report)
    return studies


def render_plan(plan: Plan, workers: int = 1) -> str:
    """The plan as text: one line per cell, then the estimate on 1 and on ``workers`` workers."""
    lines = [f"Study {plan.study.name}: {len(plan.cells)} model cells, each then "
             f"{len(plan.study.engines)} engines; folder {plan.study.out}"]
    width = max(len(f"{c.dataset} / {c.network}") for c in plan.cells)
    for c in plan.cells:
        time_left = "-" if c.state == "done" and c.bench_done else render_duration(c.seconds)
        rate = f"{c.rate:.2f} it/s ({c.rate_from})" if c.rate else \
            ("imported" if c.iterations_left == 0 else "rate not measured")
        needs = ", ".join(n for n in c.needs if n.startswith("GPU")) or "CPU"
        missing = f"; {len(c.missing)} inputs missing" if c.missing else ""
        bench = "bench done" if c.bench_done else "bench to run"
        lines.append(f"  {c.dataset + ' / ' + c.network:<{width}}  {c.state}, {bench}; {needs}; {rate}; "
                     f"left {time_left}{missing}")
    if missing := sorted({m for c in plan.cells for m in c.missing}):
        lines.append("Missing inputs: " + ", ".join(missing))
    known = [c for c in plan.cells if c.seconds is not None]
    on_more = f", {render_duration(plan.wall_seconds(workers))} on {workers} workers" if workers > 1 else ""
    lines.append(f"Estimate (from measured rates, not a promise): {render_duration(plan.wall_seconds(1))} "
                 f"on 1 worker{on_more}, for the {len(known)} cells of known time")
    if plan.unknown:
        lines.append(f"  plus {len(plan.unknown)} cells of unmeasured time (no training rate or bench "
                     "time yet; give --rates-from a pilot study's study.json)")
    return "\n".join(lines)


def render_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
