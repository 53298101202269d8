"""Build catalogue models and count what they cost: parameters and GFLOPs at a tile size."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from segbench.logs import logger_level
from segbench.spec import ModelSpec
from segbench.train.catalogue import CATALOGUE, CatalogueEntry, get_entry
from segbench.train.config import model_config

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelCost:
    """Parameters (aux heads included, as mmseg's builder counts) and GFLOPs of one forward pass."""

    name: str
    family: str
    params: int
    gflops: float | None


def _quiet_mmengine():
    """mmengine logs every initialised parameter at INFO; keep warnings and errors."""
    from mmengine.logging import MMLogger

    return logger_level(MMLogger.get_current_instance(), logging.WARNING)


def _stats(bands: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet RGB statistics, repeated for extra bands (for untrained models only)."""
    reps = (bands + 2) // 3
    return (IMAGENET_MEAN * reps)[:bands], (IMAGENET_STD * reps)[:bands]


def build_model(entry: CatalogueEntry | str, classes: int, bands: int = 3, tile: int = 512,
                seed: int = 0):
    """The mmseg model of a catalogue entry, built on CPU in eval mode (random weights from ``seed``)."""
    import torch
    from mmengine.model import revert_sync_batchnorm

    from segbench.checkpoint import build_mmseg_model

    if isinstance(entry, str):
        entry = get_entry(entry)
    mean, std = _stats(bands)
    torch.manual_seed(seed)
    model = build_mmseg_model(model_config(entry, classes, mean, std, tile))
    with _quiet_mmengine():
        model.init_weights()
    return revert_sync_batchnorm(model).eval()


def model_cost(entry: CatalogueEntry | str, classes: int, bands: int = 3, tile: int = 512,
               flops: bool = True) -> ModelCost:
    """Parameters and (optionally) GFLOPs of a catalogue entry at ``tile`` x ``tile``."""
    from segbench.cost import model_cost as count

    if isinstance(entry, str):
        entry = get_entry(entry)
    params, gflops = count(build_model(entry, classes, bands, tile), bands, tile, flops)
    return ModelCost(entry.name, entry.family, params, gflops)


def print_catalogue(classes: int = 6, bands: int = 3, tile: int = 512, count: bool = True) -> None:
    """Print the catalogue as a table, with costs counted on the built models."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"segbench models ({classes} classes, {bands} bands, {tile}x{tile})")
    for col in ("model", "family", "params (M)", "GFLOPs", "description"):
        table.add_column(col, justify="right" if col in ("params (M)", "GFLOPs") else "left")
    for entry in CATALOGUE.values():
        if count:
            cost = model_cost(entry, classes, bands, tile)
            params, gflops = f"{cost.params / 1e6:.3f}", f"{cost.gflops:.1f}"
        else:
            params = gflops = ""
        table.add_row(entry.name, entry.family, params, gflops, entry.description)
    Console().print(table)


def untrained_checkpoint(
    name: str, out: str | Path, classes: int = 6, bands: int = 3, tile: int = 512, seed: int = 0
) -> tuple[Path, ModelSpec]:
    """Write a segbench checkpoint of a catalogue model with its initial (random) weights.

    Useful to export and time a network before training it; accuracy is meaningless.
    """
    from segbench.checkpoint import save_checkpoint

    entry = get_entry(name)
    mean, std = _stats(bands)
    model = build_model(entry, classes, bands, tile, seed)
    cfg = model_config(entry, classes, mean, std, tile)
    spec = ModelSpec(
        classes=tuple(f"class{i}" for i in range(classes)),
        palette=tuple(((37 * i) % 256, (91 * i) % 256, (151 * i) % 256) for i in range(classes)),
        bands=tuple(range(1, bands + 1)), mean=mean, std=std, tile=tile,
        architecture=entry.name, config=entry.config,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, save_checkpoint(out, model, cfg, spec)
