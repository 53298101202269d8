"""``segbench import``: an mmseg config and checkpoint become a segbench checkpoint and spec.

Everything the spec needs comes from the config (options override it):

* classes and palette: the checkpoint's ``meta.dataset_meta`` (written by
  mmengine's runner), else the ``METAINFO`` of the dataset type the config's
  dataloaders name (PotsdamDataset, ISPRSDataset, LoveDADataset, ...), else
  ``classes``; their number must equal the decode head's ``num_classes``;
* mean and std: the model's ``data_preprocessor``, in the channel order the
  network sees (after ``bgr_to_rgb``);
* bands: the backbone's input channels, GeoTIFF bands 1..n in that order
  (``bands`` maps others);
* tile and stride: ``test_cfg.crop_size`` and ``test_cfg.stride`` in slide
  mode, else the preprocessor's square training ``size`` (``tile`` overrides);
* ignore index: the decode head's; ``reduce_zero_label`` and the head's
  ``align_corners`` are kept in the spec and the model config.

SyncBN is reverted to BN and ``init_cfg`` pretrained downloads are removed,
so nothing is fetched at run time. The result is written like a trained
model's checkpoint, so ``export``, ``build``, ``segment`` and ``bench`` use it
unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segbench.errors import InputError, first_line
from segbench.mmseg.checkpoints import ForeignCheckpoint, load_checkpoint, match_weights
from segbench.mmseg.configs import deployable, load_config
from segbench.spec import IGNORE_INDEX, ModelSpec, default_palette

DATALOADERS = ("test_dataloader", "val_dataloader", "train_dataloader")


@dataclass(frozen=True)
class Imported:
    """What an import wrote and where each part of its spec came from."""

    checkpoint: Path
    spec: ModelSpec
    classes_from: str  # "option", "checkpoint meta", "dataset <Type>"
    params: int


def import_model(
    config: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    tile: int | None = None,
    input_dtype: str = "uint8",
) -> Imported:
    """Import an mmseg 1.x model; write ``out`` (a segbench checkpoint) and its spec."""
    from segbench.checkpoint import build_mmseg_model, measure_output_stride, save_checkpoint

    out = Path(out)
    if out.suffix != ".pth":
        raise InputError(f"The output {out} must end in .pth.")
    from segbench.protect import Inputs
    from segbench.spec import sidecar_path

    Inputs().add(config).add(checkpoint).refuse([out, sidecar_path(out)])
    cfg = load_config(config)
    model_cfg = deployable(cfg.model.to_dict())
    weights = load_checkpoint(checkpoint)
    heads = _decode_heads(model_cfg)
    num_classes = int(heads[-1].get("num_classes", 0))
    names, palette, source = _classes(cfg, weights, classes, num_classes, Path(config))
    tile, stride = _tile(cfg, tile, Path(config))
    in_channels = int(model_cfg.get("backbone", {}).get("in_channels", 3))
    preprocessor = model_cfg.get("data_preprocessor") or cfg.get("data_preprocessor") or {}
    mean, std = _statistics(preprocessor, in_channels, Path(config))
    bands = _bands(bands, in_channels, bool(preprocessor.get("bgr_to_rgb", False)))
    try:
        model = build_mmseg_model(model_cfg)
    except Exception as exc:  # mmseg raises KeyError, TypeError, ... for configs it cannot build
        raise InputError(f"mmseg cannot build the model of {config} ({first_line(exc)}).") from exc
    match_weights(model, weights.state_dict, weights.path)
    model.eval()
    spec = ModelSpec(
        classes=names, palette=palette, bands=bands, mean=mean, std=std, tile=tile,
        stride=stride, ignore_index=int(heads[0].get("ignore_index", IGNORE_INDEX)),
        reduce_zero_label=_reduce_zero_label(cfg),
        output_stride=measure_output_stride(model, tile, in_channels),
        architecture=Path(config).stem, config=str(Path(config).resolve()),
        input_dtype=input_dtype,
    )
    spec = save_checkpoint(out, model, model_cfg, spec)
    params = sum(p.numel() for p in model.parameters())
    return Imported(out, spec, source, params)


def _decode_heads(model_cfg: dict) -> list[dict]:
    head = model_cfg.get("decode_head")
    heads = head if isinstance(head, list) else [head]
    if not heads or not all(isinstance(h, dict) for h in heads):
        raise InputError("The config's model has no decode_head; segbench imports "
                         "encoder-decoder segmentors.")
    return heads


def _dataset_cfg(cfg) -> dict | None:
    """The dataset config of the first dataloader the config defines (wrappers unwrapped)."""
    for key in DATALOADERS:
        loader = cfg.get(key)
        dataset = loader.get("dataset") if isinstance(loader, dict) else None
        while isinstance(dataset, dict) and isinstance(dataset.get("dataset"), dict):
            dataset = dataset["dataset"]  # RepeatDataset, ...
        if isinstance(dataset, dict) and isinstance(dataset.get("datasets"), list | tuple):
            dataset = dataset["datasets"][0]  # ConcatDataset
        if isinstance(dataset, dict) and dataset.get("type"):
            return dataset
    return None


def _classes(cfg, weights: ForeignCheckpoint, option: Sequence[str] | None, num_classes: int,
             config: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], str]:
    """Class names, palette, and where they came from."""
    found: list[tuple[Any, Any, str]] = []
    if weights.dataset_meta.get("classes"):
        found.append((weights.dataset_meta["classes"], weights.dataset_meta.get("palette"),
                      "checkpoint meta"))
    dataset = _dataset_cfg(cfg)
    if dataset is not None:
        meta = _metainfo(dataset)
        if meta.get("classes"):
            found.append((meta["classes"], meta.get("palette"), f"dataset {dataset['type']}"))
    if option:
        if num_classes and len(option) != num_classes:
            raise InputError(f"--classes names {len(option)} classes but the model of {config.name} "
                             f"predicts {num_classes}.")
        palette = next((p for c, p, _ in found if p and len(p) == len(option)), None)
        return tuple(option), _palette(palette, len(option)), "option"
    for names, palette, source in found:
        if not num_classes or len(names) == num_classes:
            return tuple(names), _palette(palette, len(names)), source
    raise InputError(
        f"The model of {config.name} predicts {num_classes} classes and neither its dataset nor "
        f"the checkpoint names {num_classes}; name them with --classes."
    )


def _metainfo(dataset: dict) -> dict:
    """``METAINFO`` of an mmseg dataset type, with the config's own ``metainfo`` on top."""
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cls = DATASETS.get(dataset["type"])
    meta = dict(getattr(cls, "METAINFO", {}) or {})
    meta.update(dataset.get("metainfo") or {})
    return meta


