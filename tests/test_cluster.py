"""Scenes in chunks: the same labels as one process, in process and on a real Dask LocalCluster."""

from __future__ import annotations

import json
import os
import re
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


def _whole(engine_path: Path, scene: Path, out: Path, blend: str = "cosine",
           overlap: int = OVERLAP) -> np.ndarray:
    from segbench.engines.registry import load

    with load(engine_path) as engine:
        segment(scene, engine, out, overlap=overlap, blend=blend, batch=1)
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


def _metadata(path: Path) -> tuple:
    with rasterio.open(path) as ds:
        return ds.profile, ds.tags(), ds.tags(1), ds.descriptions, ds.colormap(1), ds.overviews(1)


def test_chunk_files_give_the_whole_scene_labels_and_are_removed(client, engine64, tmp_path):
    from segbench.cluster import segment_on_cluster

    scene = _scene(tmp_path / "scene.tif", 700, 600, border=50)
    want = _whole(engine64, scene, tmp_path / "whole.tif")
    out, chunks = tmp_path / "out", tmp_path / "shared" / "chunks"  # made when missing
    out.mkdir()
    written = []
    (result,) = segment_on_cluster(client, [scene], engine64, out / "files.tif", chunk=256, overlap=OVERLAP,
                                   batch=2, progress=False, chunk_files=chunks,
                                   on_chunk=lambda done, total: written.extend(chunks.rglob("r*-c*.tif")))
    assert written  # the workers wrote chunk files, and the client finished from them
    np.testing.assert_array_equal(_labels(Path(result.output)), want)
    assert list(chunks.iterdir()) == []
    (through_client,) = segment_on_cluster(client, [scene], engine64, out / "labels.tif", chunk=256,
                                           overlap=OVERLAP, batch=2, progress=False)
    assert _metadata(Path(result.output)) == _metadata(Path(through_client.output))  # the same COG
    assert sorted(p.name for p in out.iterdir()) == ["files.tif", "labels.tif"]


class _Interrupt:
    """``on_chunk`` that presses Ctrl-C after ``after`` chunks, and counts the chunks written."""

    def __init__(self, after: int | None = None) -> None:
        self.after, self.seen = after, []

    def __call__(self, done: int, total: int) -> None:
        self.seen.append(done)
        if len(self.seen) == self.after:
            raise KeyboardInterrupt


def test_a_named_stage_is_flushed_kept_and_reopened(tmp_path):
    from segbench.raster import LabelWriter, read_all, scene_info

    scene = _scene(tmp_path / "scene.tif", 600, 520)
    with rasterio.open(scene) as ds:
        info = scene_info(ds)
    dest, stage = tmp_path / "labels.tif", tmp_path / ".labels.tif.resume.tif"
    want = np.random.default_rng(0).integers(0, 6, (600, 520), dtype=np.uint8)
    writer = LabelWriter(dest, info, classes=["a", "b"], palette=[(1, 2, 3), (4, 5, 6)], stage=stage)
    writer.write_rows(256, want[256:512, :256], 0)
    writer.flush()  # on disk for another reader, before the manifest may list it
    np.testing.assert_array_equal(read_all(stage)[0, 256:512, :256], want[256:512, :256])
    writer.write_rows(0, want[:256], 0)
    writer.suspend()
    assert stage.exists() and not dest.exists()
    writer = LabelWriter(dest, info, stage=stage, resume=True)
    writer.write_rows(256, want[256:, 256:], 256)
    writer.write_rows(512, want[512:, :256], 0)
    writer.close()
    np.testing.assert_array_equal(_labels(dest), want)
    with rasterio.open(dest) as ds:
        assert ds.colormap(1)[1] == (4, 5, 6, 255) and ds.tags(1)["classes"] == '["a", "b"]'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "scene.tif"]


