"""segbench study: a tiny comparison end to end, its numbers, resuming, failures and changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mmseg")

from segbench.bench.model import Accuracy, read  # noqa: E402
from segbench.bench.report import load_report  # noqa: E402
from segbench.errors import InputError  # noqa: E402
from segbench.study.run import run_study  # noqa: E402
from segbench.study.studyfile import load_study  # noqa: E402

SEGBENCH = Path(sys.executable).with_name("segbench")


def _write_study(folder: Path, data: Path, out: str, engines=("torch-fp32", "ort-fp32"),
                 extra_networks: str = "") -> Path:
    path = folder / f"{out}.toml"
    path.write_text(f"""
networks = ["fcn-hrnet18s", "segformer-b0"{extra_networks}]
engines = {json.dumps(list(engines))}

[study]
name = "tiny"
out = "{out}"

[[datasets]]
name = "synthetic"
path = "{data}"
isprs = true

[recipe]
iters = 2
crop = 64
batch = 2
threads = 1  # the same weights sequentially and on Dask workers
lr = {{ "fcn-hrnet18s" = 0.01, "segformer-b0" = 0.001 }}

[bench]
overlap = 16
batch = 2
calib_tiles = 4
quick = true
""")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from segbench.train.synth import SynthOptions, synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("data"),
                              SynthOptions(train=2, val=1, test=1, size=96, test_size=128))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """The tiny study, run once to the end."""
    folder = tmp_path_factory.mktemp("study")
    study = load_study(_write_study(folder, data, "straight"))
    return study, run_study(study)


def _cells(report: dict) -> dict:
    """(network, engine) -> (mIoU, agreement) of every engine row, for comparing two studies."""
    (dataset,) = report.datasets
    return {(n.name, e.name): (e.accuracy.miou, e.accuracy.agreement)
            for n in dataset.networks for e in n.engines}


def test_the_study_table_equals_the_eval_and_bench_reports(finished):
    from segbench.bench.metrics import metrics_from_counts

    study, report = finished
    assert json.loads((study.out / "study.json").read_text()) == json.loads(report.model_dump_json())
    (dataset,) = report.datasets
    assert dataset.split == "test" and dataset.excluded_classes == ["clutter"]
    assert [n.family for n in dataset.networks] == ["fast CNN", "transformer"]
    for network in dataset.networks:
        assert network.status == "ok", network.reason
        folder = study.out / "synthetic" / network.name
        model = json.loads((folder / "model" / "cell.json").read_text())
        # the network's figures are its eval report's, with the ISPRS convention applied
        expected = metrics_from_counts(model["eval"]["confusion"], dataset.classes, ["clutter"])
        assert network.accuracy == Accuracy(**expected)
        all_classes = metrics_from_counts(model["eval"]["confusion"], dataset.classes)
        assert all_classes["miou"] == pytest.approx(model["eval"]["mIoU"])
        assert network.params > 1e6 and network.gflops > 0 and network.train_seconds > 0
        # its engine rows are its bench report's rows
        bench = load_report(folder / "bench" / "report.json").engines
        assert [e.model_copy(update={"study_rank": None, "study_pareto": False, "network": None})
                for e in network.engines] == bench
        assert [e.name for e in network.engines] == ["torch-fp32", "ort-fp32"]
        reference, ort = network.engines
        assert ort.accuracy.agreement > 0.99 and ort.qualified
        _equals_iou_metric(reference, dataset)


def _equals_iou_metric(row: dict, dataset: dict) -> None:
    """An engine row's per-class IoU, mIoU (ISPRS: without clutter) and mF1 are mmseg's IoUMetric's
    on the label rasters the bench wrote and the dataset's ground truth."""
    import numpy as np
    import torch
    from mmseg.evaluation.metrics import IoUMetric

    from segbench.raster import read_all
    from segbench.train.layout import DatasetInfo

    pairs = DatasetInfo.load(dataset.path).pairs(dataset.split)
    classes = len(dataset.classes)
    areas = [IoUMetric.intersect_and_union(torch.from_numpy(read_all(pred)[0].astype(np.int64)),
                                           torch.from_numpy(read_all(label)[0].astype(np.int64)),
                                           classes, 255)
             for pred, (_, label) in zip(row.scene.outputs, pairs, strict=True)]
    totals = [sum(a[i] for a in areas) for i in range(4)]
    theirs = IoUMetric.total_area_to_metrics(*totals, ["mIoU", "mFscore"], nan_to_num=None, beta=1)
    kept = [i for i, name in enumerate(dataset.classes) if name not in dataset.excluded_classes]
    ours = row.accuracy
    for i, name in enumerate(dataset.classes):
        iou = ours.per_class[name].iou
        assert (iou is None and np.isnan(theirs["IoU"][i])) or iou == pytest.approx(theirs["IoU"][i])
    assert ours.miou == pytest.approx(np.nanmean(np.asarray(theirs["IoU"])[kept]))
    assert ours.mf1 == pytest.approx(np.nanmean(np.asarray(theirs["Fscore"])[kept]))
    assert ours.oa == pytest.approx(theirs["aAcc"])


