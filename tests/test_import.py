"""segbench import: mmseg configs with model-zoo and work-dir checkpoints, checked against mmseg itself."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmseg")

import torch  # noqa: E402

from segbench.checkpoint import load_model  # noqa: E402
from segbench.errors import InputError  # noqa: E402
from segbench.mmseg.configs import list_configs, shipped_configs_root  # noqa: E402
from segbench.mmseg.importer import import_model  # noqa: E402
from segbench.spec import ISPRS_CLASSES, ModelSpec  # noqa: E402
from tests.conftest import require_shared  # noqa: E402

PSPNET_POTSDAM = "pspnet/pspnet_r18-d8_4xb4-80k_potsdam-512x512.py"
DEEPLAB_VAIHINGEN = "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_vaihingen-512x512.py"
SEGFORMER_ADE = "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py"


def _config(relative: str) -> Path:
    return shipped_configs_root() / relative


def _slide_config(relative: str, folder: Path, crop: int = 512, stride: int = 341) -> Path:
    """A user's config: a shipped one inherited with mmseg's sliding-window test_cfg, testing
    scenes at their own resolution (the ADE20K pipeline would resize a 1024^2 image to 512^2)."""
    path = folder / f"slide_{Path(relative).name}"
    path.write_text(f"_base_ = ['{_config(relative)}']\n"
                    f"model = dict(test_cfg=dict(mode='slide', crop_size=({crop}, {crop}), "
                    f"stride=({stride}, {stride})))\n"
                    "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]\n")
    return path


def _model_zoo_checkpoint(relative: str, path: Path, seed: int = 0):
    """A model-zoo style file (state_dict + meta) of a model built by mmseg's own init_model."""
    from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu
    from mmseg.apis import init_model

    torch.manual_seed(seed)
    model = init_model(str(_config(relative)), None, device="cpu")
    model.init_weights()
    torch.save({"meta": {"mmseg_version": "1.2.2"},
                "state_dict": weights_to_cpu(get_state_dict(model))}, path)
    return model


@pytest.fixture(scope="module")
def pspnet_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "pspnet_r18_potsdam.pth"
    return path, _model_zoo_checkpoint(PSPNET_POTSDAM, path)


def test_list_configs_finds_the_shipped_ones():
    found = [str(p.relative_to(shipped_configs_root())) for p in list_configs("potsdam")]
    assert PSPNET_POTSDAM in found and all("potsdam" in f for f in found)
    assert not any("_base_" in f for f in found)


def test_model_zoo_checkpoint_imports_with_the_configs_spec(pspnet_zoo, tmp_path):
    checkpoint, reference = pspnet_zoo
    whole = import_model(_config(PSPNET_POTSDAM), checkpoint, tmp_path / "whole.pth").spec
    assert whole.tile == 512 and whole.stride is None  # shipped configs test whole 512 crops
    result = import_model(_slide_config(PSPNET_POTSDAM, tmp_path, 256, 192), checkpoint,
                          tmp_path / "psp.pth")
    spec = result.spec
    assert spec.classes == ISPRS_CLASSES and result.classes_from == "dataset PotsdamDataset"
    assert spec.tile == 256 and spec.stride == 192 and spec.reduce_zero_label
    assert spec.ignore_index == 255 and spec.bands == (1, 2, 3)
    assert spec.mean == pytest.approx((123.675, 116.28, 103.53))
    assert ModelSpec.load(tmp_path / "psp.pth") == spec
    model, _ = load_model(tmp_path / "psp.pth")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.rand(1, 3, 128, 128) * 255
    with torch.inference_mode():
        assert torch.equal(model._forward(x), reference.eval()._forward(x))


@pytest.mark.parametrize("relative, classes, from_", [
    (DEEPLAB_VAIHINGEN, ISPRS_CLASSES, "dataset ISPRSDataset"),
    (SEGFORMER_ADE, None, "dataset ADE20KDataset"),
])
def test_other_architectures_import(relative, classes, from_, tmp_path):
    checkpoint = tmp_path / "zoo.pth"
    reference = _model_zoo_checkpoint(relative, checkpoint)
    result = import_model(_config(relative), checkpoint, tmp_path / "out.pth")
    assert result.classes_from == from_ and result.spec.tile == 512
    assert result.spec.classes == (classes or result.spec.classes)
    assert result.spec.num_classes == (6 if classes else 150)
    model, _ = load_model(tmp_path / "out.pth")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def _png_to_geotiff(png: Path, out: Path) -> Path:
    from PIL import Image

    from tests.conftest import write_scene

    rgb = np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1)
    return write_scene(out, np.ascontiguousarray(rgb))


