"""Window planning, blending, streaming accumulation and the threaded pipeline."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import rasterio

from segbench.engines.base import EngineBase
from segbench.errors import InputError, OutputError, UsageError
from segbench.peak import current_rss_bytes, reset_peak
from segbench.tiler import plan_windows, reference, segment, segment_many, stride_for
from segbench.tiler.accumulate import BandAccumulator
from segbench.tiler.blend import axis_weights
from segbench.tiler.windows import Window, axis_starts
from tests.conftest import make_spec, write_scene


def mmseg_windows(h, w, tile, stride):
    """A literal transcription of mmseg's slide_inference loop."""
    h_grids = max(h - tile + stride - 1, 0) // stride + 1
    w_grids = max(w - tile + stride - 1, 0) // stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + tile, h), min(x1 + tile, w)
            y1, x1 = max(y2 - tile, 0), max(x2 - tile, 0)
            out.append((y1, x1))
    return list(dict.fromkeys(out))


@pytest.mark.parametrize("h, w, tile, stride", [
    (1000, 700, 256, 192), (512, 512, 256, 256), (100, 90, 128, 96), (513, 300, 256, 128),
    (256, 1000, 256, 200),
])
def test_plan_equals_mmseg(h, w, tile, stride):
    plan = plan_windows(h, w, tile, stride)
    assert [(p.row, p.col) for p in plan] == mmseg_windows(h, w, tile, stride)
    assert all(p.height == p.width == tile for p in plan)


def test_stride_validation():
    assert stride_for(256) == 192 and stride_for(256, overlap=0) == 256
    with pytest.raises(UsageError, match="less than the tile 256"):  # a value that can never work: exit 2
        stride_for(256, overlap=256)
    with pytest.raises(UsageError, match="either an overlap or a stride"):
        stride_for(256, overlap=10, stride=100)
    with pytest.raises(UsageError, match="Stride 300 must be between 1 and the tile size 256"):
        stride_for(256, stride=300)


def test_blend_weights():
    starts = axis_starts(1000, 256, 192)
    for mode in ("mean", "cosine", "crop"):
        ws = axis_weights(starts, 256, 1000, mode)
        cover = np.zeros(1000)
        for s, w in zip(starts, ws, strict=True):
            cover[s:s + 256] += w
        if mode == "crop":
            np.testing.assert_array_equal(cover, 1)  # each pixel owned by exactly one window
        elif mode == "cosine":
            assert all((w > 0).all() for w in ws)  # never a zero weight
            assert ws[0][0] == 1 and ws[-1][-1] == 1  # untapered on the scene border
            np.testing.assert_allclose(cover[: starts[-1] - 64], 1, atol=1e-6)
        else:
            assert all((w == 1).all() for w in ws)


@pytest.mark.parametrize("blend", ["mean", "cosine", "crop"])
def test_streaming_accumulator_equals_whole_scene(blend):
    rng = np.random.default_rng(2)
    h, w, tile, stride, c = 300, 250, 64, 40, 4
    rows, cols = axis_starts(h, tile, stride), axis_starts(w, tile, stride)
    wy, wx = axis_weights(rows, tile, h, blend), axis_weights(cols, tile, w, blend)
    full = np.zeros((c, h, w), np.float32)
    fsum = np.zeros((h, w), np.float32)
    acc = BandAccumulator(h, w, c, tile)
    out = np.full((h, w), 99, np.uint8)
    for r, yw in zip(rows, wy, strict=True):
        if (f := acc.flush(r)) is not None:
            out[f[0]:f[0] + len(f[1])] = f[1]
        for col, xw in zip(cols, wx, strict=True):
            logits = rng.normal(size=(c, tile, tile)).astype(np.float32)
            reference.accumulate(full, fsum, logits, yw, xw, r, col)
            acc.add(Window(r, col, tile, tile), logits, yw, xw, np.ones((tile, tile), bool))
    f = acc.finish()
    out[f[0]:f[0] + len(f[1])] = f[1]
    np.testing.assert_array_equal(out, full.argmax(0))