@pytest.mark.parametrize("mode", ["staged", "chunk files"])
def test_an_interrupted_client_resumes_with_the_chunks_not_finished(client, engine64, tmp_path, capsys, mode,
                                                                    monkeypatch):
    from segbench.cluster import resume, segment_on_cluster

    monkeypatch.setattr(resume, "SAVE_EVERY_S", 0.0)  # flush and save after every chunk
    scene = _scene(tmp_path / "scene.tif", 900, 700, border=60)
    want = _whole(engine64, scene, tmp_path / "whole.tif")
    total = len(plan_chunks(900, 700, 256))
    out = tmp_path / "out"
    out.mkdir()
    chunk_files = tmp_path / "chunks" if mode == "chunk files" else None
    run = dict(chunk=256, overlap=OVERLAP, batch=2, progress=False, chunk_files=chunk_files)
    with pytest.raises(KeyboardInterrupt):
        segment_on_cluster(client, [scene], engine64, out / "labels.tif", on_chunk=_Interrupt(5), **run)
    kept = sorted(p.name for p in out.iterdir())
    manifest = json.loads((out / ".labels.tif.resume.json").read_text())
    if chunk_files is None:
        assert kept == [".labels.tif.resume.json", ".labels.tif.resume.tif"]  # nothing under the output name
        assert len(manifest["finished"]) == 5
    else:
        assert kept == [".labels.tif.resume.json"]
        (folder,) = chunk_files.iterdir()
        assert manifest["key"]["chunk_files"] == str(folder) and len(list(folder.glob("r*-c*.tif"))) >= 5
    assert "chunks kept in" in capsys.readouterr().err

    again = _Interrupt()
    (result,) = segment_on_cluster(client, [scene], engine64, out / "labels.tif", on_chunk=again, **run)
    resumed = re.search(r"resuming labels.tif: (\d+) of (\d+) chunks", capsys.readouterr().err)
    finished = int(resumed.group(1))
    assert int(resumed.group(2)) == total and (finished == 5 if chunk_files is None else finished >= 5)
    assert again.seen == list(range(finished + 1, total + 1))  # only the others were submitted
    np.testing.assert_array_equal(_labels(Path(result.output)), want)
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif"]
    if chunk_files is not None:
        assert list(chunk_files.iterdir()) == []


def test_what_an_interrupted_run_of_other_settings_left_is_not_reused(client, engine64, tmp_path, capsys):
    from segbench.cluster import segment_on_cluster

    scene = _scene(tmp_path / "scene.tif", 600, 600, border=30)
    dest = tmp_path / "labels.tif"
    with pytest.raises(KeyboardInterrupt):
        segment_on_cluster(client, [scene], engine64, dest, chunk=256, overlap=OVERLAP, progress=False,
                           on_chunk=_Interrupt(2))
    assert (tmp_path / ".labels.tif.resume.tif").exists()
    capsys.readouterr()
    again = _Interrupt()
    (result,) = segment_on_cluster(client, [scene], engine64, dest, chunk=256, overlap=2 * OVERLAP,
                                   progress=False, on_chunk=again)
    assert capsys.readouterr().err == ("segbench: starting labels.tif afresh: the interrupted run left "
                                       "beside it had another window stride (--overlap).\n")
    assert again.seen == list(range(1, len(plan_chunks(600, 600, 256)) + 1))
    np.testing.assert_array_equal(_labels(dest), _whole(engine64, scene, tmp_path / "whole.tif",
                                                        overlap=2 * OVERLAP))
    assert not list(tmp_path.glob(".labels.tif*"))