@pytest.mark.parametrize("relative, crop", [
    (PSPNET_POTSDAM, ("pseudo_potsdam_dataset", "img_dir", "2_10_0_0_512_512.png")),
    (SEGFORMER_ADE, ("pseudo_loveda_dataset", "img_dir", "0.png")),  # 1024^2: several windows
])
def test_imported_model_segments_like_mmseg_inference(relative, crop, tmp_path):
    """segbench (torch-fp32 engine, mean blend, the config's crop and stride) = mmseg's inference_model."""
    from mmseg.apis import inference_model, init_model

    from segbench.engines.registry import build, load
    from segbench.export.onnx import export_model
    from segbench.raster import read_all
    from segbench.tiler import segment

    png = require_shared("mmseg", *crop)
    checkpoint = tmp_path / "zoo.pth"
    _model_zoo_checkpoint(relative, checkpoint, seed=3)
    config = _slide_config(relative, tmp_path)
    imported = import_model(config, checkpoint, tmp_path / "model.pth").spec
    assert (imported.tile, imported.stride) == (512, 341)
    onnx_path, _, _ = export_model(tmp_path / "model.pth", tmp_path / "model.onnx")
    engine = load(build(onnx_path, "torch-fp32"))
    try:
        result = segment(_png_to_geotiff(png, tmp_path / "scene.tif"), engine, tmp_path / "labels.tif",
                         blend="mean", batch=2)  # the window stride defaults to the config's
    finally:
        engine.close()
    ours = read_all(result.output)[0]

    model = init_model(str(config), str(checkpoint), device="cpu")
    theirs = inference_model(model, str(png)).pred_sem_seg.data[0].numpy()
    agreement = float((ours == theirs).mean())
    print(f"{Path(relative).stem} on {png.name}: {agreement:.6%} of {ours.size} pixels agree")
    assert agreement >= 0.9999, f"{agreement:.6f} of {ours.size} pixels agree"
    assert len(np.unique(theirs)) > 1  # a constant map would agree trivially


def _work_dir_checkpoint(relative: str, work: Path) -> tuple[Path, dict]:
    """A real work-dir checkpoint: mmengine's Runner trains the config's model 2 iterations
    (on the real Potsdam crop, 256^2 crops) and saves ``iter_2.pth`` as tools/train.py does."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from segbench.mmseg.configs import deployable

    data = require_shared("mmseg", "pseudo_potsdam_dataset")
    cfg = Config.fromfile(str(_config(relative)))
    model = deployable(cfg.model.to_dict())
    model["data_preprocessor"]["size"] = (256, 256)
    cfg.model = model
    cfg.work_dir = str(work)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
                dict(type="RandomCrop", crop_size=(256, 256), cat_max_ratio=0.75),
                dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"),
                dict(type="PackSegInputs")]
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)  # BN in pooling
    cfg.train_dataloader.dataset = dict(type="PotsdamDataset", data_root=str(data), pipeline=pipeline,
                                        data_prefix=dict(img_path="img_dir", seg_map_path="ann_dir"))
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint.update(interval=2, by_epoch=False)
    cfg.default_hooks.logger.update(interval=1)
    cfg.param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=2, by_epoch=False)]
    trained = Runner.from_cfg(cfg).train()
    return work / "iter_2.pth", {k: v.detach().clone() for k, v in trained.state_dict().items()}


@pytest.mark.parametrize("relative, classes", [
    (PSPNET_POTSDAM, ISPRS_CLASSES),
    (DEEPLAB_VAIHINGEN, ISPRS_CLASSES),
    (SEGFORMER_ADE, None),  # trained on the Potsdam crop, but its config's dataset is ADE20K's
])
def test_work_dir_checkpoint_loads_with_weights_only(relative, classes, tmp_path):
    path, trained = _work_dir_checkpoint(relative, tmp_path / "work_dir")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # mmengine's message hub: why an allow-list is needed
    payload_keys = set(torch.load(path, weights_only=False))  # test-only look at what mmengine wrote
    assert {"message_hub", "optimizer", "meta", "state_dict"} <= payload_keys
    result = import_model(_config(relative), path, tmp_path / "trained.pth")
    model, _ = load_model(tmp_path / "trained.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    assert result.spec.num_classes == (6 if classes else 150)
    assert result.classes_from == ("checkpoint meta" if classes else "dataset ADE20KDataset")


# -- bad inputs: one sentence, nothing under the output name ------------------------------------

class _ReachesPastTheStatistics:
    """Pickles as getattr(HistoryBuffer, '__init__'): the getattr mmengine uses, aimed elsewhere."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer

        return getattr, (HistoryBuffer, "__init__")


