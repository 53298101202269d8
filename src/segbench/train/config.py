"""mmseg configs for segbench: a catalogue entry reconfigured for a dataset.

The model comes from mmseg's own config for the entry, with SyncBN reverted
to BN (one device), pretrained downloads removed (no network at run time),
the heads resized to the dataset's classes, the first convolution widened to
its band count, and the data preprocessor set to its per-band statistics.
Data loading, the training recipe and the runtime are segbench's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segbench.mmseg.configs import deployable
from segbench.spec import IGNORE_INDEX
from segbench.train.catalogue import TRANSFORMER, CatalogueEntry
from segbench.train.layout import DatasetInfo

SEED_ITERS = 80_000  # the seed recipe's schedule length


@dataclass(frozen=True)
class Recipe:
    """The training recipe: the seed's augmentations and schedule, each network's optimizer."""

    iters: int = SEED_ITERS
    batch: int = 4
    crop: int = 512
    lr: float | None = None  # None: the architecture's own default
    val_interval: int | None = None  # None: every 10% of the schedule
    seed: int = 0
    workers: int = 0

    def interval(self) -> int:
        """Iterations between validations and saved training states."""
        return self.val_interval or max(self.iters // 10, 1)


def model_config(
    entry: CatalogueEntry,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    tile: int,
    ignore_index: int = IGNORE_INDEX,
) -> dict:
    """The mmseg model config of ``entry`` for ``len(mean)`` bands and ``num_classes``."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(entry.config_path()))
    model = cfg.model.to_dict()
    deployable(model)
    for key in ("decode_head", "auxiliary_head"):
        heads = model.get(key)
        for head in heads if isinstance(heads, list) else [heads] if heads else []:
            head["num_classes"] = num_classes
            loss = head.get("loss_decode")
            for lo in loss if isinstance(loss, list) else [loss] if loss else []:
                if lo.get("type") == "CrossEntropyLoss":  # average over labelled pixels only
                    lo.setdefault("avg_non_ignore", True)
    backbone = model["backbone"]
    target = backbone.get("backbone_cfg", backbone)  # STDC nests its backbone
    target["in_channels"] = len(mean)
    model["data_preprocessor"] = dict(
        type="SegDataPreProcessor",
        mean=list(mean),
        std=list(std),
        bgr_to_rgb=False,
        pad_val=0,
        seg_pad_val=ignore_index,
        size=(tile, tile),
    )
    model["test_cfg"] = dict(mode="whole")
    return model


def optimizer_config(entry: CatalogueEntry, recipe: Recipe) -> tuple[dict, list[dict]]:
    """Optimizer wrapper and LR schedule, scaled to ``recipe.iters``.

    CNNs use the seed recipe (SGD lr 0.01, momentum 0.9, weight decay 5e-4,
    poly); transformers keep mmseg's AdamW recipe (lr 6e-5, weight decay
    0.01, linear warm-up over 1500 of 160k iterations, then poly), with the
    warm-up scaled to the schedule's length.
    """
    iters = recipe.iters
    if entry.family == TRANSFORMER:
        lr = recipe.lr if recipe.lr is not None else 6e-5
        optim = dict(
            type="OptimWrapper",
            optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.01),
            paramwise_cfg=dict(custom_keys={
                "pos_block": dict(decay_mult=0.0),
                "norm": dict(decay_mult=0.0),
                "head": dict(lr_mult=10.0),
            }),
        )
        warmup = min(max(1, round(iters * 1500 / 160_000)), iters - 1)  # leave the poly decay >= 1 step
        sched = []
        if warmup:
            sched.append(dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup))
        sched.append(dict(type="PolyLR", eta_min=0.0, power=1.0, begin=warmup, end=iters, by_epoch=False))
    else:
        lr = recipe.lr if recipe.lr is not None else 0.01
        optim = dict(
            type="OptimWrapper",
            optimizer=dict(type="SGD", lr=lr, momentum=0.9, weight_decay=5e-4),
            clip_grad=None,
        )
        sched = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
    return optim, sched


