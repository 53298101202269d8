"""The demo flow end to end at tiny sizes: synth -> train -> export -> build -> segment -> bench."""

import json

import pytest
import rasterio

pytest.importorskip("mmseg")

from segbench.cli import main  # noqa: E402
from segbench.spec import ModelSpec  # noqa: E402

ENGINES = ["torch-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "-o", str(out), "--engines", ",".join(ENGINES)]) == 0
    return out


def test_export_matches_torch(demo):
    verification = ModelSpec.load(demo / "model" / "model.onnx").build.options["verification"]
    assert verification["label_agreement"] >= 0.999 and verification["max_abs_diff"] < 1e-3


def test_every_engine_ran_and_is_accurate(demo):
    report = json.loads((demo / "bench" / "report.json").read_text())
    rows = {r["name"]: r for r in report["engines"]}
    assert set(rows) == set(ENGINES) and all(r["status"] == "ok" for r in rows.values())
    # Clearly above the best constant answer (every pixel the most frequent class).
    baseline = _majority_baseline(demo)
    assert rows["torch-fp32"]["accuracy"]["miou"] > baseline["miou"] + 0.05
    assert rows["torch-fp32"]["accuracy"]["oa"] > baseline["oa"] + 0.05
    for name in ("ort-fp32", "openvino-fp32"):
        assert rows[name]["accuracy"]["agreement"] >= 0.999
    for name in ("ort-int8", "openvino-int8"):
        assert rows[name]["accuracy"]["agreement"] >= 0.95
    for row in rows.values():
        assert row["latency"]["batch1"]["p50"] > 0 and row["memory"]["peak_rss_bytes"] > 0
        assert row["scene"]["megapixels_per_s"] > 0
    assert any(r["rank"] == 1 for r in rows.values())
    assert report["model"]["params"] > 1e6 and report["model"]["gflops"] > 0
    for ext in ("md", "csv", "png"):
        assert (demo / "bench" / f"report.{ext}").stat().st_size > 0


def _majority_baseline(demo):
    import numpy as np

    from segbench.bench.metrics import ConfusionMatrix

    label_path = next((demo / "data" / "test" / "labels").glob("*.tif"))
    with rasterio.open(label_path) as ds:
        labels = ds.read(1)
    cm = ConfusionMatrix(6)
    cm.update(np.full_like(labels, np.bincount(labels[labels < 6].ravel()).argmax()), labels)
    return cm.metrics([str(i) for i in range(6)])


def test_labels_keep_the_scene_georeferencing(demo):
    scene = next((demo / "data" / "test" / "images").glob("*.tif"))
    for engine in ENGINES:
        with rasterio.open(demo / "bench" / engine / f"{scene.stem}.labels.tif") as out, \
                rasterio.open(scene) as src:
            assert (out.crs, out.transform, out.width, out.height) == \
                (src.crs, src.transform, src.width, src.height)
            assert out.read(1).max() < 6