def test_a_rerun_keeps_every_finished_cell(finished):
    study, report = finished
    checkpoints = sorted(study.out.rglob("*.pth")) + sorted(study.out.rglob("*.onnx"))
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}
    cells = {p: p.read_text() for p in study.out.rglob("cell.json")}
    again = run_study(load_study(study.path))
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == stamps  # nothing retrained or re-exported
    assert {p: p.read_text() for p in study.out.rglob("cell.json")} == cells
    assert _cells(again) == _cells(report)


def test_adding_an_engine_runs_only_that_engine(finished, tmp_path, data):
    import shutil

    study, report = finished
    copy = tmp_path / "copy"
    shutil.copytree(study.out, copy)
    changed = _write_study(tmp_path, data, "copy", engines=("torch-fp32", "ort-fp32", "openvino-fp32"))
    model_cells = {p: p.read_text() for p in copy.rglob("model/cell.json")}
    kept = {n.name: n.engines for n in report.datasets[0].networks}
    result = run_study(load_study(changed))
    assert {p: p.read_text() for p in copy.rglob("model/cell.json")} == model_cells  # not retrained
    for network in result.datasets[0].networks:
        rows = {e.name: e for e in network.engines}
        assert set(rows) == {"torch-fp32", "ort-fp32", "openvino-fp32"}
        for old in kept[network.name]:  # measured before: kept as they were, latency and all
            assert rows[old.name].latency == old.latency


