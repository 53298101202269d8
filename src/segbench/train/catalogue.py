"""The networks remote-sensing papers compare, each built from mmseg's own config.

Every entry names a config shipped inside the mmsegmentation wheel
(``mmseg/.mim/configs``); :func:`segbench.train.config.model_config`
reconfigures it for a dataset's classes, bands and tile size. The registry
makes "list what exists" and "create by name" one call each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segbench.errors import InputError

CNN, ATTENTION, TRANSFORMER, FAST = "CNN context", "attention", "transformer", "fast CNN"


@dataclass(frozen=True)
class CatalogueEntry:
    """One network: its name, family and the mmseg config it starts from."""

    name: str
    family: str
    config: str  # relative to mmseg/.mim/configs
    description: str

    def config_path(self) -> Path:
        """Absolute path of the mmseg config inside the installed wheel."""
        from segbench.mmseg.configs import shipped_configs_root

        path = shipped_configs_root() / self.config
        if not path.is_file():
            raise InputError(f"mmseg config {self.config} is missing; reinstall mmsegmentation.")
        return path


_ENTRIES = [
    CatalogueEntry("fcn-r50", CNN, "fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py",
                   "FCN, ResNet-50 dilated 8"),
    CatalogueEntry("pspnet-r18", CNN, "pspnet/pspnet_r18-d8_4xb4-80k_potsdam-512x512.py",
                   "PSPNet pyramid pooling, ResNet-18"),
    CatalogueEntry("pspnet-r50", CNN, "pspnet/pspnet_r50-d8_4xb4-80k_potsdam-512x512.py",
                   "PSPNet pyramid pooling, ResNet-50"),
    CatalogueEntry("deeplabv3plus-r18", CNN,
                   "deeplabv3plus/deeplabv3plus_r18-d8_4xb4-80k_potsdam-512x512.py",
                   "DeepLabV3+ atrous spatial pyramid pooling, ResNet-18"),
    CatalogueEntry("deeplabv3plus-r50", CNN,
                   "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_potsdam-512x512.py",
                   "DeepLabV3+ atrous spatial pyramid pooling, ResNet-50"),
    CatalogueEntry("danet-r50", ATTENTION, "danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py",
                   "DANet position and channel attention, ResNet-50"),
    CatalogueEntry("nonlocal-r50", ATTENTION,
                   "nonlocal_net/nonlocal_r50-d8_4xb4-80k_ade20k-512x512.py",
                   "Non-local blocks, ResNet-50"),
    CatalogueEntry("upernet-swin-t", TRANSFORMER,
                   "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
                   "UperNet on Swin-T"),
    CatalogueEntry("segformer-b0", TRANSFORMER,
                   "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py", "SegFormer MiT-B0"),
    CatalogueEntry("segformer-b1", TRANSFORMER,
                   "segformer/segformer_mit-b1_8xb2-160k_ade20k-512x512.py", "SegFormer MiT-B1"),
    CatalogueEntry("segformer-b2", TRANSFORMER,
                   "segformer/segformer_mit-b2_8xb2-160k_ade20k-512x512.py", "SegFormer MiT-B2"),
    CatalogueEntry("fcn-hrnet18s", FAST, "hrnet/fcn_hr18s_4xb4-80k_potsdam-512x512.py",
                   "FCN on HRNetV2-W18-Small"),
    CatalogueEntry("bisenetv2", FAST, "bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py",
                   "BiSeNetV2 two-pathway real-time network"),
    CatalogueEntry("stdc1", FAST, "stdc/stdc1_4xb12-80k_cityscapes-512x1024.py",
                   "STDC1 short-term dense concatenation"),
]
CATALOGUE: dict[str, CatalogueEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> CatalogueEntry:
    """The catalogue entry called ``name`` (or an mmseg config file's), or one sentence listing the names."""
    if name.endswith(".py"):
        return entry_for_config(name)
    try:
        return CATALOGUE[name]
    except KeyError:
        raise InputError(
            f"Unknown model {name!r}; choose one of: {', '.join(CATALOGUE)}."
        ) from None


TRANSFORMER_BACKBONES = ("MixVisionTransformer", "SwinTransformer", "VisionTransformer", "BEiT", "MAE",
                         "PCPVT", "SVT", "MSCAN")


def entry_for_config(path: str | Path) -> CatalogueEntry:
    """An entry for any mmseg config file, trained with its family's recipe like the catalogue's."""
    from segbench.mmseg.configs import load_config

    path = Path(path).resolve()
    backbone = load_config(path).model.get("backbone", {}).get("type", "")
    family = TRANSFORMER if backbone in TRANSFORMER_BACKBONES else CNN
    return CatalogueEntry(path.stem, family, str(path), f"{backbone} from {path.name}")
