"""The Engine contract every backend implements, in the spirit of Polygraphy's runners."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from segbench.errors import SpecError
from segbench.spec import ModelSpec


@runtime_checkable
class Engine(Protocol):
    """A loaded, ready-to-run segmentation engine.

    ``infer`` takes raw pixels ``(N, bands, tile, tile)`` float32 (normalization
    is baked into the graph) and returns ``(N, classes, tile, tile)`` float32
    logits, or ``(N, tile, tile)`` uint8 labels when ``spec.output == "labels"``.
    """

    name: str  # "ort-fp32", "openvino-int8", "torch-fp32", "trt-fp16", ...
    spec: ModelSpec
    device: str  # "cpu", "cuda:0"

    def infer(self, tiles: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def check_input_shape(shape: Sequence, spec: ModelSpec, artifact: Path) -> None:
    """Refuse an artifact whose input is not (batch, spec bands, spec tile, spec tile)."""
    want = [spec.num_bands, spec.tile, spec.tile]
    got = list(shape)[1:]
    if len(shape) != 4 or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
        raise SpecError(
            f"{Path(artifact).name} takes input {list(shape)} but its spec says "
            f"(N, {spec.num_bands}, {spec.tile}, {spec.tile}); the spec belongs to another model."
        )
