"""Turn scenes into segbench's training layout: users' GeoTIFFs and the official releases.

Every source ends as windows cut from whole scenes (GeoTIFFs that keep their
georeferencing) in ``<out>/{train,val}/{images,labels}``, split **by scene**,
never by tile, with ``dataset.json`` and per-band statistics of the training
split. Label conventions follow mmseg's converters and datasets:

* ISPRS Potsdam and Vaihingen: colour-coded eroded labels ("noBoundary"),
  black boundary pixels ignored; mmseg's train/val split of the tiles.
* LoveDA: PNG masks with 0 = no data (ignored) and 1..7 the classes.
* Users' scenes: label rasters with class indexes; the label's nodata and the
  image's nodata (or mask) become the ignore index.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from segbench.errors import InputError
from segbench.files import atomic_folder
from segbench.raster import open_raster, read_window, scene_info, write_raster
from segbench.spec import ISPRS_CLASSES, ISPRS_PALETTE
from segbench.train.layout import DatasetInfo
from segbench.train.synth import IGNORE_INDEX

LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agricultural")
LOVEDA_PALETTE = ((255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183),
                  (0, 255, 0), (255, 195, 128))
# mmseg's splits of the official tiles (tools/dataset_converters/{potsdam,vaihingen}.py).
POTSDAM_VAL = {"5_15", "6_15", "6_13", "3_13", "4_14", "6_14", "5_14", "2_13", "4_15", "2_14",
               "5_13", "4_13", "3_14", "7_13"}
VAIHINGEN_VAL = {"area6", "area24", "area35", "area16", "area14", "area22", "area10", "area4",
                 "area2", "area20", "area8", "area31", "area33", "area27", "area38", "area12",
                 "area29"}

Decoder = Callable[[np.ndarray, Path], np.ndarray]
SOURCES = ("scenes", "potsdam", "vaihingen", "loveda")  # users' scenes, then the official releases


def decode_isprs_colours(rgb: np.ndarray, path: Path) -> np.ndarray:
    """ISPRS colour-coded labels (3, H, W) -> class indexes, black boundary -> ignore."""
    out = np.full(rgb.shape[1:], IGNORE_INDEX, np.uint8)
    known = np.zeros(rgb.shape[1:], bool)
    for index, colour in enumerate(ISPRS_PALETTE):
        hit = np.all(rgb == np.array(colour, rgb.dtype).reshape(3, 1, 1), axis=0)
        out[hit] = index
        known |= hit
    known |= np.all(rgb == 0, axis=0)  # eroded boundary
    if not known.all():
        bad = rgb[:, ~known][:, 0]
        raise InputError(f"Label {path.name} has colour {tuple(int(v) for v in bad)}, "
                         "which is not an ISPRS class colour.")
    return out


def decode_loveda(mask: np.ndarray, path: Path) -> np.ndarray:
    """LoveDA masks: 0 = no data -> ignore, 1..7 -> 0..6 (mmseg's reduce_zero_label)."""
    m = mask[0]
    if m.max(initial=0) > len(LOVEDA_CLASSES):
        raise InputError(f"Label {path.name} has value {int(m.max())}; LoveDA has values 0..7.")
    return np.where(m == 0, IGNORE_INDEX, m.astype(np.int16) - 1).astype(np.uint8)


def class_indexes(classes: int, ignore_index: int = IGNORE_INDEX, nodata: float | None = None):
    """A decoder for users' label rasters holding class indexes directly."""
    def decode(labels: np.ndarray, path: Path) -> np.ndarray:
        lab = labels[0]
        invalid = lab == ignore_index
        if nodata is not None:
            invalid |= lab == nodata
        bad = (~invalid) & ((lab < 0) | (lab >= classes))
        if bad.any():
            raise InputError(f"Label {path.name} has class value {lab[bad].flat[0]}, outside the "
                             f"{classes} declared classes (0..{classes - 1}, {ignore_index} ignored).")
        return np.where(invalid, ignore_index, lab).astype(np.uint8)
    return decode


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins covering ``size``: every ``stride``, the last one flush with the end."""
    last = max(size - window, 0)
    return sorted({*range(0, last + 1, stride), last})


def cut_scene(image: Path, label: Path, split_dir: Path, decode: Decoder, window: int,
              stride: int, bands: Sequence[int] | None = None) -> int:
    """Cut aligned windows of one scene into ``split_dir``; returns how many were written.

    Pixels where the image is invalid (nodata or mask) are ignored in the labels;
    windows without a labelled pixel are skipped.
    """
    with open_raster(image) as im, open_raster(label) as lb:
        info = scene_info(im)
        if (lb.width, lb.height) != (im.width, im.height) or lb.transform != im.transform \
                or lb.crs != im.crs:
            raise InputError(f"Label {label} does not align with image {image} "
                             "(size, transform or CRS differ).")
        bands = list(bands or range(1, info.count + 1))
        count = 0
        for row in _starts(info.height, window, stride):
            for col in _starts(info.width, window, stride):
                h, w = min(window, info.height - row), min(window, info.width - col)
                pixels, valid = read_window(im, row, col, h, w, bands)
                raw, _ = read_window(lb, row, col, h, w, list(range(1, lb.count + 1)),
                                     fill=IGNORE_INDEX, nodata=-1e30)
                labels = decode(raw.astype(lb.dtypes[0]), label)
                labels[~valid] = IGNORE_INDEX
                if (labels == IGNORE_INDEX).all():
                    continue
                name = f"{image.stem}_{row}_{col}.tif"
                transform = im.window_transform(((row, row + h), (col, col + w)))
                write_raster(split_dir / "images" / name, pixels.astype(info.dtype), crs=info.crs,
                             transform=transform, nodata=info.nodata)
                write_raster(split_dir / "labels" / name, labels, crs=info.crs,
                             transform=transform, nodata=IGNORE_INDEX)
                count += 1
    return count


def _write_dataset(out: Path, pairs: dict[str, list[tuple[Path, Path]]], decode: Decoder,
                   classes: Sequence[str], palette, window: int, stride: int,
                   bands: Sequence[int] | None = None) -> DatasetInfo:
    """Cut every split into a temporary folder, renamed to ``out`` once complete."""
    if not pairs.get("train"):
        raise InputError("The training split is empty; give at least one training scene.")
    with atomic_folder(out) as tmp:
        info = _cut_splits(tmp, pairs, decode, classes, palette, window, stride, bands)
    return dataclasses.replace(info, root=Path(out))


def _cut_splits(out: Path, pairs: dict[str, list[tuple[Path, Path]]], decode: Decoder,
                classes: Sequence[str], palette, window: int, stride: int,
                bands: Sequence[int] | None) -> DatasetInfo:
    dtype, count = None, None
    for split, scenes in pairs.items():
        for sub in ("images", "labels"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
        written = 0
        for image, label in scenes:
            with open_raster(image) as ds:
                info = scene_info(ds)
            dtype, count = dtype or info.dtype, count or info.count
            if (info.dtype, info.count) != (dtype, count):
                raise InputError(f"Scene {image} has {info.count} {info.dtype} bands; the others "
                                 f"have {count} {dtype} bands.")
            written += cut_scene(image, label, out / split, decode, window, stride, bands)
        if split == "train" and written == 0:
            raise InputError("The training split holds no labelled window; check the labels.")
    info = DatasetInfo(root=out, classes=tuple(classes), palette=tuple(palette),
                       ignore_index=IGNORE_INDEX, bands=tuple(bands or range(1, count + 1)),
                       dtype=dtype).with_stats()
    info.save()
    return info


def prepare_scenes(images: Sequence[Path], labels: Sequence[Path], out: Path, *,
                   classes: Sequence[str], val_every: int = 5, window: int = 512,
                   stride: int | None = None) -> DatasetInfo:
    """Users' scenes: every ``val_every``-th scene goes to validation, the rest to training."""
    if len(images) != len(labels):
        raise InputError(f"Give one label raster per image ({len(images)} images, "
                         f"{len(labels)} labels).")
    if not images:
        raise InputError("Give at least one scene.")
    pairs = list(zip(map(Path, images), map(Path, labels), strict=True))
    val = [p for i, p in enumerate(pairs) if len(pairs) > 1 and i % val_every == val_every - 1]
    train = [p for p in pairs if p not in val]
    with open_raster(pairs[0][1]) as lb:
        nodata = lb.nodata
    palette = [ISPRS_PALETTE[i % len(ISPRS_PALETTE)] for i in range(len(classes))]
    return _write_dataset(Path(out), {"train": train, "val": val},
                          class_indexes(len(classes), IGNORE_INDEX, nodata), classes, palette,
                          window, stride or window)


def _files(src: Path, pattern: str, tmp: Path) -> list[Path]:
    """Files under ``src`` matching ``pattern``, looking inside zip archives too."""
    for archive in sorted(src.rglob("*.zip")):
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp / archive.stem)
    regex = re.compile(pattern)
    found = [p for root in (src, tmp) for p in root.rglob("*") if regex.search(p.name)]
    return sorted(set(found))