class PixelEngine(EngineBase):
    """A real (tiny) engine: per-pixel linear class scores of the raw pixels."""

    def __init__(self, spec, fail_after=None, labels=False):
        self.spec = spec.replace(output="labels") if labels else spec
        self.name, self.device = "numpy-linear", "cpu"
        self.w = np.array([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]], np.float32)
        self.calls, self.fail_after = 0, fail_after

    def scores(self, pixels):
        return np.einsum("kb,nbhw->nkhw", self.w, pixels)

    def infer(self, tiles):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("engine exploded")
        s = self.scores(tiles)
        return s.argmax(1).astype(np.uint8) if self.spec.output == "labels" else s

    def close(self):
        pass


def _scene(tmp_path, h=150, w=170, nodata=None):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 256, (3, h, w), dtype=np.uint8)
    if nodata is not None:
        data[:, :, :20] = nodata
    return write_scene(tmp_path / "scene.tif", data, nodata=nodata), data


class PositionEngine(EngineBase):
    """A real (tiny) engine whose logits depend on where a pixel lies in its window, as a CNN's do.

    Class scores of the pixels plus a fixed bias per window position: the same
    scene pixel gets different logits from each window that covers it, so the
    labels depend on every blending weight (a per-pixel engine hides them all).
    """

    def __init__(self, spec, seed=0):
        self.spec, self.name, self.device = spec, "numpy-position", "cpu"
        self.pixel = PixelEngine(spec)
        rng = np.random.default_rng(seed)
        self.bias = rng.normal(0, 1, (spec.num_classes, spec.tile, spec.tile)).astype(np.float32)

    def infer(self, tiles):
        return 0.01 * self.pixel.scores(tiles) + self.bias

    def close(self):
        pass


def _reference_segmentation(data, engine, stride, blend):
    """The whole scene in memory: every window through the engine, numpy's accumulate and argmax."""
    c, (_, h, w), tile = engine.spec.num_classes, data.shape, engine.spec.tile
    rows, cols = axis_starts(h, tile, stride), axis_starts(w, tile, stride)
    acc, wsum = np.zeros((c, h, w), np.float32), np.zeros((h, w), np.float32)
    for r, yw in zip(rows, axis_weights(rows, tile, h, blend), strict=True):
        for col, xw in zip(cols, axis_weights(cols, tile, w, blend), strict=True):
            window = data[None, :, r:r + tile, col:col + tile].astype(np.float32)
            reference.accumulate(acc, wsum, engine.infer(window)[0], yw, xw, r, col)
    return reference.argmax_labels(acc, wsum, h, confidence=True)


@pytest.mark.parametrize("blend", ["mean", "cosine", "crop"])
def test_pipeline_equals_the_numpy_reference(tmp_path, blend):
    path, data = _scene(tmp_path)
    engine = PositionEngine(make_spec(tile=48))
    out, conf = tmp_path / "labels.tif", tmp_path / "conf.tif"
    result = segment(path, engine, out, overlap=16, blend=blend, batch=3, confidence=conf)
    labels, confidence = _reference_segmentation(data, engine, 32, blend)
    with rasterio.open(out) as ds, rasterio.open(path) as src:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        np.testing.assert_array_equal(ds.read(1), labels)
    with rasterio.open(conf) as ds:
        assert np.abs(ds.read(1).astype(int) - confidence).max() <= 1
    assert result.windows == len(plan_windows(150, 170, 48, 32)) and result.skipped == 0
    assert result.stages.infer > 0 and result.megapixels_per_s > 0


def test_pipeline_keeps_nodata_and_skips_empty_windows(tmp_path):
    path, data = _scene(tmp_path, nodata=0)
    engine = PixelEngine(make_spec(tile=16))
    out = tmp_path / "labels.tif"
    result = segment(path, engine, out, overlap=0, blend="mean", batch=2, confidence=tmp_path / "c.tif")
    with rasterio.open(out) as ds:
        labels = ds.read(1)
    assert (labels[:, :16] == 255).all() and (labels[:, 20:] != 255).all()
    assert result.skipped == 10  # the first column of 16-px windows is all nodata
    with rasterio.open(tmp_path / "c.tif") as ds:
        conf = ds.read(1)
    assert (conf[:, :16] == 0).all() and (conf[:, 20:] >= 255 // 3).all()


def test_labels_engine_with_crop_blend(tmp_path):
    path, data = _scene(tmp_path)
    engine = PixelEngine(make_spec(tile=48), labels=True)
    out = tmp_path / "labels.tif"
    segment(path, engine, out, overlap=16, blend="crop")
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), engine.scores(data[None].astype(np.float32))[0].argmax(0))
    with pytest.raises(InputError, match="only --blend crop"):
        segment(path, engine, tmp_path / "x.tif", blend="mean")


