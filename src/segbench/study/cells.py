"""A study's cells: the model cell (train or import, evaluate, export) and the bench cell (every
engine measured), each recorded with the key of what it depends on, and ``study.json`` gathered
from their records (:mod:`segbench.study.run` runs them here, :mod:`segbench.study.cluster` on Dask).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from segbench.bench.memory import describe
from segbench.bench.model import Accuracy, Dataset, Network
from segbench.bench.model import Study as StudyReport
from segbench.bench.report import write_json
from segbench.errors import InputError
from segbench.files import write_text
from segbench.signals import raise_if_pending
from segbench.study.render import rank_study
from segbench.study.studyfile import DatasetEntry, NetworkEntry, Study, digest

CELL_FILE = "cell.json"
STUDY_FILE = "study.json"


class Cell:
    """One cell's folder and record: kept when it finished with the same key, else started afresh.

    The record (``cell.json``) is written when the work ends, ok or failed. A
    cell whose key changed starts from an empty folder, unless its work keeps
    what still holds itself (``start_empty=False``: the bench keeps engines
    measured on the same inputs).
    """

    def __init__(self, folder: Path, key: str, label: str, start_empty: bool = True) -> None:
        self.folder, self.key, self.label, self.start_empty = folder, key, label, start_empty

    def kept(self) -> dict | None:
        """The record of this cell finished earlier with the same key, if there is one."""
        record = read_cell(self.folder)
        return record if record and record.get("key") == self.key and record.get("status") == "ok" else None

    def start(self) -> float:
        """Make the folder ready for the work; returns the start time."""
        record = read_cell(self.folder)
        if self.start_empty and record and record.get("key") != self.key and self.folder.is_dir():
            shutil.rmtree(self.folder)  # made from other inputs: nothing in it can be reused
        self.folder.mkdir(parents=True, exist_ok=True)
        return time.perf_counter()

    def failed(self, exc: Exception) -> dict:
        """The result of a failed work: its one-line reason, the traceback in ``error.log``."""
        log = write_text(self.folder / "error.log", "".join(traceback.format_exception(exc)))
        return {"status": "failed", "reason": describe(exc), "log": str(log)}

    def record(self, result: dict, started: float, console: Console) -> dict:
        """Write the cell's record of ``result`` (from :meth:`failed`, or the work's own) and say it."""
        result = {"status": "ok", "reason": None, **result}
        result.update(key=self.key, seconds=time.perf_counter() - started)
        write_text(self.folder / CELL_FILE, json.dumps(result, indent=2, default=str) + "\n")
        self.say(result, console)
        return result

    def say(self, record: dict, console: Console) -> None:
        """One line for a finished cell: its time and figures, or why it failed."""
        if record["status"] == "ok":
            console.print(f"{self.label}: {self.folder.name} done in {record['seconds']:.0f} s"
                          f"{cell_summary(record)}")
        else:
            console.print(f"[red]{self.label}: {self.folder.name} failed: {record['reason']}[/red]")

    def run(self, work, console: Console) -> dict:
        """Run ``work(folder)`` unless the cell is kept; one cell's failure is recorded, not raised."""
        raise_if_pending()
        if kept := self.kept():
            console.print(f"[dim]{self.label}: {self.folder.name} done earlier, kept[/dim]")
            return kept
        started = self.start()
        try:
            result = work(self.folder)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001  (one cell's failure is recorded; the study goes on)
            result = self.failed(exc)
        return self.record(result, started, console)


def model_cell(study: Study, dataset: DatasetEntry, info, network: NetworkEntry) -> Cell:
    return Cell(Path(study.out) / dataset.name / network.name / "model",
                _model_key(study, dataset, info, network), f"{dataset.name} / {network.name}")


def bench_cell(study: Study, dataset: DatasetEntry, network: NetworkEntry, model: dict) -> Cell:
    """The bench cell of a finished model cell; it keeps the engines measured on the same inputs."""
    return Cell(Path(study.out) / dataset.name / network.name / "bench",
                digest([model["key"], study.engines, study.bench]), f"{dataset.name} / {network.name}",
                start_empty=False)


def cell_summary(result: dict) -> str:
    """', mIoU 63.21 %' for a model cell (all classes, its eval); nothing for others."""
    miou = (result.get("eval") or {}).get("mIoU")
    return f", mIoU {100 * miou:.2f} % on {result['split']}" if miou is not None else ""


def read_cell(folder: Path) -> dict | None:
    try:
        return json.loads((folder / CELL_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _model_key(study: Study, dataset: DatasetEntry, info, network: NetworkEntry) -> str:
    """What a model cell depends on: the dataset's description, the network and the recipe."""
    from segbench.files import sha256_file

    inputs = [_dataset_fingerprint(info), network]
    if network.imported:
        inputs.append([sha256_file(network.config), sha256_file(network.checkpoint)])
    else:
        inputs.append([study.recipe.iters, study.recipe.crop, study.recipe.batch,
                       study.recipe.lr_for(network.name), study.recipe.pretrained.get(network.name)])
        if study.recipe.gpus > 1:  # N x batch images per step: another training (keys of 1 GPU kept)
            inputs.append({"gpus": study.recipe.gpus})
        if study.recipe.threads:  # a CPU training's weights depend on its thread count
            inputs.append({"threads": study.recipe.threads})
    return digest(inputs)


def model_cell_work(study: Study, dataset: DatasetEntry, info, network: NetworkEntry, folder: Path,
                    progress: StudyProgress, threads: int | None = None) -> dict:
    """Train (or import), evaluate and export one network on one dataset; the training on the
    recipe's ``threads`` (else ``threads``, a Dask worker's share of its host; else torch's own)."""
    import torch

    threads = study.recipe.threads or threads
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _model_cell_work(study, dataset, info, network, folder, progress)
    finally:
        torch.set_num_threads(before)


def _model_cell_work(study: Study, dataset: DatasetEntry, info, network: NetworkEntry, folder: Path,
                     progress: StudyProgress) -> dict:
    from segbench.bench.evaluate import evaluate
    from segbench.export.onnx import export_model
    from segbench.spec import ModelSpec
    from segbench.train.config import Recipe
    from segbench.train.runner import train

    split = scored_split(info)
    if network.imported:
        from segbench.mmseg.importer import import_model

        progress.step(f"{dataset.name} / {network.name}: importing")
        checkpoint = import_model(network.config, network.checkpoint, folder / "model.pth").checkpoint
        train_seconds = None
    else:
        progress.step(f"{dataset.name} / {network.name}: training {study.recipe.iters} iterations")
        recipe = Recipe(iters=study.recipe.iters, batch=study.recipe.batch, crop=study.recipe.crop,
                        lr=study.recipe.lr_for(network.name))
        resume = (folder / "train" / "resume.pth").is_file()
        checkpoint, _ = train(str(network.config) if network.config else network.name, dataset.path,
                              folder / "train", recipe, device=study.recipe.device, progress=False,
                              resume=resume, pretrained=study.recipe.pretrained.get(network.name),
                              gpus=study.recipe.gpus)
        seconds_file = folder / "train" / "train_seconds.txt"
        train_seconds = float(seconds_file.read_text()) if seconds_file.is_file() else None
    progress.step(f"{dataset.name} / {network.name}: evaluating on {split}")
    evaluation = evaluate(checkpoint, dataset.path, split)
    progress.step(f"{dataset.name} / {network.name}: exporting to ONNX")
    onnx_path, _, _ = export_model(checkpoint, folder / "model.onnx")
    options = ModelSpec.load(onnx_path).build.options
    return {"checkpoint": str(checkpoint), "onnx": str(onnx_path), "split": split,
            "eval": evaluation, "train_seconds": train_seconds,
            "params": options.get("params"), "gflops": options.get("gflops")}


def run_bench_cell(study: Study, dataset: DatasetEntry, info, model: dict, folder: Path,
                progress: StudyProgress, console: Console) -> dict:
    """Every engine of the study on the network's ONNX file, over the scored split."""
    from segbench.bench.run import run_bench

    config = bench_config(study, dataset, info, model, folder)
    progress.step(f"{dataset.name} / {Path(model['onnx']).parent.parent.name}: benchmarking engines")
    report = run_bench(config, console=console, show_table=False,
                       on_engine=lambda row: progress.advance(f"{row.name}: {row.status}"))
    return {"report": str(folder / "report.json"), "engines": len(report.engines)}


def bench_config(study: Study, dataset: DatasetEntry, info, model: dict, folder: Path):
    """The bench of a model cell: every engine of the study over the scored split, into ``folder``."""
    from segbench.bench.run import BenchConfig

    pairs = info.pairs(model["split"])
    return BenchConfig(
        model=Path(model["onnx"]), engines=list(study.engines), scenes=[p[0] for p in pairs],
        labels=[p[1] for p in pairs], calib=[p[0] for p in info.pairs("train")],
        calib_labels=[p[1] for p in info.pairs("train")], out=folder, isprs=dataset.isprs, resume=True,
        options=study.bench)


# -- the study report --------------------------------------------------------------------------

def write_study_json(study: Study, out: Path) -> StudyReport:
    """Gather every cell's record into ``out/study.json`` (rewritten after each cell)."""
    from segbench.bench.report import provenance

    rule = study.bench.rule()
    report = StudyReport(**provenance(), study=study.to_dict(), rule=rule.text(), ranking=rule.to_model())
    for dataset in study.datasets:
        info = dataset_info(dataset)
        exclude = ["clutter"] if dataset.isprs and "clutter" in info.classes else []
        report.datasets.append(Dataset(
            name=dataset.name, path=str(dataset.path), isprs=dataset.isprs, split=scored_split(info),
            classes=list(info.classes), excluded_classes=exclude,
            networks=[_network_entry(study, dataset, network, info, exclude) for network in study.networks]))
    rank_study(report)
    write_json(report, Path(out) / STUDY_FILE)
    return report


def _network_entry(study: Study, dataset: DatasetEntry, network, info, exclude: list[str]) -> Network:
    """One network of one dataset in the study report: its model cell's figures and its engines' rows."""
    from segbench.bench.metrics import metrics_from_counts
    from segbench.bench.report import load_report

    folder = Path(study.out) / dataset.name / network.name
    model = read_cell(folder / "model") or {"status": "pending", "reason": "not run yet"}
    entry = Network(name=network.name, family=network_family(network),
                    source="imported" if network.imported else "trained", status=model["status"],
                    reason=model.get("reason"), params=model.get("params"), gflops=model.get("gflops"),
                    train_seconds=model.get("train_seconds"))
    if model["status"] != "ok":
        return entry
    entry.accuracy = Accuracy(**metrics_from_counts(model["eval"]["confusion"], info.classes, exclude))
    entry.tile = _tile(model["onnx"])
    bench = read_cell(folder / "bench")
    if bench and bench.get("status") == "ok":
        entry.bench_seconds = bench.get("seconds")  # what --plan estimates benches from
        entry.engines = [r.model_copy(update={"network": network.name})
                         for r in load_report(bench["report"]).engines]
    elif bench:
        entry.engines_reason = bench.get("reason")
    return entry


def scored_split(info) -> str:
    """The split the study scores: ``test`` when the dataset has one, else ``val``."""
    for split in ("test", "val"):
        if info.pairs(split):
            return split
    raise InputError(f"Dataset {info.root} has no test or val scenes to score on.")


def network_family(network: NetworkEntry) -> str:
    from segbench.train.catalogue import get_entry

    try:
        return get_entry(str(network.config) if network.config else network.name).family
    except Exception:  # noqa: BLE001  (a config that no longer loads: the family is unknown)
        return "other"


def dataset_info(dataset: DatasetEntry):
    from segbench.train.layout import DatasetInfo

    return DatasetInfo.load(dataset.path)


def _tile(onnx_path: str) -> int | None:
    from segbench.spec import ModelSpec

    try:
        return ModelSpec.load(onnx_path).tile
    except Exception:  # noqa: BLE001
        return None


def _dataset_fingerprint(info) -> list:
    """The dataset's description and every scene file's name, size and time."""
    files = [(str(p.relative_to(info.root)), p.stat().st_size, p.stat().st_mtime_ns)
             for split in ("train", "val", "test") for pair in info.pairs(split) for p in pair]
    return [(Path(info.root) / "dataset.json").read_text(), files]


class StudyProgress:
    """Cells done of all, the current step, elapsed time and ETA, on one rich bar."""

    def __init__(self, console: Console, total: int) -> None:
        from segbench.progress import progress_bar

        self.bar = progress_bar("study", "{task.description}", console=console)
        self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> StudyProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def step(self, text: str) -> None:
        self.bar.update(self.task, description=text)

    def advance(self, text: str | None = None, cells: int = 1) -> None:
        """``cells`` more done (an engine measured, a model trained)."""
        self.bar.update(self.task, advance=cells, **({"description": text} if text else {}))

    def set(self, done: int) -> None:
        self.bar.update(self.task, completed=done)


def needs_gpu(study: Study) -> bool:
    """Whether the study's trainings run on CUDA (then each model cell asks its worker for ``GPU=1``)."""
    return study.recipe.device.startswith("cuda")


@dataclass(frozen=True)
class TrainingProgress:
    """Where a model cell's training is, from mmengine's ``vis_data/scalars.json`` of its last run."""

    iteration: int
    seconds_per_iteration: float | None  # mmengine's own timer, over its last logging interval


def training_progress(folder: Path) -> TrainingProgress | None:
    """The last iteration a model cell's training logged, and its measured time per iteration."""
    train = folder / "train"
    logs = sorted(train.rglob("scalars.json"), key=lambda p: p.stat().st_mtime) if train.is_dir() else []
    if not logs:
        return None
    with open(logs[-1], "rb") as f:
        f.seek(max(0, os.path.getsize(logs[-1]) - 8192))
        lines = [line for line in f.read().splitlines() if b'"iter"' in line]
    for line in reversed(lines):
        try:
            logged = json.loads(line)
        except ValueError:  # the first line of the tail, cut, or one being written
            continue
        return TrainingProgress(int(logged["iter"]), logged.get("time"))
    return None
