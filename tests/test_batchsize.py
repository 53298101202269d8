"""--batch auto: the sweep, its early stop, what it keeps beside the engine, and its callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segbench.engines.batchsize import CANDIDATES, choose_batch, sidecar, sweep
from segbench.tiler import auto_batch
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

SEGBENCH = Path(sys.executable).with_name("segbench")
TILE = 32


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("engine")
    return build(tiny_conv_onnx(root / "m.onnx", make_spec(tile=TILE)), "ort-fp32", root)


def _scene(path: Path, size: int) -> Path:
    rng = np.random.default_rng(1)
    return write_scene(path, rng.integers(0, 256, (3, size, size), dtype=np.uint8))


def test_the_sweep_stops_once_past_the_peak():
    curve = {1: 10.0, 2: 18.0, 4: 20.0, 8: 17.5, 16: 30.0}  # 8 is < 90% of 4's: 16 is never run
    asked = []

    def measure(batch):
        asked.append(batch)
        return curve[batch]

    assert sweep(measure, CANDIDATES) == ({1: 10.0, 2: 18.0, 4: 20.0, 8: 17.5}, "peak")
    assert asked == [1, 2, 4, 8]
    flat = {1: 10.0, 2: 9.5, 4: 9.2, 8: 9.3, 16: 9.1}  # within 10% of the best: all run
    assert sweep(flat.__getitem__, CANDIDATES) == (flat, None)


def test_the_sweep_stops_once_it_has_cost_what_the_run_can_pay_back():
    """A budget of what the run's windows take: a small scene stops the sweep early, a large one does
    not (each candidate here costs 1 s, as an engine compiled per batch may)."""
    clock = [0.0]
    rising = {1: 10.0, 2: 18.0, 4: 20.0, 8: 21.0, 16: 22.0}

    def measure(batch):
        clock[0] += 1.0
        return rising[batch]

    def budget(windows):  # as choose_batch: 10% of the windows' time at the best rate so far
        return lambda rates: clock[0] > 0.1 * windows / max(rates.values())

    clock[0] = 0.0
    assert sweep(measure, CANDIDATES, budget(200)) == ({1: 10.0, 2: 18.0}, "budget")  # 2 s > 10% of 11 s
    clock[0] = 0.0
    assert sweep(measure, CANDIDATES, budget(100_000)) == (rising, None)  # a scene of 5,000 s pays for it


def test_what_the_sweep_cost_is_said_and_kept(engine, tmp_path):
    tiles = np.random.default_rng(0).uniform(0, 255, (16, 3, TILE, TILE)).astype(np.float32)
    sidecar(engine).unlink(missing_ok=True)
    small = choose_batch(engine, tiles, min_seconds=0.05, work=8)  # a run of 8 windows pays for little
    assert small.stopped == "budget" and len(small.tiles_per_s) < len(CANDIDATES)
    assert 0 < small.seconds and f"sweep {small.seconds:.1f} s, stopped at 10% of the run's time" \
        in small.describe()
    assert json.loads(sidecar(engine).read_text())["seconds"] == small.seconds


def test_a_sweep_is_kept_for_this_artifact_and_machine(engine, tmp_path):
    tiles = np.random.default_rng(0).uniform(0, 255, (16, 3, TILE, TILE)).astype(np.float32)
    sidecar(engine).unlink(missing_ok=True)
    first = choose_batch(engine, tiles, min_seconds=0.05)
    assert not first.reused and first.batch in first.tiles_per_s
    assert list(first.tiles_per_s) == list(CANDIDATES)[:len(first.tiles_per_s)]
    assert all(rate > 0 for rate in first.tiles_per_s.values())
    assert first.tiles_per_s[first.batch] == max(first.tiles_per_s.values())
    again = choose_batch(engine, tiles, min_seconds=0.05)
    assert again.reused and (again.batch, again.tiles_per_s) == (first.batch, first.tiles_per_s)
    os.utime(engine, ns=(engine.stat().st_atime_ns, engine.stat().st_mtime_ns + 10**9))  # rebuilt
    assert not choose_batch(engine, tiles, min_seconds=0.05).reused
    sidecar(engine).write_text("{not json")
    assert not choose_batch(engine, tiles, min_seconds=0.05).reused  # a broken record: measured again
    assert json.loads(sidecar(engine).read_text())["key"]["cores"] == os.cpu_count()


def test_no_batch_larger_than_the_scene_has_windows(engine, tmp_path):
    scene = _scene(tmp_path / "small.tif", 2 * TILE)  # 3 x 3 windows at a quarter-tile overlap
    sidecar(engine).unlink(missing_ok=True)
    choice = auto_batch(engine, [scene])
    assert json.loads(sidecar(engine).read_text())["key"]["candidates"] == [1, 2, 4, 8]
    assert set(choice.tiles_per_s) <= {1, 2, 4, 8}
    one = auto_batch(engine, [_scene(tmp_path / "one.tif", TILE)])  # a single window: nothing to measure
    assert (one.batch, one.tiles_per_s) == (1, {}) and "only candidate" in one.describe()


def test_segment_by_default_runs_the_measured_batch(engine, tmp_path):
    scene = _scene(tmp_path / "scene.tif", 200)
    sidecar(engine).unlink(missing_ok=True)
    auto = subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(engine),
                           "-o", str(tmp_path / "auto.tif")], capture_output=True, text=True, timeout=300)
    assert auto.returncode == 0, auto.stderr
    record = json.loads(sidecar(engine).read_text())
    assert f"batch {record['batch']} (auto; tiles/s at " in auto.stderr
    fixed = subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(engine),
                            "-o", str(tmp_path / "fixed.tif"), "--batch", "3"], capture_output=True,
                           text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr
    assert "auto" not in fixed.stderr
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "fixed.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))  # the batch never changes the labels
    bad = subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(engine),
                          "-o", str(tmp_path / "x.tif"), "--batch", "many"], capture_output=True, text=True)
    assert bad.returncode == 2 and "neither 'auto' nor a positive integer" in bad.stderr


def test_bench_records_each_engines_choice(engine, tmp_path):
    from segbench.bench.run import BenchConfig, run_bench

    scene = _scene(tmp_path / "scene.tif", 160)
    onnx_path = engine.parent / "m.onnx"
    report = run_bench(BenchConfig.flat(model=onnx_path, engines=["ort-fp32"], scenes=[scene],
                                   reference="ort-fp32", batch="auto", out=tmp_path / "bench",
                                   quick=True), show_table=False)
    (row,) = report.engines
    assert row.status == "ok", row.reason
    choice = row.batch_choice
    assert row.latency.batch == choice.batch
    assert choice.tiles_per_s[str(choice.batch)] == max(choice.tiles_per_s.values())


def test_an_engine_on_a_gpu_also_tries_larger_batches():
    from segbench.engines.batchsize import GPU_CANDIDATES, candidates_for
    from segbench.spec import BuildRecord

    spec = make_spec()
    gpu = spec.replace(build=BuildRecord(backend="torch", precision="fp16", engine="torch-fp16"))
    cpu = spec.replace(build=BuildRecord(backend="onnxruntime", precision="fp32", engine="ort-fp32"))
    assert candidates_for(gpu) == GPU_CANDIDATES and max(GPU_CANDIDATES) == 64
    assert candidates_for(cpu) == candidates_for(spec) == CANDIDATES


def test_one_maximum_batch_bounds_the_sweep_the_tiler_and_every_call(tmp_path, engine):
    """A TensorRT plan's profile ends at 32 tiles: the sweep never tries 64 on it, the tiler refuses a
    larger --batch before any work, and an engine refuses a larger call, each in one sentence."""
    from segbench.engines.base import EngineBase
    from segbench.engines.batchsize import GPU_CANDIDATES, candidates_for
    from segbench.engines.registry import availability, build, load
    from segbench.engines.tensorrt import MAX_BATCH
    from segbench.errors import InputError
    from segbench.spec import ModelSpec
    from segbench.tiler import segment

    assert 64 in GPU_CANDIDATES and MAX_BATCH == 32
    if availability("trtrtx-fp32", run=False) is None:  # a real plan's build record
        plan = build(tiny_conv_onnx(tmp_path / "m.onnx", make_spec(tile=TILE)), "trtrtx-fp32", tmp_path)
        assert candidates_for(ModelSpec.load(plan)) == tuple(b for b in GPU_CANDIDATES if b <= 32)
    assert candidates_for(ModelSpec.load(engine)) == CANDIDATES  # ONNX Runtime takes any batch

    class Bounded(EngineBase):
        name, device, max_batch = "bounded", "cpu", 2
        spec = make_spec(tile=TILE)

        def infer(self, tiles):
            raise AssertionError("never called: the batch was refused first")

    scene = _scene(tmp_path / "s.tif", 70)
    with pytest.raises(InputError, match=r"^bounded takes at most 2 tiles per batch .* not 4; give --batch"):
        segment(scene, Bounded(), tmp_path / "l.tif", batch=4)
    assert not (tmp_path / "l.tif").exists()
    with load(engine) as runner:
        runner.max_batch = 2  # as a plan's profile sets it when loaded
        tiles = np.zeros((3, 3, TILE, TILE), np.float32)
        with pytest.raises(InputError, match="takes at most 2 tiles per batch"):
            runner.infer(tiles)
        assert runner.infer(tiles[:2]).shape[0] == 2
