"""segbench data prepare: users' scenes and the official releases, checked on real crops."""

import zipfile

import numpy as np
import pytest
import rasterio
from PIL import Image

from segbench.errors import InputError, OutputError
from segbench.train.layout import DatasetInfo
from segbench.train.prepare import prepare_isprs, prepare_loveda, prepare_scenes
from tests.conftest import require_shared, write_scene

# mmseg's converters map these ISPRS colours (RGB) to the values 0..6 of their PNGs.
MMSEG_ISPRS_COLOURS = [(0, 0, 0), (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0),
                       (255, 255, 0), (255, 0, 0)]


def _scene_pair(tmp_path, name, labels, nodata_cols=0):
    rng = np.random.default_rng(len(name))
    image = rng.integers(1, 4000, (3, *labels.shape), dtype=np.uint16)
    image[:, :, :nodata_cols] = 0
    return (write_scene(tmp_path / f"{name}.tif", image, nodata=0),
            write_scene(tmp_path / f"{name}_labels.tif", labels[None], nodata=255))


def test_user_scenes_split_by_scene_with_nodata_ignored(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, (100, 120), dtype=np.uint8)
    a = _scene_pair(tmp_path, "a", labels, nodata_cols=30)
    b = _scene_pair(tmp_path, "b", labels)
    info = prepare_scenes([a[0], b[0]], [a[1], b[1]], tmp_path / "ds", classes=["x", "y", "z"],
                          val_every=2, window=64)
    train, val = info.pairs("train"), info.pairs("val")
    assert train and val
    assert all(p[0].name.startswith("a_") for p in train) and all(p[0].name.startswith("b_") for p in val)
    assert info.dtype == "uint16" and len(info.mean) == 3 and info.mean[0] > 255
    image, label = next(p for p in train if p[0].name == "a_0_0.tif")
    with rasterio.open(image) as im, rasterio.open(label) as lb, rasterio.open(a[0]) as src:
        assert im.transform == src.transform and im.crs == src.crs
        lab = lb.read(1)
    assert (lab[:, :30] == 255).all()  # the image's nodata is ignored in the labels
    np.testing.assert_array_equal(lab[:, 30:], labels[:64, 30:64])


def test_bad_user_scenes_name_the_file(tmp_path):
    labels = np.zeros((50, 50), np.uint8)
    a = _scene_pair(tmp_path, "a", labels)
    shifted = write_scene(tmp_path / "shifted.tif", labels[None], pixel=0.3)
    with pytest.raises(InputError, match="shifted.tif does not align"):
        prepare_scenes([a[0]], [shifted], tmp_path / "ds1", classes=["x", "y"])
    bad = _scene_pair(tmp_path, "bad", np.full((50, 50), 7, np.uint8))
    with pytest.raises(InputError, match="bad_labels.tif has class value 7"):
        prepare_scenes([bad[0]], [bad[1]], tmp_path / "ds2", classes=["x", "y"])
    empty = _scene_pair(tmp_path, "empty", np.full((50, 50), 255, np.uint8))
    with pytest.raises(InputError, match="training split"):
        prepare_scenes([empty[0]], [empty[1]], tmp_path / "ds3", classes=["x", "y"])


def test_refused_input_leaves_no_folder_behind(tmp_path):
    """A refused dataset leaves nothing at the output path, not even empty folders."""
    labels = np.zeros((50, 50), np.uint8)
    a = _scene_pair(tmp_path, "a", labels)
    bad = _scene_pair(tmp_path, "bad", np.full((50, 50), 7, np.uint8))
    out = tmp_path / "nested" / "ds"
    with pytest.raises(InputError, match="class value 7"):
        prepare_scenes([a[0], bad[0]], [a[1], bad[1]], out, classes=["x", "y"], val_every=2)
    assert not out.exists() and not out.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (*a, *bad))  # no hidden temporary folder either


