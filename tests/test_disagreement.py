"""Where an engine differs from the reference: the map, pixel for pixel; the seam band, from the real
window plan; the bench's table and report."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from segbench.bench.disagreement import (
    Disagreement,
    border_distance,
    compare_scene,
    map_categories,
    map_path,
)
from segbench.engines.base import EngineBase
from segbench.raster import LABEL_NODATA
from segbench.tiler import segment, stride_for
from segbench.tiler.windows import axis_starts
from tests.conftest import make_spec, write_scene

TILE, OVERLAP, CLASSES = 32, 8, 4
SPEC = make_spec(tile=TILE, classes=CLASSES)


class NearestLevel(EngineBase):
    """Labels by the first band's level (four classes), the same in every window: blending changes
    nothing. ``at_borders``: within 2 pixels of a window's edges the next class wins by far, which
    a mean blend with the overlapping window does not undo: errors where the seams are."""

    name, device = "levels", "cpu"
    spec = SPEC

    def __init__(self, at_borders: bool = False, everywhere: float = 0.0) -> None:
        self.at_borders, self.everywhere = at_borders, everywhere

    def infer(self, tiles):
        level = tiles[:, 0] / 256 * CLASSES
        logits = -np.abs(level[:, None] - (np.arange(CLASSES)[None, :, None, None] + 0.5))
        if self.at_borders:
            edge = np.zeros((TILE, TILE), bool)
            edge[:2] = edge[-2:] = True
            edge[:, :2] = edge[:, -2:] = True
            wrong = (logits.argmax(1) + 1) % CLASSES
            logits += 1000 * (np.arange(CLASSES)[None, :, None, None] == wrong[:, None]) * edge
        if self.everywhere:  # errors that know nothing of windows: where the second band says so
            flip = tiles[:, 1] < 256 * self.everywhere
            wrong = (logits.argmax(1) + 1) % CLASSES
            logits += 1000 * (np.arange(CLASSES)[None, :, None, None] == wrong[:, None]) * flip[:, None]
        return logits.astype(np.float32)


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(9)
    cells = rng.integers(0, 256, (3, 10, 12))
    data = np.kron(cells, np.ones((12, 12), int)).astype(np.uint8)[:, :110, :130]
    data[1] = rng.integers(1, 256, data.shape[1:])  # the second band: noise, pixel by pixel
    data[:, :7] = 0  # a nodata collar along the top
    data[:, :, :5] = 0
    return write_scene(tmp_path / "scene.tif", np.maximum(data, 0), nodata=0)


def _labels(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def _segment(scene, engine, out, blend="mean"):
    segment(scene, engine, out, overlap=OVERLAP, blend=blend, batch=3)
    return out


def test_the_map_is_where_the_labels_differ_pixel_for_pixel(tmp_path, scene):
    reference = _segment(scene, NearestLevel(), tmp_path / "ref.labels.tif")
    engine = _segment(scene, NearestLevel(at_borders=True), tmp_path / "seams.labels.tif")
    found = Disagreement(SPEC.classes)
    compare_scene(found, engine, reference, SPEC, TILE, stride_for(TILE, OVERLAP))
    mine, theirs = _labels(engine), _labels(reference)
    valid = (mine != LABEL_NODATA) & (theirs != LABEL_NODATA)
    assert (~valid).any() and valid.any()  # the collar is there
    with rasterio.open(map_path(engine)) as ds:
        values = ds.read(1)
        assert ds.colorinterp[0].name == "palette" and ds.count == 1
    assert map_path(engine) == tmp_path / "seams.disagreement.tif" and found.maps == [str(map_path(engine))]
    assert np.array_equal(values != 0, (mine != theirs) | ~valid)  # 0 exactly where they agree
    assert (values[~valid] == LABEL_NODATA).all()
    differ = valid & (mine != theirs)
    assert np.array_equal(values[differ], theirs[differ] + 1)  # which reference class was lost
    record = found.to_dict()
    assert record["differ"] == int(differ.sum()) > 0 and record["pixels"] == int(valid.sum())
    confusion = np.array(record["confusion"])
    assert confusion.sum() == valid.sum() and np.trace(confusion) == valid.sum() - differ.sum()
    for r in range(CLASSES):  # the border errors turn each class into the next
        for e in range(CLASSES):
            if confusion[r, e] and r != e:
                assert e == (r + 1) % CLASSES
    assert map_categories(SPEC.classes)[0] == "agrees"


def test_the_seam_band_comes_from_the_window_plan(tmp_path, scene):
    """Errors at window borders show a higher rate in the band than elsewhere; errors sprinkled
    anywhere do not."""
    step = stride_for(TILE, OVERLAP)
    distance = border_distance(110, TILE, step)
    starts = axis_starts(110, TILE, step)
    inner = sorted({e for s in starts for e in (s, s + TILE) if 0 < e < 110})
    assert all(distance[e] == 0 and distance[e - 1] == 0 for e in inner)  # both sides of a border
    assert distance[0] > 0 and distance.max() < TILE
    reference = _segment(scene, NearestLevel(), tmp_path / "ref.labels.tif")
    truth = tmp_path / "truth.tif"
    write_scene(truth, _labels(reference)[None])  # the reference is right everywhere
    rates = {}
    engines = {"seams": NearestLevel(at_borders=True), "sprinkled": NearestLevel(everywhere=0.05)}
    for name, engine in engines.items():
        labels = _segment(scene, engine, tmp_path / f"{name}.labels.tif")
        found = Disagreement(SPEC.classes)
        compare_scene(found, labels, reference, SPEC, TILE, step, truth=truth, write_map=False)
        rates[name] = found.to_dict()["seam"]
    seams, sprinkled = rates["seams"], rates["sprinkled"]
    assert seams["differ_in_band"] > 0.3 and seams["differ_elsewhere"] < 0.05
    assert seams["error_in_band"] == seams["differ_in_band"]  # against a truth the reference matches
    assert abs(sprinkled["differ_in_band"] - sprinkled["differ_elsewhere"]) < 0.03
    assert 0.02 < sprinkled["differ_elsewhere"] < 0.08


def test_the_bench_reports_and_tables_the_disagreement(tmp_path):
    """Through the bench: a row per engine with its share, confusion and seams; the map beside its
    labels with --maps, styled for QGIS; the table's differ % and seam err % columns."""
    pytest.importorskip("openvino")
    from segbench.bench.run import BenchConfig, run_bench
    from segbench.bench.tables import table_rows
    from segbench.geo.style import qml_path
    from tests.conftest import tiny_conv_onnx

    model = tiny_conv_onnx(tmp_path / "m.onnx", make_spec(tile=TILE))
    rng = np.random.default_rng(2)
    scene = write_scene(tmp_path / "s.tif", rng.integers(1, 256, (3, 90, 100), dtype=np.uint8))
    labels = write_scene(tmp_path / "l.tif", rng.integers(0, 3, (1, 90, 100), dtype=np.uint8))
    report = run_bench(BenchConfig.flat(model=model, engines=["ort-fp32", "openvino-fp32"], scenes=[scene],
                                   labels=[labels], reference="ort-fp32", out=tmp_path / "bench", batch=2,
                                   quick=True, maps=True), show_table=False)
    rows = {r.name: r for r in report.engines}
    other = rows["openvino-fp32"].disagreement
    assert other.pixels == 90 * 100 and 0 <= other.share < 0.01  # fp32 and fp32: near-ties only
    (path,) = other.maps
    assert path.endswith("s.disagreement.tif") and qml_path(path).is_file()
    assert rows["ort-fp32"].disagreement.share == 0  # the reference, against itself
    assert rows["ort-fp32"].disagreement.seam.error_in_band is not None
    header, cells = table_rows(report)
    assert "differ %" in header and "seam err %" in header
    assert " / " in cells[0][header.index("seam err %")]
