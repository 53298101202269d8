"""Checkpoints written by mmseg and mmengine, loaded without running code.

Model-zoo files hold ``state_dict`` and ``meta``; work-dir checkpoints from
mmengine's runner add ``message_hub`` (``HistoryBuffer`` objects holding numpy
arrays), optimizer and scheduler states. Both load with
``torch.load(weights_only=True)`` and an allow-list of exactly the types
mmengine writes; any other type is refused with one sentence that names it,
because unpickling an arbitrary type is running the file's code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbench.checkpoint import load_weights_only
from segbench.errors import InputError

# Module prefixes stripped from parameter names, as mmengine's loader does
# (DataParallel / DistributedDataParallel wrappers save them).
WRAPPER_PREFIXES = ("module.",)


@dataclass(frozen=True)
class ForeignCheckpoint:
    """The weights of an mmseg checkpoint and what its ``meta`` says about them."""

    path: Path
    state_dict: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """Classes and palette as the runner saved them (``meta.dataset_meta``), if any."""
        meta = self.meta.get("dataset_meta") or {}
        if not meta and self.meta.get("CLASSES"):  # mmseg 0.x model-zoo files
            meta = {"classes": self.meta["CLASSES"], "palette": self.meta.get("PALETTE")}
        return meta if isinstance(meta, dict) else {}


def _history_buffer_method(owner: type, name: str):
    """``getattr`` as mmengine's pickles use it, restricted to ``HistoryBuffer``'s statistics.

    A ``HistoryBuffer`` pickles its statistic methods as ``getattr(HistoryBuffer,
    'mean')``; the builtin ``getattr`` itself is never allowed, since it would
    reach any attribute of any object in the file.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    method = getattr(HistoryBuffer, name, None) if owner is HistoryBuffer else None
    if name.startswith("_") or not callable(method):
        owner_name = getattr(owner, "__name__", owner)
        raise pickle.UnpicklingError(f"GLOBAL builtins.getattr (of {owner_name}.{name})")
    return method


def allowed_types() -> list:
    """The non-tensor types mmengine's runner writes into a checkpoint."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    numpy_core = np._core if hasattr(np, "_core") else np.core
    types: list = [HistoryBuffer, np.ndarray, np.dtype, numpy_core.multiarray._reconstruct,
                   numpy_core.multiarray.scalar, (_history_buffer_method, "builtins.getattr")]
    # numpy >= 1.25 pickles each dtype as its own class (numpy.dtypes.Float64DType, ...).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return types


def load_checkpoint(path: str | os.PathLike[str]) -> ForeignCheckpoint:
    """The weights and meta of a model-zoo or work-dir checkpoint, loaded with ``weights_only=True``."""
    import torch

    path = Path(path)
    payload = load_weights_only(path, allowed_types())
    if not isinstance(payload, dict):
        raise InputError(f"Checkpoint {path} holds a {type(payload).__name__}, not a state dict.")
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"Checkpoint {path} holds no model weights (no 'state_dict' of tensors).")
    state = {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    return ForeignCheckpoint(path, state, meta)


def match_weights(model, state_dict: dict[str, Any], checkpoint: Path) -> None:
    """Load ``state_dict`` into ``model`` exactly; one sentence when the architectures differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        raise InputError(
            f"Checkpoint {checkpoint} belongs to another architecture or class count: "
            f"of its {len(own)} weights, {describe_mismatch(missing, unexpected, wrong)}."
        )
    model.load_state_dict(state_dict, strict=True)


def load_backbone(model, path: str | os.PathLike[str]) -> int:
    """Load a pretrained backbone file (e.g. mmseg's ``mit_b0`` or ResNet-V1c) into ``model.backbone``.

    Keys may carry a ``backbone.`` prefix (a whole segmentor's file); a
    classifier's extra weights (``fc.*``) are ignored. Returns how many weights
    were loaded; one sentence when the file does not fit the backbone.
    """
    weights = load_checkpoint(path)
    state = weights.state_dict
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in state]
    wrong = [k for k in needed if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or wrong:
        unexpected = [k for k in state if k not in own]
        matched = len(needed) - len(missing) - len(wrong)
        raise InputError(
            f"Pretrained file {weights.path} does not fit the {type(model.backbone).__name__} "
            f"backbone: {matched} of {len(needed)} weights match; "
            f"{describe_mismatch(missing, unexpected, wrong)}."
        )
    model.backbone.load_state_dict({k: state[k] for k in needed}, strict=False)
    return len(needed)


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str], show: int = 3) -> str:
    """'N missing (a, b, ...); K unexpected (...); J of another shape (...)'."""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected),
                       ("of another shape", wrong)):
        if keys:
            names = ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")
            parts.append(f"{len(keys)} {what} ({names})")
    return "; ".join(parts)


def _strip_prefix(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