def test_a_killed_study_resumes_and_ends_with_the_same_table(finished, tmp_path, data):
    _, report = finished
    path = _write_study(tmp_path, data, "killed")
    out = tmp_path / "killed"
    proc = subprocess.Popen([str(SEGBENCH), "study", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = out / "synthetic" / "fcn-hrnet18s" / "model" / "cell.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.is_file(), proc.stderr.read() if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM, proc.stderr.read()
    finished_model = json.loads(first.read_text())
    checkpoint = Path(finished_model["checkpoint"])
    stamp = checkpoint.stat().st_mtime_ns

    resumed = run_study(load_study(path))
    assert checkpoint.stat().st_mtime_ns == stamp  # the finished training was not redone
    assert json.loads(first.read_text()) == finished_model
    assert _cells(resumed) == _cells(report)  # the same figures as the uninterrupted study
    assert not [p for p in out.rglob("*") if ".part-" in p.name or ".stage-" in p.name]


def test_a_failing_cell_is_recorded_and_the_rest_completes(tmp_path, data):
    from segbench.mmseg.configs import shipped_configs_root

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    config = shipped_configs_root() / "pspnet/pspnet_r18-d8_4xb4-80k_potsdam-512x512.py"
    path = _write_study(tmp_path, data, "failing", engines=("torch-fp32",),
                        extra_networks=f', {{ name = "broken", config = "{config}", '
                                       f'checkpoint = "{broken}" }}')
    report = run_study(load_study(path))
    networks = {n.name: n for n in report.datasets[0].networks}
    assert networks["broken"].status == "failed"
    assert "corrupt" in networks["broken"].reason and networks["broken"].source == "imported"
    assert (tmp_path / "failing" / "synthetic" / "broken" / "model" / "error.log").is_file()
    for name in ("fcn-hrnet18s", "segformer-b0"):
        assert networks[name].status == "ok" and networks[name].engines[0].status == "ok"


@pytest.mark.parametrize("text, message", [
    ("", "needs name"),
    ('[study]\nname = "x"\n', "names no dataset"),
    ('networks = ["nope"]\n[study]\nname = "x"\n[[datasets]]\nname = "d"\npath = "d"\n',
     "Unknown model 'nope'"),
    ('networks = ["stdc1"]\nengines = ["ort-fp33"]\n[study]\nname = "x"\n[[datasets]]\nname = "d"\n'
     'path = "d"\n', "Unknown engine 'ort-fp33'"),
    ('[study]\nname = "x"\ncolour = 1\n', "unknown key"),
    ("[study\n", "not valid TOML"),
])
def test_bad_study_files_name_the_mistake(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_study(path)


def test_the_shipped_study_files_load():
    root = Path(__file__).resolve().parents[1] / "studies"
    demo, seed = load_study(root / "demo.toml"), load_study(root / "seed.toml")
    assert len({n.name for n in demo.networks}) >= 3 and len(demo.engines) >= 3
    assert [d.name for d in seed.datasets] == ["potsdam", "vaihingen", "loveda"]
    assert seed.recipe.iters == 80_000 and seed.recipe.crop == 512
    assert {"danet-r50", "nonlocal-r50", "upernet-swin-t", "deeplabv3plus-r50"} <= {
        n.name for n in seed.networks}
    assert os.path.isabs(seed.datasets[0].path)


# -- the study on a Dask cluster ---------------------------------------------------------------

def _keys(out: Path) -> dict:
    """Every cell's key, by its folder within the study."""
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["key"] for p in out.rglob("cell.json")}


def test_an_interrupted_study_on_two_workers_resumes_and_equals_the_sequential_one(finished, tmp_path,
                                                                                  data):
    pytest.importorskip("distributed")
    study, report = finished
    path = _write_study(tmp_path, data, "cluster")
    out = tmp_path / "cluster"
    proc = subprocess.Popen([str(SEGBENCH), "study", str(path), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = [out / "synthetic" / n / "model" / "cell.json" for n in ("fcn-hrnet18s", "segformer-b0")]
    deadline = time.monotonic() + 300
    while not any(p.is_file() for p in first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(p.is_file() for p in first), proc.stderr.read() if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGTERM)  # the client: its cluster goes, finished cells stay
    assert proc.wait(60) == 128 + signal.SIGTERM, proc.stderr.read()
    kept = {p: p.read_text() for p in first if p.is_file()}

    resumed = run_study(load_study(path), workers=2)
    assert {p: p.read_text() for p in kept} == kept  # finished before the interruption: not redone
    assert _cells(resumed) == _cells(report)  # the sequential run's figures
    assert _keys(out) == _keys(study.out)  # and its cells, with the same keys
    rows = {n.name: n.accuracy for n in resumed.datasets[0].networks}
    assert rows == {n.name: n.accuracy for n in report.datasets[0].networks}
    assert not [p for p in out.rglob("*") if ".part-" in p.name or ".stage-" in p.name]


def test_a_worker_killed_during_a_training_has_it_resumed_elsewhere(tmp_path, data):
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    from segbench.train.resume import STATE_NAME, load_state

    path = tmp_path / "kill.toml"
    path.write_text(f"""
networks = ["fcn-hrnet18s"]
engines = ["ort-fp32"]
[study]
name = "kill"
out = "kill"
[[datasets]]
name = "synthetic"
path = "{data}"
[recipe]
iters = 40
crop = 64
batch = 2
lr = 0.01
[bench]
reference = "ort-fp32"
batch = 2
quick = true
""")
    train = tmp_path / "kill" / "synthetic" / "fcn-hrnet18s" / "model" / "train"
    proc = subprocess.Popen([str(SEGBENCH), "study", str(path), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (train / STATE_NAME).is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (train / STATE_NAME).is_file(), proc.stderr.read() if proc.poll() is not None else "timed out"
        trainer = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if any(Path(f.path).is_relative_to(train) for f in c.open_files())]
        assert len(trainer) == 1, trainer  # the worker process that writes the training's log
        trainer[0].kill()
        saved = load_state(train / STATE_NAME)["iter"]
        assert proc.wait(300) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    report = read(tmp_path / "kill" / "study.json")
    (network,) = report.datasets[0].networks
    assert network.status == "ok" and network.engines[0].status == "ok"
    logs = sorted(train.rglob("scalars.json"))  # mmengine's, one per run
    assert len(logs) == 2  # trained twice: the killed run, then the one elsewhere
    logged = [json.loads(line)["iter"] for line in logs[-1].read_text().splitlines() if '"iter"' in line]
    assert logged[0] > saved >= 4  # which went on from the saved state, not from the start


def test_a_second_client_on_the_same_study_folder_is_refused(tmp_path, data):
    from segbench.study.lock import study_lock

    path = _write_study(tmp_path, data, "locked")
    with study_lock(tmp_path / "locked"):
        done = subprocess.run([str(SEGBENCH), "study", str(path)], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("segbench: error: Another segbench study runs on") and \
        done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "locked" / "synthetic").exists()  # nothing ran


def test_a_lock_whose_client_is_gone_is_taken_over(tmp_path):
    from segbench.study.lock import LOCK_NAME, StudyBusyError, study_lock

    lock = tmp_path / LOCK_NAME
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead), "since": "then"}))
    with study_lock(tmp_path):  # its process is gone on this host
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}))
    with pytest.raises(StudyBusyError, match="host elsewhere"):  # another host's, alive: its heartbeat
        with study_lock(tmp_path):
            pass
    old = time.time() - 600
    os.utime(lock, (old, old))  # ... stopped ten minutes ago
    with study_lock(tmp_path, heartbeat_s=0.05):
        taken = lock.stat().st_mtime_ns  # taking it over wrote it
        beats = {taken}
        deadline = time.monotonic() + 30  # only a bound on a stuck heartbeat: it beats every 0.05 s
        while len(beats) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            beats.add(lock.stat().st_mtime_ns)
        assert len(beats) >= 3 and max(beats) > taken, beats  # kept alive while held: touched again and again
    assert not lock.exists()

    import threading

    held, released = threading.Event(), threading.Event()

    def hold():
        with study_lock(tmp_path, name="cell.lock"):
            held.set()
            time.sleep(0.5)
        released.set()

    threading.Thread(target=hold).start()
    held.wait(5)
    with study_lock(tmp_path, name="cell.lock", wait_s=10, heartbeat_s=0.05):  # a task's wait
        assert released.is_set()


