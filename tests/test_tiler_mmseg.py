"""The tiler with --blend mean reproduces mmseg's own slide_inference."""

import numpy as np
import pytest
import rasterio

pytest.importorskip("mmseg")

from segbench.checkpoint import load_model  # noqa: E402
from segbench.engines.registry import build, load  # noqa: E402
from segbench.export.onnx import export_model  # noqa: E402
from segbench.tiler import segment  # noqa: E402
from segbench.train.models import untrained_checkpoint  # noqa: E402
from segbench.train.synth import synth_scene  # noqa: E402
from tests.conftest import write_scene  # noqa: E402

TILE, STRIDE = 128, 96


def test_mean_blend_equals_mmseg_slide_inference(tmp_path):
    import torch

    checkpoint, spec = untrained_checkpoint("segformer-b0", tmp_path / "m.pth", tile=TILE)
    onnx_path, _, _ = export_model(checkpoint, tmp_path / "m.onnx")
    engine = load(build(onnx_path, "torch-fp32", tmp_path))
    image, _ = synth_scene(448, np.random.default_rng(0))
    pixels = np.round(image[:, :400, :] * 255).astype(np.uint8)  # 400 x 448, not a multiple
    scene = write_scene(tmp_path / "scene.tif", pixels)
    segment(scene, engine, tmp_path / "ours.tif", stride=STRIDE, blend="mean", batch=4)
    with rasterio.open(tmp_path / "ours.tif") as ds:
        ours = ds.read(1)

    model, spec = load_model(checkpoint)
    from mmengine.config import ConfigDict

    model.test_cfg = ConfigDict(mode="slide", crop_size=(TILE, TILE), stride=(STRIDE, STRIDE))
    x = torch.from_numpy(pixels.astype(np.float32))[None]
    x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    meta = dict(img_shape=x.shape[2:], ori_shape=x.shape[2:], pad_shape=x.shape[2:])
    with torch.inference_mode():
        theirs = model.slide_inference(x, [meta]).argmax(1)[0].numpy()
    differ = int((ours != theirs).sum())
    print(f"tiler vs mmseg slide_inference: {differ} of {ours.size} pixels differ")
    assert differ <= ours.size * 1e-4
