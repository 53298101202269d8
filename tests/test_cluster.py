"""Scenes in chunks: the same labels as one process, in process and on a real Dask LocalCluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segbench.errors import InputError
from segbench.tiler import segment, stride_for
from segbench.tiler.chunks import plan_chunks, segment_chunk
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

SEGBENCH = Path(sys.executable).with_name("segbench")
OVERLAP = 16


def _engine(folder: Path, tile: int) -> Path:
    pytest.importorskip("onnxruntime")
    from segbench.engines.registry import build

    return build(tiny_conv_onnx(folder / f"m{tile}.onnx", make_spec(tile=tile)), "ort-fp32", folder)


@pytest.fixture(scope="module")
def engine64(tmp_path_factory) -> Path:
    return _engine(tmp_path_factory.mktemp("e64"), 64)


def _scene(path: Path, h: int, w: int, seed: int = 0, border: int = 0) -> Path:
    data = np.random.default_rng(seed).integers(1, 256, (3, h, w), dtype=np.uint8)
    if border:  # nodata along the top and left, as a scene's collar
        data[:, :border] = 0
        data[:, :, :border] = 0
    return write_scene(path, data, nodata=0)


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _whole(engine_path: Path, scene: Path, out: Path, blend: str = "cosine") -> np.ndarray:
    from segbench.engines.registry import load

    with load(engine_path) as engine:
        segment(scene, engine, out, overlap=OVERLAP, blend=blend, batch=1)
    return _labels(out)


@pytest.mark.parametrize("h, w, tile, chunk, blend", [
    (300, 517, 64, 256, "cosine"),  # sizes divisible by neither the stride nor the chunk
    (777, 600, 64, 512, "mean"),
    (45, 70, 64, 256, "crop"),  # smaller than a window
    (700, 650, 320, 256, "cosine"),  # chunks narrower than a window
])
def test_chunks_give_the_whole_scene_labels(tmp_path, h, w, tile, chunk, blend):
    from segbench.engines.registry import load

    artifact = _engine(tmp_path, tile)
    scene = _scene(tmp_path / "scene.tif", h, w, border=min(h, w) // 5)
    want = _whole(artifact, scene, tmp_path / "whole.tif", blend)
    assert (want == 255).any() and (want != 255).any()  # nodata collar and labels both present
    got = np.full((h, w), 7, np.uint8)
    chunks = plan_chunks(h, w, chunk)
    assert len(chunks) > 1 or max(h, w) <= chunk
    with load(artifact) as engine:
        for c in chunks:  # a batch other than the whole run's: same logits per window here
            got[c.row:c.row + c.height, c.col:c.col + c.width] = segment_chunk(
                engine, scene, c, step=stride_for(tile, OVERLAP), blend=blend, batch=3)
    np.testing.assert_array_equal(got, want)


def test_chunks_are_whole_label_blocks():
    chunks = plan_chunks(1000, 1300, 700)  # rounded down to 512
    assert {c.height for c in chunks} == {512, 1000 - 512} and chunks[1].col == 512
    assert sum(c.height * c.width for c in chunks) == 1000 * 1300
    with pytest.raises(InputError, match="at least 256"):
        plan_chunks(100, 100, 100)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed", reason="the 'cluster' extra is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


def test_a_local_cluster_gives_the_whole_scene_labels(client, engine64, tmp_path):
    from segbench.cluster import segment_on_cluster

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i, (h, w) in enumerate([(900, 700), (200, 150)]):
        _scene(scenes / f"s{i}.tif", h, w, seed=i, border=40)
    results = segment_on_cluster(client, [scenes], engine64, tmp_path / "out", chunk=256, overlap=OVERLAP,
                                 batch=2, progress=False)
    assert [Path(r.output).name for r in results] == ["s0.labels.tif", "s1.labels.tif"]
    for i, result in enumerate(results):
        want = _whole(engine64, scenes / f"s{i}.tif", tmp_path / f"whole{i}.tif")
        np.testing.assert_array_equal(_labels(Path(result.output)), want)
    with rasterio.open(results[0].output) as ds:
        assert ds.colormap(1)[1] == tuple(make_spec().palette[1]) + (255,)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_killed_worker_has_its_chunks_run_again(client, engine64, tmp_path):
    from segbench.cluster import segment_on_cluster

    scene = _scene(tmp_path / "scene.tif", 2600, 2600, border=100)
    want = _whole(engine64, scene, tmp_path / "whole.tif")
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    seen = []

    def kill_after_a_few(done: int, total: int) -> None:
        seen.append(done)
        if done == 5:  # the other chunks are queued or running on both workers
            os.kill(victim, signal.SIGKILL)

    (result,) = segment_on_cluster(client, [scene], engine64, tmp_path / "labels.tif", chunk=256,
                                   overlap=OVERLAP, batch=2, progress=False, on_chunk=kill_after_a_few)
    assert seen == list(range(1, len(plan_chunks(2600, 2600, 256)) + 1))  # each written once
    assert victim not in client.run(os.getpid).values()  # the nanny started a new worker
    np.testing.assert_array_equal(_labels(Path(result.output)), want)
    client.wait_for_workers(2, timeout=60)


def _mosaic_with_a_missing_part(folder: Path) -> Path:
    """A VRT mosaic of two scenes, the second deleted: the chunks over it cannot be read."""
    parts = [_scene(folder / f"part{i}.tif", 512, 512, seed=i) for i in range(2)]
    with rasterio.open(parts[0]) as ds:
        transform = ds.transform
    sources = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>' + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{p.name}</SourceFilename>'
            f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="512" ySize="512"/>'
            f'<DstRect xOff="{512 * i}" yOff="0" xSize="512" ySize="512"/></SimpleSource>'
            for i, p in enumerate(parts)) + "</VRTRasterBand>" for b in (1, 2, 3))
    vrt = folder / "mosaic.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="1024" rasterYSize="512"><SRS>EPSG:32633</SRS>'
                   f"<GeoTransform>{', '.join(map(str, transform.to_gdal()))}</GeoTransform>"
                   f"{sources}</VRTDataset>")
    parts[1].unlink()
    return vrt


def test_a_failing_chunk_stops_the_job_and_leaves_nothing(client, engine64, tmp_path):
    from segbench.cluster import segment_on_cluster

    scene = _mosaic_with_a_missing_part(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"Chunk rows 0-256, columns \d+-\d+ of mosaic.vrt failed: Could not "
                                         r"read .*mosaic.vrt: .*part1.tif: No such file or directory"):
        segment_on_cluster(client, [scene], engine64, out / "labels.tif", chunk=256, overlap=OVERLAP,
                           progress=False)
    assert list(out.iterdir()) == []


def test_workers_that_cannot_read_the_engine_or_run_another_version(client, engine64, tmp_path,
                                                                     monkeypatch):
    import socket

    from segbench.cluster import check_workers, segment

    # both workers on this host: its cores shared between them
    assert check_workers(client, [str(engine64)]) == {socket.gethostname(): max(1, os.cpu_count() // 2)}
    with pytest.raises(InputError, match="cannot read .*nowhere.tif; put the engine and scenes on storage"):
        check_workers(client, [str(engine64), str(tmp_path / "nowhere.tif")])
    monkeypatch.setattr(segment, "__version__", "0.0.0-other")
    with pytest.raises(InputError, match=r"runs segbench .*, this client 0.0.0-other"):
        check_workers(client, [str(engine64)])


def test_an_unreachable_scheduler_or_one_without_workers_is_one_sentence(engine64, tmp_path):
    distributed = pytest.importorskip("distributed")
    scene = _scene(tmp_path / "scene.tif", 100, 100)
    start = time.monotonic()
    cmd = [str(SEGBENCH), "segment", str(scene), "--engine", str(engine64), "-o", str(tmp_path / "l.tif"),
           "--batch", "1", "--scheduler", "tcp://127.0.0.1:9"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Cannot reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert time.monotonic() - start < 60
    from segbench.cluster import dask_client

    with distributed.LocalCluster(n_workers=0, dashboard_address=None, silence_logs=40) as empty:
        with pytest.raises(InputError, match="has no workers"), dask_client(scheduler=empty.scheduler_address,
                                                                            timeout=2):
            pass
    assert not list(tmp_path.glob("*l.tif*"))


def test_bench_measures_an_engines_scaling(engine64, tmp_path):
    pytest.importorskip("distributed")
    from segbench.bench.run import BenchConfig, run_bench

    scene = _scene(tmp_path / "scene.tif", 600, 600)
    report = run_bench(BenchConfig(model=engine64.parent / "m64.onnx", engines=["ort-fp32"], scenes=[scene],
                                   reference="ort-fp32", overlap=OVERLAP, batch=2, out=tmp_path / "bench",
                                   quick=True, workers=2), show_table=False)
    (row,) = report["engines"]
    assert row["status"] == "ok", row.get("reason")
    scaling = row["scaling"]
    assert scaling["workers"] == 2 and set(scaling["megapixels_per_s"]) == {"1", "2"}
    assert all(rate > 0 for rate in scaling["megapixels_per_s"].values())
    rates = scaling["megapixels_per_s"]
    assert scaling["efficiency"] == pytest.approx(rates["2"] / (2 * rates["1"]))
    assert not list((tmp_path / "bench" / "ort-fp32").glob("workers-*"))  # measured, not kept


def test_a_gpu_resource_no_worker_offers_is_one_sentence_not_a_wait(client, engine64, tmp_path):
    from segbench.cluster import check_resources, segment_on_cluster

    scene = _scene(tmp_path / "scene.tif", 300, 300)
    start = time.monotonic()
    with pytest.raises(InputError, match="No Dask worker offers GPU=1; start GPU workers with"):
        segment_on_cluster(client, [scene], engine64, tmp_path / "labels.tif", resources={"GPU": 1},
                           progress=False)
    assert time.monotonic() - start < 10 and not list(tmp_path.glob("*labels*"))
    check_resources(client, None)


def test_chunks_go_to_workers_that_offer_the_resource(engine64, tmp_path):
    distributed = pytest.importorskip("distributed")
    from segbench.cluster import segment_on_cluster

    scene = _scene(tmp_path / "scene.tif", 300, 300)
    want = _whole(engine64, scene, tmp_path / "whole.tif")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, resources={"GPU": 1},
                                  dashboard_address=None, silence_logs=50) as cluster, \
            distributed.Client(cluster) as gpu_client:
        (result,) = segment_on_cluster(gpu_client, [scene], engine64, tmp_path / "labels.tif", chunk=256,
                                       overlap=OVERLAP, batch=1, resources={"GPU": 1}, progress=False)
    np.testing.assert_array_equal(_labels(Path(result.output)), want)


@pytest.mark.parametrize("extra, message", [
    (["--chunk", "512"], "--chunk applies with --workers or --scheduler only."),
    (["--workers", "2", "--confidence"],
     "--confidence and --probabilities are not available with --workers or --scheduler yet."),
])
def test_options_that_do_not_go_together_fail_before_any_work(engine64, tmp_path, extra, message):
    from segbench.engines.batchsize import sidecar

    scene = _scene(tmp_path / "scene.tif", 100, 100)
    sidecar(engine64).unlink(missing_ok=True)
    done = subprocess.run([str(SEGBENCH), "segment", str(scene), "--engine", str(engine64), "-o",
                           str(tmp_path / "labels.tif"), *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == f"segbench: error: {message}\n"
    assert not sidecar(engine64).exists()  # no batch sweep ran first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
