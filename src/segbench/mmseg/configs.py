"""mmseg 1.x config files: find the shipped ones, load any one, make its model deployable.

Configs are Python files whose ``_base_`` inheritance mmengine resolves; the
ones shipped inside the mmsegmentation wheel live under ``mmseg/.mim/configs``
and load as they are.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from segbench.errors import InputError, first_line


def shipped_configs_root() -> Path:
    """The folder of configs inside the installed mmsegmentation wheel."""
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def list_configs(pattern: str = "*") -> list[Path]:
    """Shipped configs whose path (relative to the configs folder) matches ``pattern``.

    The pattern matches anywhere in the path (``potsdam`` finds every Potsdam
    config, ``pspnet*potsdam`` the PSPNet ones), case-insensitively.
    """
    root = shipped_configs_root()
    glob = f"*{pattern}*"
    found = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if not any(part.startswith("_") for part in relative.parts) \
                and fnmatch.fnmatch(str(relative).lower(), glob.lower()):
            found.append(path)
    return sorted(found)


def load_config(path: str | os.PathLike[str]):
    """An mmengine ``Config`` with ``_base_`` resolved; one sentence when it is not an mmseg config."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Config {path} does not exist.")
    if path.suffix != ".py":
        raise InputError(f"{path} is not an mmseg config (a .py file); "
                         "'segbench import --list-configs PATTERN' lists the shipped ones.")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine raises many types for broken or foreign files
        raise InputError(f"{path} is not a loadable mmseg config ({first_line(exc)}).") from exc
    if not isinstance(cfg.get("model"), dict) or "type" not in cfg.model:
        raise InputError(f"{path} is not an mmseg config: it defines no 'model'.")
    return cfg


def walk(node: Any, fn) -> Any:
    """Apply ``fn`` to every dict in a nested config, depth first."""
    if isinstance(node, dict):
        for value in node.values():
            walk(value, fn)
        fn(node)
    elif isinstance(node, list | tuple):
        for value in node:
            walk(value, fn)
    return node


def _revert_syncbn(d: dict) -> None:
    if d.get("type") == "SyncBN":
        d["type"] = "BN"


def _drop_pretrained(d: dict) -> None:
    init = d.get("init_cfg")
    if isinstance(init, dict) and init.get("type") == "Pretrained":
        d["init_cfg"] = None
    if isinstance(d.get("pretrained"), str):
        d["pretrained"] = None


def deployable(model_cfg: dict) -> dict:
    """A model config for one CPU or GPU: SyncBN reverted to BN, pretrained downloads removed.

    Nothing is fetched at run time; weights come from a checkpoint or a local
    file the user names.
    """
    walk(model_cfg, _revert_syncbn)
    walk(model_cfg, _drop_pretrained)
    return model_cfg