def _palette(palette, n: int) -> tuple[tuple[int, int, int], ...]:
    if palette and len(palette) >= n:
        return tuple(tuple(int(v) for v in p) for p in palette[:n])
    return default_palette(n)


def _tile(cfg, option: int | None, config: Path) -> tuple[int, int | None]:
    """Tile and stride: the option, else the slide ``test_cfg``'s crop and stride, else the
    square crop the data preprocessor pads to in training (``whole`` mode: no stride)."""
    test_cfg = cfg.model.get("test_cfg") or {}
    slide = test_cfg.get("mode") == "slide"
    crop = test_cfg.get("crop_size") if slide else None
    stride = test_cfg.get("stride") if slide else None
    stride = int(stride[0] if isinstance(stride, list | tuple) else stride) if stride else None
    if option:
        return int(option), stride if crop and _square(crop) == option else None
    if crop:
        tile = _square(crop)
        if tile is None:
            raise InputError(f"{config.name} slides a {crop[0]}x{crop[1]} window; segbench needs a "
                             "square tile: give it with --tile.")
        return tile, stride
    size = (cfg.model.get("data_preprocessor") or {}).get("size")
    tile = _square(size) if size else None
    if tile is None:
        raise InputError(f"{config.name} names no square slide crop or training size; give the tile "
                         "size with --tile.")
    return tile, None


def _square(crop) -> int | None:
    h, w = (crop, crop) if isinstance(crop, int) else crop
    return int(h) if h == w else None


def _statistics(preprocessor: dict, channels: int, config: Path):
    mean, std = preprocessor.get("mean"), preprocessor.get("std")
    if mean is None or std is None:
        return (0.0,) * channels, (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise InputError(f"{config.name}'s data_preprocessor normalizes {len(mean)} channels but the "
                         f"backbone takes {channels}.")
    return tuple(map(float, mean)), tuple(map(float, std))


def _bands(option: Sequence[int] | None, channels: int, bgr_to_rgb: bool) -> tuple[int, ...]:
    """GeoTIFF bands in the network's channel order.

    mmseg reads images as BGR; with ``bgr_to_rgb`` the network sees RGB, which
    is GeoTIFF band order 1, 2, 3. Without it, a 3-channel network sees BGR:
    bands 3, 2, 1 of an RGB GeoTIFF.
    """
    if option is None:
        if channels == 3 and not bgr_to_rgb:
            return (3, 2, 1)
        return tuple(range(1, channels + 1))
    if len(option) != channels or any(b < 1 for b in option):
        raise InputError(f"--bands must name {channels} GeoTIFF bands (1-based), one per input "
                         f"channel of the model; got {','.join(map(str, option))}.")
    return tuple(int(b) for b in option)


def _reduce_zero_label(cfg) -> bool:
    """mmseg's label convention: the dataset's option, its LoadAnnotations, or the type's default."""
    import inspect

    from mmseg.registry import DATASETS

    dataset = _dataset_cfg(cfg)
    if dataset is None:
        return False
    if "reduce_zero_label" in dataset:
        return bool(dataset["reduce_zero_label"])
    for step in dataset.get("pipeline") or []:
        if isinstance(step, dict) and step.get("type") == "LoadAnnotations" \
                and "reduce_zero_label" in step:
            return bool(step["reduce_zero_label"])
    cls = DATASETS.get(dataset["type"])
    parameter = inspect.signature(cls).parameters.get("reduce_zero_label") if cls else None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return False
    return bool(parameter.default)
