"""Train a catalogue network on a segbench dataset with mmengine's Runner."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from segbench.checkpoint import measure_output_stride, save_checkpoint
from segbench.errors import InputError
from segbench.files import write_text
from segbench.spec import ModelSpec
from segbench.train.catalogue import get_entry
from segbench.train.config import Recipe, model_config, runner_config
from segbench.train.layout import DatasetInfo
from segbench.train.resume import STATE_NAME, check_run, load_state, resume_hook

CHECKPOINT_NAME = "model.pth"


def train(
    model_name: str,
    data: str | Path,
    out_dir: str | Path,
    recipe: Recipe | None = None,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = False,
    pretrained: str | Path | None = None,
    gpus: int = 1,
) -> tuple[Path, ModelSpec]:
    """Train ``model_name`` on the dataset at ``data``; write ``out_dir/model.pth`` and its spec.

    The run's state is saved to ``out_dir/resume.pth`` every validation
    interval; ``resume=True`` continues from it (same model and options).
    ``model_name`` is a catalogue name or an mmseg config file; ``pretrained``
    is a local backbone file (e.g. mmseg's ``mit_b0`` or ResNet-V1c weights)
    loaded before the first step. ``gpus`` > 1 trains on that many processes,
    one per GPU (or on CPU, gloo), with ``recipe.batch`` images each
    (:mod:`segbench.train.distributed`).
    """
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    import segbench.train.dataset  # noqa: F401  (registers the GeoTIFF transforms)
    from segbench.train.distributed import checkpoint_of, in_rank, is_main_rank, train_on_processes

    recipe = recipe or Recipe()
    out_dir = Path(out_dir)
    if gpus < 1:
        raise InputError(f"Train on at least 1 GPU (process), not {gpus}.")
    if gpus > 1:
        out_dir.mkdir(parents=True, exist_ok=True)
        train_on_processes(train, gpus, device, (model_name, data, out_dir, recipe),
                           dict(device=device, progress=progress, resume=resume, pretrained=pretrained))
        path = checkpoint_of(out_dir, CHECKPOINT_NAME)
        return path, ModelSpec.load(path)
    world = int(os.environ.get("WORLD_SIZE", "1")) if in_rank() else 1
    out_dir.mkdir(parents=True, exist_ok=True)
    entry = get_entry(model_name)
    info = DatasetInfo.load(data).with_stats()
    state_path = out_dir / STATE_NAME
    run = dict(model=entry.name, iters=recipe.iters, batch=recipe.batch, crop=recipe.crop,
               lr=recipe.lr, seed=recipe.seed, bands=list(info.bands), classes=list(info.classes),
               pretrained=str(Path(pretrained).resolve()) if pretrained else None)
    if world > 1:  # a state saved by N processes is resumed by N (the batch per step is N x batch)
        run["processes"] = world
    if pretrained and not Path(pretrained).is_file():
        raise InputError(f"Pretrained file {pretrained} does not exist.")
    if resume:
        state = load_state(state_path)
        check_run(state, run, state_path)
        if state["iter"] >= recipe.iters and (out_dir / CHECKPOINT_NAME).is_file():
            print(f"{out_dir} is already trained to {recipe.iters} iterations.")
            return out_dir / CHECKPOINT_NAME, ModelSpec.load(out_dir / CHECKPOINT_NAME)
    model_cfg = model_config(entry, len(info.classes), info.mean, info.std, recipe.crop,
                             info.ignore_index)
    register_all_modules(init_default_scope=True)
    cfg = runner_config(model_cfg, entry, info, recipe, out_dir / "mmseg", device, distributed=world > 1)
    from mmengine.config import Config

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="mmseg")
        runner = Runner.from_cfg(Config(cfg))
    if pretrained and not resume:
        runner.register_hook(_PretrainedHook(pretrained), priority="VERY_HIGH")
    runner.register_hook(resume_hook(state_path, recipe.interval(), run, resume))
    if progress and is_main_rank():
        runner.register_hook(_ProgressHook(recipe.iters), priority="VERY_LOW")
    start = time.perf_counter()
    model = runner.train()
    seconds = time.perf_counter() - start
    model = getattr(model, "module", model)
    if not is_main_rank():  # rank 0 writes the checkpoint
        return out_dir / CHECKPOINT_NAME, None
    spec = _trained_spec(model, entry, info, recipe)
    spec = save_checkpoint(out_dir / CHECKPOINT_NAME, model, model_cfg, spec)
    write_text(out_dir / "train_seconds.txt", f"{seconds:.1f}\n")
    return out_dir / CHECKPOINT_NAME, spec


def _trained_spec(model, entry, info: DatasetInfo, recipe: Recipe) -> ModelSpec:
    """The spec of a network trained on ``info``'s scenes with ``recipe``."""
    return ModelSpec(
        classes=info.classes,
        palette=info.palette,
        bands=info.bands,
        mean=info.mean,
        std=info.std,
        tile=recipe.crop,
        ignore_index=info.ignore_index,
        output_stride=measure_output_stride(model, recipe.crop, len(info.bands)),
        architecture=entry.name,
        config=entry.config,
        input_dtype=info.dtype,
        gsd_m=info.training_gsd_m(),
    )


def _PretrainedHook(path: str | Path):  # noqa: N802  (a class factory: mmengine is imported lazily)
    """Loads the backbone from a local file once the runner has initialised the weights."""
    from mmengine.hooks import Hook

    from segbench.mmseg.checkpoints import load_backbone

    class PretrainedHook(Hook):
        def before_train(self, runner) -> None:
            load_backbone(getattr(runner.model, "module", runner.model), path)

    return PretrainedHook()


def _progress_hook_class():
    from mmengine.hooks import Hook
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class ProgressHook(Hook):
        """A rich progress bar with the running loss, rate and ETA."""

        def __init__(self, iters: int) -> None:
            self.iters = iters
            self.bar = None

        def before_train(self, runner) -> None:
            self.bar = Progress(
                TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} it"),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.iters, completed=runner.iter,
                                          loss="-", rate="")

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else None
            t = self.bar.tasks[0]
            rate = f"{t.speed:.2f} it/s" if t.speed else ""
            self.bar.update(self.task, advance=1, rate=rate,
                            loss=f"{loss.item():.3f}" if loss is not None else "-")

        def after_train(self, runner) -> None:
            if self.bar is not None:
                self.bar.stop()

    return ProgressHook


def _ProgressHook(iters: int):  # noqa: N802  (a class factory: mmengine is imported lazily)
    return _progress_hook_class()(iters)