def test_an_output_another_live_run_is_writing_is_refused(client, engine64, tmp_path):
    import socket

    from segbench.cluster import segment_on_cluster
    from segbench.errors import OutputError

    scene = _scene(tmp_path / "scene.tif", 300, 300)
    manifest = tmp_path / ".labels.tif.resume.json"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        manifest.write_text(json.dumps({"key": {}, "client": {"host": socket.gethostname(),
                                                              "pid": sleeper.pid}}))
        with pytest.raises(OutputError, match=rf"Another segbench process \({sleeper.pid}\) is writing "
                                              rf".*labels.tif; wait for it to finish or stop it"):
            segment_on_cluster(client, [scene], engine64, tmp_path / "labels.tif", chunk=256, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert manifest.exists() and not (tmp_path / "labels.tif").exists()  # its files left alone


def test_chunk_files_on_the_command_line(engine64, tmp_path):
    pytest.importorskip("distributed")
    scene = _scene(tmp_path / "scene.tif", 400, 300, border=20)
    (tmp_path / "a-file").write_text("")
    cmd = [str(SEGBENCH), "segment", str(scene), "--engine", str(engine64), "-o",
           str(tmp_path / "labels.tif"), "--batch", "2", "--overlap", str(OVERLAP), "--workers", "1",
           "--chunk", "256", "--chunk-files"]
    done = subprocess.run([*cmd, str(tmp_path / "a-file" / "chunks")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"segbench: error: Output {tmp_path / 'a-file' / 'chunks'} cannot be written: "
                           f"{tmp_path / 'a-file'} is a file, not a folder; choose another --chunk-files.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "scene.tif"]
    done = subprocess.run([*cmd, str(tmp_path / "chunks")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(_labels(tmp_path / "labels.tif"),
                                  _whole(engine64, scene, tmp_path / "whole.tif"))
    assert list((tmp_path / "chunks").iterdir()) == []


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
    from segbench.cluster.segment import CONNECT_S

    scene = _scene(tmp_path / "scene.tif", 100, 100)
    cmd = [str(SEGBENCH), "segment", str(scene), "--engine", str(engine64), "--batch", "1"]
    start = time.monotonic()  # the baseline: the same command in this process, on this machine, now
    (tmp_path / "baseline").mkdir()
    local = subprocess.run([*cmd, "-o", str(tmp_path / "baseline" / "labels.tif")], capture_output=True,
                           text=True, timeout=300)
    baseline = time.monotonic() - start
    assert local.returncode == 0, local.stderr
    start = time.monotonic()
    done = subprocess.run([*cmd, "-o", str(tmp_path / "l.tif"), "--scheduler", "tcp://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Cannot reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    # it gives up after its connect timeout: no more than twice that beyond what the command costs
    assert time.monotonic() - start < 3 * baseline + 2 * CONNECT_S, baseline
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
    report = run_bench(BenchConfig.flat(model=engine64.parent / "m64.onnx", engines=["ort-fp32"],
                                        scenes=[scene], reference="ort-fp32", overlap=OVERLAP, batch=2,
                                        out=tmp_path / "bench", quick=True, workers=2), show_table=False)
    (row,) = report.engines
    assert row.status == "ok", row.reason
    scaling = row.scaling
    assert scaling.workers == 2 and set(scaling.megapixels_per_s) == {"1", "2"}
    assert all(rate > 0 for rate in scaling.megapixels_per_s.values())
    rates = scaling.megapixels_per_s
    assert scaling.efficiency == pytest.approx(rates["2"] / (2 * rates["1"]))
    assert not list((tmp_path / "bench" / "ort-fp32").glob("workers-*"))  # measured, not kept


def test_a_gpu_resource_no_worker_offers_is_one_sentence_not_a_wait(client, engine64, tmp_path):
    from segbench.cluster import check_resources, segment_on_cluster

    scene = _scene(tmp_path / "scene.tif", 300, 300)
    (tmp_path / "done").mkdir()
    start = time.monotonic()  # the baseline: the same scene on the same workers, now
    segment_on_cluster(client, [scene], engine64, tmp_path / "done" / "labels.tif", progress=False)
    baseline = time.monotonic() - start
    start = time.monotonic()
    with pytest.raises(InputError, match="No Dask worker offers GPU=1; start GPU workers with"):
        segment_on_cluster(client, [scene], engine64, tmp_path / "labels.tif", resources={"GPU": 1},
                           progress=False)
    # refused before any chunk is sent (a task asking for what no worker has would wait forever)
    assert time.monotonic() - start < max(1.0, 2 * baseline), baseline
    assert not list(tmp_path.glob("*labels*"))
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
    (["--chunk", "512"], "--chunk and --chunk-files apply with --workers or --scheduler only."),
    (["--chunk-files", "chunks"], "--chunk and --chunk-files apply with --workers or --scheduler only."),
    (["--workers", "2", "--confidence"],
     "--confidence, --probabilities and --resample are not available with --workers or --scheduler yet."),
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


def test_workers_with_two_threads_each_run_their_own_engine(tmp_path, engine64):
    """``dask worker`` runs several tasks at once by default: each thread loads its own engine (none is
    shared between two tasks, none loaded twice by one thread), sized for its share of the host's
    cores, and the labels are one process's."""
    distributed = pytest.importorskip("distributed")
    import logging

    from segbench.cluster import segment_on_cluster
    from segbench.cluster.segment import check_workers
    from segbench.cluster.worker import engines_loaded

    scene = _scene(tmp_path / "scene.tif", 520, 530, seed=3)
    want = _whole(engine64, scene, tmp_path / "whole.tif")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                  silence_logs=logging.CRITICAL,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            distributed.Client(cluster) as client:
        (host, threads), = check_workers(client, [str(engine64)]).items()
        assert threads == max(1, (os.cpu_count() or 1) // 2)  # two engines share the cores
        segment_on_cluster(client, [scene], engine64, tmp_path / "labels.tif", chunk=256, overlap=OVERLAP,
                           batch=1, progress=False)
        (loaded,) = client.run(engines_loaded).values()
    assert np.array_equal(_labels(tmp_path / "labels.tif"), want)
    assert 1 <= loaded <= 2  # at most one per thread, whatever the number of chunks (9 here)
