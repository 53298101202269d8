"""Training with mmseg's Runner on synthetic scenes: multi-band input, the spec, every network."""

import numpy as np
import pytest

pytest.importorskip("mmseg")

from segbench.bench.evaluate import evaluate  # noqa: E402
from segbench.checkpoint import load_model  # noqa: E402
from segbench.raster import read_all  # noqa: E402
from segbench.spec import ModelSpec  # noqa: E402
from segbench.train.catalogue import CATALOGUE  # noqa: E402
from segbench.train.config import Recipe  # noqa: E402
from segbench.train.layout import DatasetInfo  # noqa: E402
from segbench.train.runner import train  # noqa: E402
from segbench.train.synth import PIXEL_SIZE, SynthOptions, synthesize_dataset  # noqa: E402


@pytest.fixture(scope="module")
def rgbn_uint16(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgbn")
    return synthesize_dataset(root, SynthOptions(train=2, val=1, test=0, size=96, test_size=96,
                                                 bands=4, dtype="uint16"))


def test_four_band_uint16_scenes_train_and_the_spec_records_them(rgbn_uint16, tmp_path):
    import torch

    checkpoint, spec = train("fcn-hrnet18s", rgbn_uint16, tmp_path, Recipe(iters=3, batch=2, crop=64),
                             progress=False)
    info = DatasetInfo.load(rgbn_uint16).with_stats()
    assert spec.bands == (1, 2, 3, 4) and spec.input_dtype == "uint16"
    assert spec.mean == pytest.approx(info.mean) and len(spec.std) == 4
    assert max(spec.mean) > 255  # raw uint16 units, not ImageNet's RGB statistics
    assert spec.gsd_m == pytest.approx(PIXEL_SIZE)  # the training scenes' ground sample distance
    assert ModelSpec.load(checkpoint) == spec
    model, loaded = load_model(checkpoint)
    assert loaded.tile == 64 and loaded.checkpoint_digest == spec.checkpoint_digest
    with torch.inference_mode():
        out = model._forward(torch.zeros(1, 4, 64, 64))
    assert out.shape[1] == 6
    metrics = evaluate(checkpoint, rgbn_uint16, "val")
    (_, label_path), = info.pairs("val")
    labels = read_all(label_path)[0]
    confusion = np.asarray(metrics["confusion"])
    assert metrics["scenes"] == 1 and metrics["pixels"] == int((labels != 255).sum())
    assert confusion[:6].sum(1).tolist() == np.bincount(labels[labels != 255], minlength=6).tolist()
    assert metrics["aAcc"] == pytest.approx(np.trace(confusion[:6]) / confusion[:6].sum())
    assert list(metrics["per_class"]) == list(spec.classes)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb")
    return synthesize_dataset(root, SynthOptions(train=2, val=1, test=0, size=128, test_size=128))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_network_trains_a_few_iterations(rgb, tmp_path, name):
    import torch

    checkpoint, spec = train(name, rgb, tmp_path, Recipe(iters=2, batch=2, crop=128), progress=False)
    assert spec.architecture == name and ModelSpec.load(checkpoint) == spec
    model, _ = load_model(checkpoint)  # the checkpoint is a usable model of the dataset's classes
    with torch.inference_mode():
        logits = model._forward(torch.zeros(1, 3, 128, 128))
    logits = logits[0] if isinstance(logits, list | tuple) else logits
    assert logits.shape[1] == 6 and 128 // logits.shape[-1] == spec.output_stride
    assert torch.isfinite(logits).all()


def test_an_interrupted_run_resumes_to_the_same_weights(rgb, tmp_path, monkeypatch):
    import torch

    from segbench.errors import InputError
    from segbench.train import resume

    recipe = Recipe(iters=4, batch=2, crop=64, val_interval=2)
    straight = tmp_path / "straight"
    train("fcn-hrnet18s", rgb, straight, recipe, progress=False)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(InputError, match="Nothing to resume"):
        train("fcn-hrnet18s", rgb, interrupted, recipe, progress=False, resume=True)
    save = resume._save

    def save_then_stop(runner, path, done, run):
        save(runner, path, done, run)
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train("fcn-hrnet18s", rgb, interrupted, recipe, progress=False)
    monkeypatch.undo()
    assert resume.load_state(interrupted / resume.STATE_NAME)["iter"] == 2
    assert not (interrupted / "model.pth").exists()
    with pytest.raises(InputError, match="another run"):
        train("fcn-hrnet18s", rgb, interrupted, Recipe(iters=4, batch=2, crop=96, val_interval=2),
              progress=False, resume=True)

    checkpoint, _ = train("fcn-hrnet18s", rgb, interrupted, recipe, progress=False, resume=True)
    a = resume.load_state(straight / resume.STATE_NAME)
    b = resume.load_state(interrupted / resume.STATE_NAME)
    assert b["iter"] == 4 and checkpoint.is_file()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    momentum = a["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, b["optimizer"]["state"][0]["momentum_buffer"])


@pytest.mark.parametrize("iters", [1, 2, 107, 80_000])
@pytest.mark.parametrize("name", ["segformer-b0", "pspnet-r18"])
def test_schedules_cover_any_run_length(name, iters):
    from segbench.train.catalogue import get_entry
    from segbench.train.config import optimizer_config

    _, schedules = optimizer_config(get_entry(name), Recipe(iters=iters))
    assert schedules[0]["begin"] == 0 and schedules[-1]["end"] == iters
    for s in schedules:
        assert s["begin"] < s["end"], s  # mmengine refuses empty schedules
    for a, b in zip(schedules, schedules[1:], strict=False):
        assert a["end"] == b["begin"]


def test_pretrained_backbone_is_where_training_starts(rgb, tmp_path):
    """train --pretrained: the backbone starts from the file's weights (lr ~0: they stay there)."""
    import torch

    from segbench.errors import InputError
    from segbench.train.models import build_model

    donor = build_model("segformer-b0", classes=6, tile=64, seed=5).backbone.state_dict()
    pretrained = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": donor}, pretrained)  # a backbone file, as mmseg's mit_b0 is
    checkpoint, _ = train("segformer-b0", rgb, tmp_path / "run", Recipe(iters=1, batch=2, crop=64, lr=1e-12),
                          progress=False, pretrained=pretrained)
    model, _ = load_model(checkpoint)
    start = build_model("segformer-b0", classes=6, tile=64, seed=0).backbone.state_dict()
    key = "layers.0.0.projection.weight"
    trained = model.backbone.state_dict()
    assert torch.allclose(trained[key], donor[key], atol=1e-6)
    assert not torch.allclose(trained[key], start[key], atol=1e-2)  # not the random initialisation

    resnet = tmp_path / "resnet.pth"
    torch.save({"state_dict": build_model("pspnet-r18", classes=6, tile=64).backbone.state_dict()}, resnet)
    with pytest.raises(InputError, match=r"does not fit the MixVisionTransformer backbone: 0 of \d+ "
                                         r"weights match; \d+ missing \(layers\.0\.0\.projection"):
        train("segformer-b0", rgb, tmp_path / "bad", Recipe(iters=1, batch=2, crop=64), progress=False,
              pretrained=resnet)


def test_one_training_on_two_processes_on_gloo_completes_and_its_checkpoint_loads(rgb, tmp_path):
    from segbench.errors import InputError
    from segbench.train import resume

    recipe = Recipe(iters=4, batch=1, crop=64, val_interval=2)
    out = tmp_path / "two"
    checkpoint, spec = train("fcn-hrnet18s", rgb, out, recipe, progress=False, gpus=2)
    state = resume.load_state(out / resume.STATE_NAME)
    assert state["iter"] == 4 and state["run"]["processes"] == 2  # saved once, by rank 0
    assert spec.architecture == "fcn-hrnet18s" and ModelSpec.load(checkpoint) == spec
    assert evaluate(checkpoint, rgb, "val")["scenes"] >= 1  # the checkpoint loads and segments
    assert not list(out.glob("*.part-*"))
    with pytest.raises(InputError, match="another run"):  # 2 x 1 images per step is not 1 x 1
        train("fcn-hrnet18s", rgb, out, recipe, progress=False, resume=True)
