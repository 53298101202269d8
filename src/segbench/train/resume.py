"""Resumable training: the run's state saved as plain data, restored by ``--resume``.

mmengine's own checkpoints pickle its message hub and config objects, which
``torch.load(weights_only=True)`` refuses (see :mod:`segbench.checkpoint`).
This hook saves what a run needs to continue as tensors and plain values:
the weights, the optimizer's state (momentum buffers, learning rates), the
LR schedulers' positions and torch's random state, every checkpoint interval
and at the end, atomically, to ``<out>/resume.pth``.

On resume the iteration counter is restored before the training loop starts,
so mmengine's loop replays the data loader to the same position (the sampler
and the augmentations draw from their own seeded generators); torch's random
state, which only the model draws from, is restored directly. With
``workers=0`` on CPU a resumed run reaches the same weights as an
uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segbench.checkpoint import load_weights_only
from segbench.errors import InputError
from segbench.files import atomic_output

STATE_NAME = "resume.pth"
FORMAT = "segbench-resume/1"


def load_state(path: Path) -> dict:
    """The saved training state at ``path`` (plain data, loaded with ``weights_only``)."""
    if not path.is_file():
        raise InputError(f"Nothing to resume in {path.parent}: {path.name} does not exist; "
                         "train without --resume.")
    state = load_weights_only(path, what="Training state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a segbench training state.")
    return state


def check_run(state: dict, run: dict, path: Path) -> None:
    """Refuse to resume a state written by a run with other options (model, schedule, crop...)."""
    saved = state["run"]
    differ = [f"{k} {saved.get(k)!r} there, {run.get(k)!r} now" for k in dict.fromkeys([*saved, *run])
              if saved.get(k) != run.get(k)]
    if differ:
        raise InputError(f"{path} was written by another run ({'; '.join(differ)}); resume with "
                         "the same options or train into another folder.")


def resume_hook(path: Path, interval: int, run: dict, resume: bool):
    """An mmengine hook that saves the state to ``path`` and, if ``resume``, restores it first."""
    from mmengine.hooks import Hook

    class ResumeHook(Hook):
        priority = "VERY_LOW"  # after ParamSchedulerHook has stepped the schedules

        def before_train(self, runner) -> None:
            if resume:
                _restore(runner, load_state(path))

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            done = runner.iter + 1  # the loop counts this iteration after its hooks
            if done % interval == 0 or done == runner.max_iters:
                _save(runner, path, done, run)

    return ResumeHook()


def _model(runner) -> Any:
    return getattr(runner.model, "module", runner.model)


def _save(runner, path: Path, done: int, run: dict) -> None:
    import torch

    from segbench.train.distributed import is_main_rank

    if not is_main_rank():  # the ranks hold the same weights and optimizer state: rank 0 saves
        return
    state = {
        "format": FORMAT,
        "iter": done,
        "run": run,
        "state_dict": {k: v.detach().cpu() for k, v in _model(runner).state_dict().items()},
        "optimizer": runner.optim_wrapper.state_dict(),
        "schedulers": [s.state_dict() for s in runner.param_schedulers],
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _restore(runner, state: dict) -> None:
    import torch

    _model(runner).load_state_dict(state["state_dict"])
    runner.optim_wrapper.load_state_dict(state["optimizer"])
    for scheduler, saved in zip(runner.param_schedulers, state["schedulers"], strict=True):
        scheduler.load_state_dict(saved)
    torch.set_rng_state(state["torch_rng"])
    runner.train_loop._iter = state["iter"]  # the loop replays the data loader to here
    runner.message_hub.update_info("iter", state["iter"])