def test_existing_dataset_is_never_overwritten(tmp_path):
    labels = np.random.default_rng(0).integers(0, 2, (60, 60), dtype=np.uint8)
    a = _scene_pair(tmp_path, "a", labels)
    out = tmp_path / "ds"
    first = prepare_scenes([a[0]], [a[1]], out, classes=["x", "y"], window=32)
    assert first.root == out and DatasetInfo.load(out).classes == ("x", "y")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputError, match="not empty"):
        prepare_scenes([a[0]], [a[1]], out, classes=["u", "v"], window=32)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert DatasetInfo.load(out).classes == ("x", "y")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_scenes([a[0]], [a[1]], empty, classes=["x", "y"], window=32).root == empty
    assert len(DatasetInfo.load(empty).pairs("train")) == 4


def _mmseg_decoded(label_png):
    """mmseg's own decoding of its converted PNGs: LoadAnnotations with reduce_zero_label."""
    pytest.importorskip("mmseg")
    from mmseg.datasets.transforms import LoadAnnotations

    out = LoadAnnotations(reduce_zero_label=True)(
        {"seg_map_path": str(label_png), "reduce_zero_label": True, "seg_fields": []})
    return out["gt_seg_map"]


def _as_official(crop_dir, tmp_path, image_name, label_name, zip_names):
    """Official-release files (GeoTIFF image, colour-coded label) from an mmseg crop, zipped."""
    img_png = next((crop_dir / "img_dir").iterdir())
    ann_png = crop_dir / "ann_dir" / img_png.name
    rgb = np.asarray(Image.open(img_png).convert("RGB")).transpose(2, 0, 1)
    values = np.asarray(Image.open(ann_png))
    colours = np.array(MMSEG_ISPRS_COLOURS, np.uint8)[values].transpose(2, 0, 1)
    src = tmp_path / "release"
    src.mkdir()
    write_scene(tmp_path / image_name, rgb)
    write_scene(tmp_path / label_name, colours)
    for zip_name, member in zip(zip_names, (image_name, label_name), strict=True):
        with zipfile.ZipFile(src / zip_name, "w") as z:
            z.write(tmp_path / member, member)
    return src, ann_png


@pytest.mark.parametrize("dataset, crop, image_name, label_name, zips", [
    ("potsdam", "pseudo_potsdam_dataset", "top_potsdam_2_10_RGB.tif",
     "top_potsdam_2_10_label_noBoundary.tif", ("2_Ortho_RGB.zip", "5_Labels_all_noBoundary.zip")),
    ("vaihingen", "pseudo_vaihingen_dataset", "top_mosaic_09cm_area1.tif",
     "top_mosaic_09cm_area1_noBoundary.tif",
     ("ISPRS_semantic_labeling_Vaihingen.zip",
      "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip")),
])
def test_isprs_labels_decode_as_mmseg_does(tmp_path, dataset, crop, image_name, label_name, zips):
    crop_dir = require_shared("mmseg", crop)
    src, ann_png = _as_official(crop_dir, tmp_path, image_name, label_name, zips)
    info = prepare_isprs(dataset, src, tmp_path / "ds", window=512, stride=256)
    (image, label), = info.pairs("train")  # tile 2_10 / area1 is in mmseg's training split
    assert info.pairs("val") == [] and info.classes[0] == "impervious_surface"
    with rasterio.open(label) as lb:
        ours = lb.read(1)
    expected = _mmseg_decoded(ann_png)
    np.testing.assert_array_equal(ours, expected)
    assert (ours == 255).any() and set(np.unique(ours)) <= {0, 1, 2, 3, 4, 5, 255}


def test_loveda_labels_decode_as_mmseg_does(tmp_path):
    crop_dir = require_shared("mmseg", "pseudo_loveda_dataset")
    release = tmp_path / "release"
    for split, names in (("Train", ["0.png", "1.png"]), ("Val", ["2.png"])):
        for kind, sub in (("images_png", "img_dir"), ("masks_png", "ann_dir")):
            folder = release / split / "Urban" / kind
            folder.mkdir(parents=True)
            for n in names:
                (folder / n).write_bytes((crop_dir / sub / n).read_bytes())
    info = prepare_loveda(release, tmp_path / "ds", window=1024)
    assert len(info.pairs("train")) == 2 and len(info.pairs("val")) == 1
    assert info.classes == DatasetInfo.load(tmp_path / "ds").classes
    image, label = info.pairs("val")[0]
    with rasterio.open(label) as lb:
        ours = lb.read(1)
    np.testing.assert_array_equal(ours, _mmseg_decoded(crop_dir / "ann_dir" / "2.png"))