def test_scene_smaller_than_a_tile_is_padded_and_masked(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(1, 256, (3, 20, 30), dtype=np.uint8)
    path = write_scene(tmp_path / "small.tif", data)
    engine = PixelEngine(make_spec(tile=32))
    segment(path, engine, tmp_path / "l.tif", blend="cosine")
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert ds.shape == (20, 30)
        np.testing.assert_array_equal(ds.read(1), engine.scores(data[None].astype(np.float32))[0].argmax(0))


def test_engine_failure_leaves_no_output(tmp_path):
    path, _ = _scene(tmp_path)
    out = tmp_path / "labels.tif"
    with pytest.raises(RuntimeError, match="exploded"):
        segment(path, PixelEngine(make_spec(tile=32), fail_after=2), out, batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_band_mismatch_and_unwritable_output(tmp_path):
    path, _ = _scene(tmp_path)
    with pytest.raises(InputError, match="band"):
        segment(path, PixelEngine(make_spec(bands=4, tile=32)), tmp_path / "x.tif")
    with pytest.raises(OutputError):
        segment(path, PixelEngine(make_spec(tile=32)), tmp_path / "missing" / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_segment_many_over_a_folder(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        write_scene(folder / f"s{i}.tif", rng.integers(0, 255, (3, 40, 50), dtype=np.uint8))
    results = segment_many([folder], PixelEngine(make_spec(tile=32)), tmp_path / "out", progress=False)
    assert [r.output for r in results] == [str(tmp_path / "out" / f"s{i}.labels.tif") for i in range(2)]


@pytest.mark.parametrize("where", ["missing-folder", "existing-folder", "stage-blocked"])
def test_a_confidence_output_that_cannot_be_opened_leaves_nothing(tmp_path, where):
    path, _ = _scene(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    conf, left = out_dir / "c.tif", []
    if where == "missing-folder":
        conf = tmp_path / "missing" / "c.tif"
    elif where == "existing-folder":  # its path is a folder
        conf.mkdir()
        left = ["c.tif"]
    else:  # GDAL cannot create its staging file (past every check of the path)
        (out_dir / f".c.tif.stage-{os.getpid()}.tif").mkdir()
    with pytest.raises(OutputError):
        segment(path, PixelEngine(make_spec(tile=32)), out_dir / "labels.tif", confidence=conf)
    assert sorted(p.name for p in out_dir.iterdir()) == left
    assert not (tmp_path / "missing").exists()


def test_abort_never_closes_a_dataset_the_writer_thread_is_using(tmp_path, monkeypatch):
    """Ctrl-C while the writer is inside a slow write (longer than any join timeout)."""
    import segbench.tiler.stages as stage_module
    from segbench.raster import LabelWriter

    events, writing = [], threading.Event()

    class SlowDisk(LabelWriter):
        """The real writer on a disk that takes 3 s per row band."""

        def write_rows(self, row, labels):
            events.append(("write", threading.current_thread().name))
            writing.set()
            time.sleep(3)
            super().write_rows(row, labels)
            events.append(("written", threading.current_thread().name))

        def close(self):
            events.append(("close", threading.current_thread().name))
            return super().close()

        def abort(self):
            events.append(("abort", threading.current_thread().name))
            super().abort()

    monkeypatch.setattr(stage_module, "LabelWriter", SlowDisk)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even in a background job
    try:
        rng = np.random.default_rng(6)
        scene = write_scene(tmp_path / "s.tif", rng.integers(1, 255, (3, 400, 400), dtype=np.uint8))
        threading.Thread(target=lambda: writing.wait(60) and os.kill(os.getpid(), signal.SIGINT),
                         daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            segment(scene, PixelEngine(make_spec(tile=32)), tmp_path / "l.tif", batch=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not [t for t in threading.enumerate() if t.name.startswith("segbench-") and t.is_alive()]
    kinds = [kind for kind, _ in events]
    assert kinds.count("write") == kinds.count("written")  # no write was cut off by a close
    last_write = max(i for i, k in enumerate(kinds) if k == "written")
    first_end = min(i for i, k in enumerate(kinds) if k in ("abort", "close"))
    assert first_end > last_write, events
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def touch_fresh_memory(size: int) -> None:
    """Make ``size`` bytes resident in a new anonymous mapping, then unmap them.

    A fresh mapping always adds pages: a plain numpy array could reuse heap the
    process already holds (after other tests), and then resident memory would
    not grow at all.
    """
    import mmap

    with mmap.mmap(-1, size) as region:
        pages = np.frombuffer(region, np.uint8)
        pages[:] = 1
        del pages


class SpikyEngine(PixelEngine):
    """Touches ``spike`` bytes inside each call and frees them before returning."""

    spike = 200 * 2**20

    def infer(self, tiles):
        touch_fresh_memory(self.spike)
        return super().infer(tiles)


@pytest.fixture
def fresh_peak():
    if not reset_peak():
        pytest.skip("this kernel cannot reset the memory high-water mark")
    return current_rss_bytes()


def test_peak_rss_sees_a_spike_between_batches(tmp_path, fresh_peak):
    path, _ = _scene(tmp_path)
    result = segment(path, SpikyEngine(make_spec(tile=32)), tmp_path / "l.tif", batch=2)
    assert result.peak_rss_bytes >= fresh_peak + 0.9 * SpikyEngine.spike


def test_peak_rss_counts_from_before_segment_began(tmp_path, fresh_peak):
    """The bench measures a child's whole life with the same counter: segment must not reset it."""
    path, _ = _scene(tmp_path)
    touch_fresh_memory(SpikyEngine.spike)  # e.g. loading the engine, before the scene
    result = segment(path, PixelEngine(make_spec(tile=32)), tmp_path / "l.tif", batch=2)
    assert result.peak_rss_bytes >= fresh_peak + 0.9 * SpikyEngine.spike


def test_reading_ahead_in_threads_keeps_the_labels(tmp_path):
    """Several readers (as beside a GPU engine) give the one reader's labels, windows skipped alike,
    with an area of interest and a nodata border."""
    from segbench.raster import AreaOfInterest

    path, _ = _scene(tmp_path, nodata=0)
    aoi = AreaOfInterest({"type": "Polygon", "coordinates": [[
        (500_010, 5_799_990), (500_070, 5_799_990), (500_070, 5_799_940), (500_010, 5_799_940),
        (500_010, 5_799_990)]]}, crs=rasterio.crs.CRS.from_epsg(32633))
    engine = PositionEngine(make_spec(tile=16))
    results = {}
    for threads in (1, 3):
        out = tmp_path / f"labels{threads}.tif"
        results[threads] = segment(path, engine, out, overlap=4, batch=3, aoi=aoi, read_threads=threads,
                                   confidence=tmp_path / f"conf{threads}.tif")
    with rasterio.open(tmp_path / "labels1.tif") as one, rasterio.open(tmp_path / "labels3.tif") as three:
        labels = one.read(1)
        np.testing.assert_array_equal(labels, three.read(1))
    assert (labels == 255).any() and (labels != 255).any()
    assert results[1].skipped == results[3].skipped > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("segbench-read")]


def test_a_failing_read_ahead_stops_cleanly(tmp_path):
    path, _ = _scene(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: header intact, tiles missing
    with pytest.raises(InputError, match="Could not read"):
        segment(path, PixelEngine(make_spec(tile=16)), tmp_path / "labels.tif", batch=2, read_threads=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
    assert not [t for t in threading.enumerate() if t.name.startswith("segbench-read")]