def prepare_isprs(dataset: str, src: Path, out: Path, window: int = 512,
                  stride: int = 256) -> DatasetInfo:
    """ISPRS Potsdam (RGB tiles) or Vaihingen (IRRG tiles) with the eroded labels."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"Source {src} is not a folder of the official release.")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        if dataset == "potsdam":
            images = _files(src, r"^top_potsdam_\d+_\d+_RGB\.tif$", Path(tmp))
            key = lambda p: "_".join(p.name.split("_")[2:4])  # noqa: E731
            label_for = lambda k: f"top_potsdam_{k}_label_noBoundary.tif"  # noqa: E731
            val_keys = POTSDAM_VAL
        else:
            images = [p for p in _files(src, r"^top_mosaic_09cm_area\d+\.tif$", Path(tmp))]
            key = lambda p: p.stem.split("_")[3]  # noqa: E731
            label_for = lambda k: f"top_mosaic_09cm_{k}_noBoundary.tif"  # noqa: E731
            val_keys = VAIHINGEN_VAL
        labels = {p.name: p for p in _files(src, r"noBoundary\.tif$", Path(tmp))}
        if not images:
            raise InputError(f"No {dataset} image tiles found in {src}.")
        pairs: dict[str, list[tuple[Path, Path]]] = {"train": [], "val": []}
        for image in images:
            k = key(image)
            label = labels.get(label_for(k))
            if label is None:
                continue  # tiles without ground truth (the benchmark's test tiles)
            pairs["val" if k in val_keys else "train"].append((image, label))
        return _write_dataset(out, pairs, decode_isprs_colours, ISPRS_CLASSES, ISPRS_PALETTE,
                              window, stride, bands=(1, 2, 3))


def prepare_loveda(src: Path, out: Path, window: int = 512) -> DatasetInfo:
    """LoveDA: Train/Val x Urban/Rural, ``images_png`` and ``masks_png`` (Test has no masks)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"Source {src} is not a folder of the official release.")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        masks = _files(src, r"\.png$", Path(tmp))
        pairs: dict[str, list[tuple[Path, Path]]] = {"train": [], "val": []}
        for mask in masks:
            if mask.parent.name != "masks_png":
                continue
            image = mask.parent.parent / "images_png" / mask.name
            split = mask.parent.parent.parent.name.lower()
            if split in pairs and image.is_file():
                pairs[split].append((image, mask))
        return _write_dataset(out, pairs, decode_loveda, LOVEDA_CLASSES, LOVEDA_PALETTE,
                              window, window)
