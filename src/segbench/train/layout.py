"""The on-disk layout of a training dataset and its description, ``dataset.json``.

::

    root/dataset.json                      classes, palette, ignore index, bands, stats
    root/{train,val,test}/images/NAME.tif
    root/{train,val,test}/labels/NAME.tif  (same NAME, same grid)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.errors import InputError
from segbench.files import atomic_output
from segbench.raster import open_raster, scene_info
from segbench.spec import IGNORE_INDEX

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a dataset."""

    root: Path
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    bands: tuple[int, ...]
    dtype: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def load(cls, root: str | Path) -> DatasetInfo:
        root = Path(root)
        path = root / "dataset.json"
        if not path.is_file():
            raise InputError(
                f"{root} is not a segbench dataset (no dataset.json); "
                "make one with 'segbench data synth' or 'segbench data prepare'."
            )
        try:
            d = json.loads(path.read_text())
            return cls(
                root=root,
                classes=tuple(d["classes"]),
                palette=tuple(tuple(c) for c in d["palette"]),
                ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
                bands=tuple(d["bands"]),
                dtype=d.get("dtype", "uint8"),
                mean=tuple(d["mean"]) if d.get("mean") else None,
                std=tuple(d["std"]) if d.get("std") else None,
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is malformed ({exc}); regenerate it.") from exc

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """(image, label) paths of a split, matched by file name."""
        images = sorted((self.root / split / "images").glob("*.tif"))
        pairs = []
        for image in images:
            label = self.root / split / "labels" / image.name
            if not label.is_file():
                raise InputError(f"Image {image} has no label {label.name} in {label.parent}.")
            pairs.append((image, label))
        return pairs

    def training_gsd_m(self) -> float | None:
        """The median ground sample distance of the training scenes (None without CRSs)."""
        gsds = []
        for image, _ in self.pairs("train"):
            with open_raster(image) as ds:
                gsd = scene_info(ds).gsd_m
            if gsd:
                gsds.append(gsd)
        return float(np.median(gsds)) if gsds else None

    def with_stats(self) -> DatasetInfo:
        """This info with per-band mean/std computed from the training split if missing."""
        if self.mean is not None and self.std is not None:
            return self
        mean, std = band_statistics([p[0] for p in self.pairs("train")], self.bands)
        return DatasetInfo(**{**self.__dict__, "mean": mean, "std": std})

    def save(self) -> Path:
        d = {
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "bands": list(self.bands),
            "dtype": self.dtype,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }
        path = self.root / "dataset.json"
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(d, indent=2) + "\n")
        return path


def band_statistics(
    images: list[Path], bands: tuple[int, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std in raw pixel units over valid pixels of ``images``.

    Streams over the files' blocks with float64 sums, so it scales to large scenes.
    """
    if not images:
        raise InputError("The training split is empty; add scenes before computing statistics.")
    n = np.zeros(len(bands))
    s = np.zeros(len(bands))
    ss = np.zeros(len(bands))
    for path in images:
        with open_raster(path) as ds:
            for _, window in ds.block_windows(1):
                data = ds.read(list(bands), window=window).astype(np.float64)
                valid = ds.dataset_mask(window=window) > 0
                v = data[:, valid]
                n += v.shape[1]
                s += v.sum(axis=1)
                ss += (v * v).sum(axis=1)
    if n[0] == 0:
        raise InputError("The training scenes hold no valid pixels; check their nodata value.")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(x) for x in std)
