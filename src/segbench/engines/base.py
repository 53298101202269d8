"""The Engine contract every backend implements, in the spirit of Polygraphy's runners."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

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
