"""One training on several GPUs (or, for tests, several CPU processes): one process per device.

This is what ``torchrun`` does for mmengine's ``pytorch`` launcher, within one
command: :func:`train_on_processes` starts ``gpus`` processes (spawned), each
sets the ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_*`` variables,
binds its CUDA device and joins a process group (NCCL on CUDA, gloo on CPU),
then runs the ordinary training as one rank (:func:`segbench.train.runner.train`
sees the group and configures mmengine for it). The batch is per process, as
in mmseg's ``4xb4`` configs: ``gpus`` x ``batch`` images per step. Rank 0
writes the checkpoint, the spec and the resumable state; a failing rank's
error comes back as one sentence, and the ranks end with their parent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from segbench.errors import InputError, SegbenchError


class DistributedTrainingError(SegbenchError):
    """A rank of a multi-process training failed."""


def in_rank() -> bool:
    """Whether this process is one rank of a multi-process training."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_rank() -> bool:
    import torch.distributed as dist

    return not in_rank() or dist.get_rank() == 0


def train_on_processes(train: Callable[..., object], gpus: int, device: str, train_args: tuple,
                       train_kwargs: dict) -> None:
    """Run ``train(*train_args, **train_kwargs)`` (a module-level function: each rank imports it) as
    ``gpus`` ranks of one training; returns when all are done."""
    import torch
    import torch.multiprocessing as mp

    cuda = device.startswith("cuda")
    if cuda and torch.cuda.device_count() < gpus:
        raise InputError(f"Training on {gpus} GPUs needs {gpus} CUDA devices; this process sees "
                         f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES).")
    try:
        mp.start_processes(_rank, args=(gpus, _free_port(), cuda, train, train_args, train_kwargs),
                           nprocs=gpus, start_method="spawn", join=True)
    except mp.ProcessRaisedException as exc:
        raise DistributedTrainingError(f"A rank of the {gpus}-process training failed: "
                                       f"{_last_line(str(exc))}") from None
    except mp.ProcessExitedException as exc:
        how = (f"was killed by signal {-exc.exit_code} (out of memory?)" if exc.exit_code < 0
               else f"ended with exit code {exc.exit_code}")
        raise DistributedTrainingError(f"A rank of the {gpus}-process training {how}.") from None


def _rank(rank: int, world: int, port: int, cuda: bool, train: Callable[..., object], train_args: tuple,
          train_kwargs: dict) -> None:
    import torch
    import torch.distributed as dist

    from segbench.signals import end_with_parent, terminate_as_interrupt

    end_with_parent()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cuda:
        torch.cuda.set_device(rank)
    else:  # the host's cores shared among the ranks
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        with terminate_as_interrupt():
            train(*train_args, **train_kwargs)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(text: str) -> str:
    """The exception line of a rank's traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def checkpoint_of(out_dir: Path, name: str) -> Path:
    path = Path(out_dir) / name
    if not path.is_file():
        raise DistributedTrainingError(f"The multi-process training ended without writing {path}.")
    return path