def _refused(tmp_path, config, checkpoint, match, **options):
    out = tmp_path / "out.pth"
    with pytest.raises(InputError, match=match):
        import_model(config, checkpoint, out, **options)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bad_configs_are_refused(pspnet_zoo, tmp_path):
    checkpoint, _ = pspnet_zoo
    not_config = tmp_path / "notes.py"
    not_config.write_text("x = 1\n")
    _refused(tmp_path, not_config, checkpoint, "defines no 'model'")
    _refused(tmp_path, tmp_path / "missing.py", checkpoint, "does not exist")
    text = tmp_path / "config.txt"
    text.write_text("model = dict(type='EncoderDecoder')\n")
    _refused(tmp_path, text, checkpoint, r"not an mmseg config \(a \.py file\)")
    unbuildable = tmp_path / "unbuildable.py"
    unbuildable.write_text(f"_base_ = ['{_config(PSPNET_POTSDAM)}']\n"
                           "model = dict(backbone=dict(type='NoSuchBackbone'))\n")
    _refused(tmp_path, unbuildable, checkpoint, "mmseg cannot build the model")


def test_bad_checkpoints_are_refused(pspnet_zoo, tmp_path):
    checkpoint, _ = pspnet_zoo
    config = _config(PSPNET_POTSDAM)
    other = tmp_path / "segformer.pth"
    _model_zoo_checkpoint(SEGFORMER_ADE, other)
    _refused(tmp_path, config, other, r"another architecture.*missing \(backbone\.stem")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    _refused(tmp_path, config, truncated, "corrupt")
    _refused(tmp_path, config, tmp_path / "absent.pth", "does not exist")
    foreign = tmp_path / "foreign.pth"
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "meta": {"when": datetime.date(2026, 1, 1)}}, foreign)
    _refused(tmp_path, config, foreign, "holds a datetime.date object")
    torch.save({**state, "meta": {"reach": _ReachesPastTheStatistics()}}, foreign)
    _refused(tmp_path, config, foreign, "holds a builtins.getattr object")
    _refused(tmp_path, config, checkpoint, "names 3 classes but the model .* predicts 6",
             classes=["a", "b", "c"])


def test_an_architecture_onnx_cannot_express_is_refused_naming_the_op(tmp_path):
    """PSANet's PSAMask is a compiled mmcv kernel: import works, export names the op."""
    from segbench.errors import ExportError
    from segbench.export.onnx import export_model

    config = tmp_path / "psanet_r18.py"
    config.write_text(
        f"_base_ = ['{_config('psanet/psanet_r50-d8_4xb4-80k_ade20k-512x512.py')}']\n"
        "model = dict(backbone=dict(depth=18),\n"
        "             decode_head=dict(in_channels=512, channels=128, mask_size=(31, 31)),\n"
        "             auxiliary_head=dict(in_channels=256, channels=64))\n")
    checkpoint = tmp_path / "zoo.pth"
    _model_zoo_checkpoint(str(config), checkpoint)
    import_model(config, checkpoint, tmp_path / "psa.pth", tile=128)
    with pytest.raises(ExportError, match=r"compiled op PSAMask \(mmcv\.ops\.psa_mask\)"):
        export_model(tmp_path / "psa.pth", tmp_path / "psa.onnx")
    assert not (tmp_path / "psa.onnx").exists()


def test_cli_import_and_list(pspnet_zoo, tmp_path):
    checkpoint, _ = pspnet_zoo
    cli = [sys.executable, "-m", "segbench.cli"]
    listed = subprocess.run([*cli, "import", "--list-configs", "pspnet*potsdam"], capture_output=True,
                            text=True, check=True)
    assert PSPNET_POTSDAM in listed.stdout
    done = subprocess.run([*cli, "import", str(_config(PSPNET_POTSDAM)), str(checkpoint), "-o",
                           str(tmp_path / "m.pth"), "--classes", "a,b,c,d,e,f"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "6 classes (option)" in done.stdout and ModelSpec.load(tmp_path / "m.pth").classes[0] == "a"
    bad = subprocess.run([*cli, "import", str(_config(PSPNET_POTSDAM)), str(tmp_path / "nope.pth"),
                          "-o", str(tmp_path / "x.pth")], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