def test_a_gpu_study_on_a_cluster_without_gpu_workers_is_one_sentence(tmp_path, data):
    pytest.importorskip("distributed")
    path = _write_study(tmp_path, data, "gpu")
    path.write_text(path.read_text().replace("[recipe]\n", '[recipe]\ndevice = "cuda"\n'))
    with pytest.raises(InputError, match=r"No Dask worker offers GPU=1"):
        run_study(load_study(path), workers=1)
    assert not (tmp_path / "gpu" / "synthetic").exists()


def test_the_plan_lists_every_cell_and_estimates_from_the_measured_rates(finished, tmp_path, data):
    from segbench.study.plan import plan_study, render_plan

    study, report = finished
    done = plan_study(study)
    assert [(c.network, c.state, c.bench_done) for c in done.cells] == [
        ("fcn-hrnet18s", "done", True), ("segformer-b0", "done", True)]
    assert done.wall_seconds(1) == 0
    longer = _write_study(tmp_path, data, "planned")
    longer.write_text(longer.read_text().replace("iters = 2", "iters = 200"))
    plan = plan_study(load_study(longer), rates_from=[study.out / "study.json"])
    rates = {n.name: 2 / n.train_seconds for n in report.datasets[0].networks}
    for cell in plan.cells:
        assert cell.state == "to run" and cell.rate == pytest.approx(rates[cell.network])
        assert cell.model_s == pytest.approx(200 / rates[cell.network])
    one, two = plan.wall_seconds(1), plan.wall_seconds(2)
    assert one == pytest.approx(sum(c.seconds for c in plan.cells))
    assert two == pytest.approx(max(c.seconds for c in plan.cells))
    text = render_plan(plan, workers=2)
    assert "synthetic / fcn-hrnet18s" in text and "on 2 workers" in text
