"""CPU training speed of every catalogue network: iterations/s at batch 2, 256x256 crops.

Also prints parameters and GFLOPs at 512x512 (6 classes), counted on the built
models. Trains each network for a few iterations on synthetic scenes with the
seed recipe; the difference between a 1-iteration and a (1 + N)-iteration run
times N iterations without the fixed costs. Both are warm: an untimed
1-iteration run of the same network goes first (the first run of a network pays
once for what later runs reuse: imports, kernel selection, allocator caches).

    python benchmarks/bench_train_speed.py [--iters 6] [--models segformer-b0,pspnet-r18]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from segbench.train.catalogue import CATALOGUE
from segbench.train.config import Recipe
from segbench.train.models import model_cost
from segbench.train.runner import train
from segbench.train.synth import SynthOptions, synthesize_dataset


def run(name: str, data: Path, work: Path, iters: int, folder: str) -> float:
    """Seconds of a whole ``train`` of ``name`` for ``iters`` iterations (batch 2, 256^2 crops)."""
    start = time.perf_counter()
    train(name, data, work / name / folder, Recipe(iters=iters, batch=2, crop=256), progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--models", default=",".join(CATALOGUE))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segbench-train-speed-"))
    data = synthesize_dataset(work / "data", SynthOptions(train=4, val=0, test=0, size=384))
    print(f"{'model':<20}{'family':<14}{'params M':>10}{'GFLOPs@512':>12}{'it/s (b2, 256)':>16}")
    for name in args.models.split(","):
        cost = model_cost(name, 6, tile=512)

        run(name, data, work, 1, "warm-up")  # untimed: the cold start is not one of the fixed costs
        # Two warm runs with the same fixed costs (set-up, data loading, checkpoint): their
        # difference is the time of args.iters training iterations.
        short = run(name, data, work, 1, "short")
        rest = run(name, data, work, 1 + args.iters, "long") - short
        rate = args.iters / rest if rest > 0 else float("nan")
        print(f"{name:<20}{cost.family:<14}{cost.params / 1e6:>10.3f}{cost.gflops:>12.1f}"
              f"{rate:>16.2f}")


if __name__ == "__main__":
    main()
