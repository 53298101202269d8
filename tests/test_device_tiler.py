"""The device tiler: blending and argmax in torch on the engine's device (here ``cpu``; ``cuda``
where there is a GPU), with the labels of the CPU tiler on the same logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

torch = pytest.importorskip("torch", reason="the device tiler is written in torch (the train extra)")

from segbench.engines.base import EngineBase  # noqa: E402
from segbench.engines.registry import availability, build, load  # noqa: E402
from segbench.errors import InputError, RuntimeMissingError  # noqa: E402
from segbench.raster import LABEL_NODATA  # noqa: E402
from segbench.tiler import segment  # noqa: E402
from segbench.tiler.accumulate import BandAccumulator  # noqa: E402
from segbench.tiler.blend import axis_weights  # noqa: E402
from segbench.tiler.device import DeviceAccumulator, runs_on_device  # noqa: E402
from segbench.tiler.windows import Window, axis_starts  # noqa: E402
from tests.conftest import make_spec, tiny_conv_onnx, tiny_conv_pt2, write_scene  # noqa: E402

TILE = 32
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (benchmarks/bench_gpu.py measures "
                                                "the GPU path on one)")


@pytest.fixture(scope="module")
def torch_engine_path(tmp_path_factory) -> Path:
    return tiny_conv_pt2(tmp_path_factory.mktemp("torch") / "model.pt2", make_spec(classes=5, tile=TILE))


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _blend_both(height: int, width: int, blend: str, seed: int, classes: int = 5, step: int = 24,
                near_ties: bool = False):
    """Every window of a scene through both accumulators, with the same random logits and masks."""
    rng = np.random.default_rng(seed)
    rows, cols = axis_starts(height, TILE, step), axis_starts(width, TILE, step)
    wy = dict(zip(rows, axis_weights(rows, TILE, height, blend), strict=True))
    wx = dict(zip(cols, axis_weights(cols, TILE, width, blend), strict=True))
    kw = dict(confidence=True, probabilities=True)
    host = BandAccumulator(height, width, classes, TILE, LABEL_NODATA, threads=1, **kw)
    device = DeviceAccumulator("cpu", height, width, classes, TILE, LABEL_NODATA, **kw)
    outs = {"host": [], "device": []}
    for r in rows:
        for c in cols:
            logits = rng.normal(0, 3, (classes, TILE, TILE)).astype(np.float32)
            if near_ties:  # two classes a hair apart: only exact arithmetic gives the same argmax
                logits[1] = logits[0] + rng.choice([-1, 1], (TILE, TILE)) * 1e-6
            valid = rng.random((TILE, TILE)) > 0.05
            for name, acc, out in (("host", host, logits), ("device", device, torch.from_numpy(logits))):
                flushed = acc.flush(r) if r > acc.top else None
                acc.add(Window(r, c, TILE, TILE), out, wy[r], wx[c], valid)
                if flushed:
                    outs[name].append(flushed)
    for name, acc in (("host", host), ("device", device)):
        outs[name].append(acc.finish())
    return outs["host"], outs["device"]


@pytest.mark.parametrize("blend", ["cosine", "mean", "crop"])
@pytest.mark.parametrize("size", [(77, 101), (32, 32), (20, 150)])
def test_device_accumulator_gives_the_cpu_labels(blend, size):
    host, device = _blend_both(*size, blend, seed=sum(size), near_ties=True)
    assert [f[0] for f in host] == [f[0] for f in device]
    for (_, labels, conf, probs), (_, dlabels, dconf, dprobs) in zip(host, device, strict=True):
        assert dlabels.dtype == np.uint8 and np.array_equal(labels, dlabels)
        assert (labels == LABEL_NODATA).any()  # the masks were applied
        # exp is computed differently (native: a polynomial; torch: libm), so +-1 of rounding
        assert np.abs(conf.astype(int) - dconf).max() <= 1
        assert np.abs(probs.astype(int) - dprobs).max() <= 1
        assert np.array_equal(probs == LABEL_NODATA, dprobs == LABEL_NODATA)


def _scene(tmp_path: Path, h: int = 150, w: int = 170) -> Path:
    data = np.random.default_rng(7).integers(0, 256, (3, h, w), dtype=np.uint8)
    data[:, :, :9] = 0  # a nodata border
    return write_scene(tmp_path / "scene.tif", data, nodata=0)


@pytest.mark.parametrize("batch", [1, 4])
def test_segment_on_device_equals_the_cpu_tiler(tmp_path, torch_engine_path, batch):
    scene = _scene(tmp_path)
    engine = load(torch_engine_path)
    assert runs_on_device(engine, None) is False  # a CPU engine blends on the host by default
    outputs = {}
    for on_device in (False, True):
        d = tmp_path / str(on_device)
        d.mkdir()
        segment(scene, engine, d / "labels.tif", overlap=12, batch=batch, on_device=on_device,
                confidence=d / "conf.tif", probabilities=d / "probs.tif")
        outputs[on_device] = [_read(d / n) for n in ("labels.tif", "conf.tif", "probs.tif")]
    engine.close()
    (labels, conf, probs), (dlabels, dconf, dprobs) = outputs[False], outputs[True]
    assert np.array_equal(labels, dlabels)
    assert (labels[0, :, :9] == LABEL_NODATA).all() and len(np.unique(labels)) > 3
    assert np.abs(conf.astype(int) - dconf).max() <= 1
    assert np.abs(probs.astype(int) - dprobs).max() <= 1


def test_the_torch_engine_returns_tensors_on_its_device(torch_engine_path):
    engine = load(torch_engine_path)
    tiles = np.random.default_rng(0).uniform(0, 255, (3, 3, TILE, TILE)).astype(np.float32)
    out = engine.infer_tensor(torch.from_numpy(tiles))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 5, TILE, TILE)
    assert np.array_equal(out.numpy(), engine.infer(tiles))
    with pytest.raises(InputError, match="float32 tensors of shape"):
        engine.infer_tensor(torch.from_numpy(tiles).double())
    engine.close()


def test_an_engine_without_device_tensors_blends_on_the_host(tmp_path):
    onnx_path = tiny_conv_onnx(tmp_path / "model.onnx", make_spec(tile=TILE))
    engine = load(build(onnx_path, "ort-fp32", tmp_path))
    assert runs_on_device(engine, None) is False
    with pytest.raises(InputError, match="cannot return logits as tensors"):
        segment(_scene(tmp_path), engine, tmp_path / "labels.tif", on_device=True)
    assert not (tmp_path / "labels.tif").exists()
    engine.close()


class FailsOnThirdBatch(EngineBase):
    """A real torch engine whose third device batch fails, as a GPU running out of memory would."""

    def __init__(self, engine) -> None:
        self.engine, self.spec, self.name, self.device = engine, engine.spec, engine.name, "cpu"
        self.device_tensors, self.calls = True, 0

    def infer(self, tiles):
        return self.engine.infer(tiles)

    def infer_tensor(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.engine.infer_tensor(x)

    def close(self):
        self.engine.close()


def test_a_batch_failing_on_the_device_stops_cleanly(tmp_path, torch_engine_path):
    engine = FailsOnThirdBatch(load(torch_engine_path))
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="out of memory"):
        segment(_scene(tmp_path), engine, out, overlap=12, batch=2, on_device=True)
    assert engine.calls == 3
    assert not any(out.parent.iterdir())  # nothing left, not even temporaries
    engine.close()


def test_gpu_engines_say_what_they_need_on_a_cpu_machine():
    if CUDA:
        pytest.skip("this machine has a GPU")
    for name in ("torch-cuda-fp32", "torch-fp16", "torch-bf16", "torch-compile-fp16"):
        assert "needs a CUDA GPU" in availability(name)
    reason = availability("ort-cuda-fp32")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "onnxruntime-gpu" in reason
        assert availability("ort-cuda-fp32", run=False) is None  # it builds here: the graph is checked
        with pytest.raises(RuntimeMissingError, match="onnxruntime-gpu"):
            from segbench.engines.registry import _require, get_kind

            _require(get_kind("ort-cuda-fp32"), run=True)


@needs_cuda
def test_segment_on_cuda_equals_the_cpu_tiler(tmp_path, torch_engine_path):
    scene = _scene(tmp_path, 600, 700)
    cpu = load(torch_engine_path)
    segment(scene, cpu, tmp_path / "cpu.tif", overlap=12, batch=8)
    cpu.close()
    gpu = load(torch_engine_path, device="cuda:0")
    assert runs_on_device(gpu, None) is True
    segment(scene, gpu, tmp_path / "gpu.tif", overlap=12, batch=8)
    gpu.close()
    agree = (_read(tmp_path / "cpu.tif") == _read(tmp_path / "gpu.tif")).mean()
    assert agree >= 0.999  # cuDNN's convolutions round differently from the CPU's


@needs_cuda
@pytest.mark.parametrize("engine", ["torch-fp16", "torch-bf16"])
def test_half_precision_agrees_with_fp32_on_cuda(tmp_path, engine):
    fp32 = tiny_conv_pt2(tmp_path / "fp32.pt2", make_spec(classes=5, tile=TILE))
    half = tiny_conv_pt2(tmp_path / "half.pt2", make_spec(classes=5, tile=TILE), engine=engine)
    scene = _scene(tmp_path, 400, 400)
    for path, out in ((fp32, "a.tif"), (half, "b.tif")):
        with load(path, device="cuda:0") as e:
            segment(scene, e, tmp_path / out, overlap=12, batch=8)
    assert (_read(tmp_path / "a.tif") == _read(tmp_path / "b.tif")).mean() >= 0.995
