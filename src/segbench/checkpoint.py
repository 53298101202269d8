"""segbench's checkpoint format: weights, the mmseg model config and the spec.

mmengine's own checkpoints pickle optimizer and message-hub objects that
torch refuses to load with ``weights_only=True`` (and loading them without
it runs arbitrary code). segbench keeps only plain data: the state dict,
the model config as a plain dict, and the spec, so :func:`load_model` can
always use ``weights_only=True``. A ``<checkpoint>.spec.json`` sidecar holds
the same spec plus the checkpoint's digest.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segbench.errors import InputError
from segbench.files import atomic_output, sha256_file
from segbench.spec import ModelSpec


def load_weights_only(path: str | os.PathLike[str], allowed: Iterable[Any] = (),
                      what: str = "Checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with the ``allowed`` types, every failure one sentence.

    A file that pickles any other type is refused naming the type, because unpickling it would
    run code from the file; torch's own message, which suggests loading with
    ``weights_only=False``, is never relayed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist.")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = refused_type(str(exc))
        if name:
            raise InputError(f"{what} {path} holds a {name} object, which segbench does not load: "
                             "unpickling it would run code from the file.") from exc
        raise InputError(f"{what} {path} is corrupt or truncated.") from exc
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise InputError(f"{what} {path} is corrupt, truncated or not a PyTorch file "
                         f"({type(exc).__name__}).") from exc


def refused_type(message: str) -> str | None:
    """The dotted type name in torch's 'Unsupported global: GLOBAL a.b.C' message."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def save_checkpoint(path: str | os.PathLike[str], model: Any, model_cfg: dict, spec: ModelSpec) -> ModelSpec:
    """Write ``model``'s weights with its config and spec; returns the spec with its digest."""
    import torch

    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "model_config": _plain(model_cfg), "spec": spec.to_dict()}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    spec = spec.replace(checkpoint_digest=sha256_file(path))
    spec.save(path)
    return spec


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, ModelSpec]:
    """Build the mmseg model of a segbench checkpoint, in eval mode, with its spec."""
    from mmengine.model import revert_sync_batchnorm

    path = Path(path)
    payload = load_weights_only(path)
    if not isinstance(payload, dict) or "model_config" not in payload:
        raise InputError(f"{path} is not a segbench checkpoint; train one with 'segbench train'.")
    model = build_mmseg_model(payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    model = revert_sync_batchnorm(model).to(device).eval()
    spec = ModelSpec.from_dict(payload["spec"])
    if spec.checkpoint_digest is None:
        spec = spec.replace(checkpoint_digest=sha256_file(path))
    return model, spec


def build_mmseg_model(config: dict) -> Any:
    """An mmseg model from its config (random weights), without mmseg's builder notices."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    with warnings.catch_warnings():  # mmseg's own deprecation notices about its builders
        warnings.simplefilter("ignore", UserWarning)
        return MODELS.build(config)


def measure_output_stride(model: Any, tile: int, bands: int) -> int:
    """Input size over the decode head's output size, measured with one forward pass."""
    import torch

    model.eval()
    with torch.inference_mode():
        out = model._forward(torch.zeros(1, bands, tile, tile))
    out = out[0] if isinstance(out, list | tuple) else out
    return max(tile // out.shape[-1], 1)


def _plain(node: Any) -> Any:
    """Config values as plain dicts/lists/scalars (loadable with weights_only=True)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node
