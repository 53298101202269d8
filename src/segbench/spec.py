"""ModelSpec: what every artifact needs to know about its model, saved beside it.

A spec travels with each artifact (checkpoint, ONNX graph, engine plan) as a
JSON sidecar named ``<artifact>.spec.json``, so that no step asks the user
again what an earlier step already knew: class names and palette, ignore
index, which GeoTIFF bands feed the network and how to normalize them, the
tile size, and what built the artifact.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbench.errors import SpecError
from segbench.files import ARTIFACT_SIDECAR, atomic_output

SPEC_SUFFIX = ARTIFACT_SIDECAR
SPEC_VERSION = 1
# The one ignore/nodata value of label rasters: labels are uint8, classes 0..254.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class BuildRecord:
    """How an artifact was built: backend, precision, library versions, cost."""

    backend: str
    precision: str
    engine: str = ""  # engine kind name, e.g. "ort-int8"; empty for graphs and checkpoints
    versions: dict[str, str] = field(default_factory=dict)
    build_seconds: float | None = None
    artifact_bytes: int | None = None
    calibration_digest: str | None = None
    #: SHA-256 of what the artifact was made from: ``source``, a file name beside it, of kind
    #: ``source_kind`` ("checkpoint" for exported graphs, "onnx" for graph variants and the
    #: engines compiled from them, "pt2" for torch engines). Specs written before these two
    #: fields existed load with None, and a None digest never counts as current.
    source_digest: str | None = None
    source: str | None = None
    source_kind: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """Everything downstream steps need to know about a segmentation model.

    ``mean`` and ``std`` are per input band in raw pixel units (e.g. 0..255 for
    uint8 imagery); exported graphs bake them in and take raw pixels.
    ``bands`` are 1-based GeoTIFF band indexes, in the network's channel order.
    """

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    bands: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tile: int
    ignore_index: int = IGNORE_INDEX
    output_stride: int = 4
    architecture: str = ""
    config: str = ""
    checkpoint_digest: str | None = None
    input_dtype: str = "uint8"
    stride: int | None = None  # window stride the model was evaluated with (mmseg's slide test_cfg)
    reduce_zero_label: bool = False  # its training labels were 1-based (0 = ignored), as in mmseg
    output: str = "logits"  # "logits" (N, C, H, W) float32 or "labels" (N, H, W) uint8
    gsd_m: float | None = None  # ground sample distance of its training scenes (metres per pixel)
    build: BuildRecord | None = None

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so specs compare and hash by value.
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in p) for p in self.palette))
        object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if isinstance(self.build, dict):
            object.__setattr__(self, "build", BuildRecord(**self.build))
        self._validate()

    def _validate(self) -> None:
        if not self.classes:
            raise SpecError("A model spec needs at least one class name.")
        if len(self.classes) > 255:
            raise SpecError("A model spec supports at most 255 classes (labels are uint8).")
        if len(self.palette) != len(self.classes):
            raise SpecError(
                f"The palette has {len(self.palette)} colours for {len(self.classes)} classes."
            )
        if any(len(p) != 3 or not all(0 <= v <= 255 for v in p) for p in self.palette):
            raise SpecError("Each palette colour must be three integers in 0..255.")
        if not self.bands or any(b < 1 for b in self.bands):
            raise SpecError("Input bands must be a non-empty list of 1-based band indexes.")
        if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
            raise SpecError(
                f"mean and std need one value per input band ({len(self.bands)} bands)."
            )
        if any(s <= 0 for s in self.std):
            raise SpecError("Every per-band std must be positive.")
        if self.tile < 16:
            raise SpecError(f"Tile size {self.tile} is too small; use at least 16 pixels.")
        if self.output not in ("logits", "labels"):
            raise SpecError(f"Unknown spec output {self.output!r}; use 'logits' or 'labels'.")
        if self.stride is not None and not 0 < self.stride <= self.tile:
            raise SpecError(f"The window stride {self.stride} must be in 1..{self.tile} (the tile).")
        if 0 <= self.ignore_index < len(self.classes):
            raise SpecError(f"ignore_index {self.ignore_index} collides with a class index.")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (the spec itself is frozen)."""
        return dataclasses.replace(self, **changes)

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec_version"] = SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        version = d.pop("spec_version", SPEC_VERSION)
        if version > SPEC_VERSION:
            raise SpecError(
                f"This spec has format version {version}; upgrade segbench to read it."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SpecError(f"Unknown field(s) in spec: {', '.join(sorted(unknown))}.")
        try:
            return cls(**d)
        except TypeError as exc:
            raise SpecError(f"Malformed spec: {exc}.") from exc

    def save(self, artifact: str | os.PathLike[str]) -> Path:
        """Write this spec as the sidecar of ``artifact`` (atomically) and return its path."""
        path = sidecar_path(artifact)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, artifact: str | os.PathLike[str]) -> ModelSpec:
        """Read the sidecar spec of ``artifact``."""
        path = sidecar_path(artifact)
        if not path.is_file():
            raise SpecError(
                f"No spec found for {artifact} (expected {path.name} beside it); "
                "artifacts must be made by segbench export/build."
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"Spec {path} is not valid JSON: {exc}.") from exc
        if not isinstance(data, dict):
            raise SpecError(f"Spec {path} must hold a JSON object.")
        return cls.from_dict(data)


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """The spec file that belongs to ``artifact``: ``<artifact>.spec.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SPEC_SUFFIX)


ISPRS_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
ISPRS_PALETTE = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for ``n`` classes with no palette of their own."""
    return tuple(((37 * i) % 256, (91 * i) % 256, (151 * i) % 256) for i in range(n))