def train_pipeline(info: DatasetInfo, crop: int) -> list[dict]:
    """The seed's augmentations: random crop (cat_max_ratio 0.75), flip 0.5, photometric."""
    pipeline: list[dict] = [
        dict(type="LoadGeoTiffImage", bands=list(info.bands)),
        dict(type="LoadGeoTiffLabel", ignore_index=info.ignore_index),
        dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
    ]
    # mmseg's PhotoMetricDistortion works on 8-bit, 3-channel images only.
    if len(info.bands) == 3 and info.dtype == "uint8":
        pipeline.append(dict(type="PhotoMetricDistortion"))
    pipeline.append(dict(type="PackSegInputs"))
    return pipeline


def _dataset(info: DatasetInfo, split: str, pipeline: list[dict]) -> dict:
    """mmseg's dataset config of a split of segbench's GeoTIFF dataset layout."""
    return dict(
        type="BaseSegDataset",
        data_root=str(info.root),
        data_prefix=dict(img_path=f"{split}/images", seg_map_path=f"{split}/labels"),
        img_suffix=".tif",
        seg_map_suffix=".tif",
        metainfo=dict(classes=list(info.classes), palette=[list(c) for c in info.palette]),
        ignore_index=info.ignore_index,
        reduce_zero_label=False,
        pipeline=pipeline,
    )


def _val_pipeline(info: DatasetInfo) -> list[dict]:
    return [
        dict(type="LoadGeoTiffImage", bands=list(info.bands)),
        dict(type="LoadGeoTiffLabel", ignore_index=info.ignore_index),
        dict(type="PackSegInputs"),
    ]


def runner_config(
    model: dict,
    entry: CatalogueEntry,
    info: DatasetInfo,
    recipe: Recipe,
    work_dir: Path,
    device: str = "cpu",
    distributed: bool = False,
) -> dict:
    """A complete mmengine Runner config for training ``model`` on ``info``.

    ``distributed``: this process is one rank of a multi-process training whose process group
    is already set up (:mod:`segbench.train.distributed`): the batch is per process, the model
    wrapped in DDP, BN synchronised across CUDA devices (SyncBN, as mmseg's multi-GPU configs;
    gloo on CPU has no SyncBN, so each process keeps its own BN statistics there).
    """
    optim, sched = optimizer_config(entry, recipe)
    val_interval = recipe.interval()
    has_val = bool(info.pairs("val"))
    cfg: dict[str, Any] = dict(
        default_scope="mmseg",
        work_dir=str(work_dir),
        model=model,
        train_dataloader=dict(
            batch_size=recipe.batch,
            num_workers=recipe.workers,
            persistent_workers=recipe.workers > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            dataset=_dataset(info, "train", train_pipeline(info, recipe.crop)),
        ),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=recipe.iters,
                       val_interval=val_interval if has_val else recipe.iters + 1),
        optim_wrapper=optim,
        param_scheduler=sched,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(recipe.iters // 10, 1), log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=None,  # segbench saves plain-data states instead (train/resume.py)
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork"),
                     dist_cfg=dict(backend="gloo")),
        log_level="ERROR",
        randomness=dict(seed=recipe.seed),
        launcher="pytorch" if distributed else "none",
        device=device,
    )
    if distributed and device.startswith("cuda"):
        cfg["sync_bn"] = "torch"
    elif distributed:  # CPU modules take no device ids (mmengine's default gives LOCAL_RANK's)
        cfg["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None,
                                        broadcast_buffers=False, find_unused_parameters=False)
    if has_val:
        cfg.update(
            val_dataloader=dict(
                batch_size=1, num_workers=0, persistent_workers=False,
                sampler=dict(type="DefaultSampler", shuffle=False),
                dataset=_dataset(info, "val", _val_pipeline(info)),
            ),
            val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
            val_cfg=dict(type="ValLoop"),
        )
    return cfg
