"""The model catalogue: every entry builds from mmseg's config; parameter counts match mmseg."""

import pytest

pytest.importorskip("mmseg")

from segbench.train.catalogue import CATALOGUE  # noqa: E402
from segbench.train.models import build_model, model_cost  # noqa: E402

# Published figures (mmseg 1.2.2's builder, auxiliary head included; FACTS.md).
PUBLISHED = [
    ("segformer-b0", 150, 3.754),
    ("pspnet-r18", 6, 12.788),
    ("fcn-hrnet18s", 6, 3.936),
    pytest.param("pspnet-r50", 150, 49.076, marks=pytest.mark.slow),
    pytest.param("deeplabv3plus-r50", 150, 43.691, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, classes, millions", PUBLISHED)
def test_parameter_counts_match_the_published_figures(name, classes, millions):
    cost = model_cost(name, classes, flops=False)
    assert round(cost.params / 1e6, 3) == millions


@pytest.mark.parametrize("name", [n for n in CATALOGUE if n in ("segformer-b0", "fcn-hrnet18s",
                                                                 "bisenetv2", "stdc1")])
def test_fast_entries_forward_on_cpu_with_four_bands(name):
    import torch

    model = build_model(name, classes=5, bands=4, tile=128)
    with torch.inference_mode():
        out = model._forward(torch.zeros(1, 4, 128, 128))
    out = out[0] if isinstance(out, list | tuple) else out
    assert out.shape[:2] == (1, 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_entry_builds_and_runs_forward(name):
    import torch

    model = build_model(name, classes=6, bands=3, tile=256)
    with torch.inference_mode():
        out = model._forward(torch.zeros(1, 3, 256, 256))
    out = out[0] if isinstance(out, list | tuple) else out
    assert out.shape[1] == 6


def test_gflops_are_counted_on_the_built_model():
    cost = model_cost("segformer-b0", 150, tile=512)
    assert 6.0 < cost.gflops < 10.0  # the SegFormer paper: 8.4 GFLOPs at 512x512
