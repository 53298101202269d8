"""What a command (``build``, ``bench``, a study's bench cell) hands the int8 search: calibration
tiles, held-out tiles from windows they do not overlap (with labels where the calibration scenes
have them), the target, and the bench's mIoU for the labelled case."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from segbench.bench.metrics import miou_score
from segbench.export.calibration import calibration_set
from segbench.export.qualify import Int8Options, Int8Target
from segbench.spec import ModelSpec

#: held-out tiles the int8 target is checked on
HELD_OUT_TILES = 16


def int8_setup(spec: ModelSpec, scenes: Sequence[str | os.PathLike[str]],
               labels: Sequence[str | os.PathLike[str]] = (), tiles: int = 32, target: float | None = 0.99,
               explain: bool = False, exclude: Sequence[str] = ()) -> tuple[np.ndarray, Int8Options]:
    """The calibration tiles of ``scenes`` and the int8 options for them; ``target`` None builds plain
    int8 (no search); ``exclude``: classes left out of the mIoU (the ISPRS convention's clutter)."""
    held = HELD_OUT_TILES if target is not None or explain else 0
    drawn = calibration_set(scenes, spec, tiles, held_out=held, labels=list(labels) or None)
    score = miou_score(spec.classes, spec.ignore_index, exclude) if labels else None
    options = Int8Options(target=Int8Target(target) if target is not None else None,
                          held_out=drawn.held_out, score=score, explain=explain)
    return drawn.tiles, options
