"""Seams: error rate within 16 px of interior window borders against elsewhere, per blend mode.

With ``cosine`` blending the error near window borders should be no worse
than elsewhere. Uses the demo's model and held-out scene by default:

    python benchmarks/bench_seams.py [--demo segbench-demo] [--engine ort-fp32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from segbench.engines.registry import build, load
from segbench.raster import read_all
from segbench.tiler import segment
from segbench.tiler.windows import axis_starts, stride_for

BAND = 16


def border_mask(height: int, width: int, tile: int, stride: int) -> np.ndarray:
    """Pixels within BAND px of a window edge that lies inside the scene."""
    mask = np.zeros((height, width), bool)
    for size, axis in ((height, 0), (width, 1)):
        edges = set()
        for s in axis_starts(size, tile, stride):
            edges.update(e for e in (s, s + tile) if 0 < e < size)
        for e in edges:
            sl = slice(max(e - BAND, 0), e + BAND)
            if axis == 0:
                mask[sl, :] = True
            else:
                mask[:, sl] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("segbench-demo"))
    parser.add_argument("--engine", default="ort-fp32")
    parser.add_argument("--overlap", type=int, default=None, help="default: a quarter tile")
    args = parser.parse_args()
    model = args.demo / "model" / "model.onnx"
    scene = next((args.demo / "data" / "test" / "images").glob("*.tif"))
    labels = read_all(args.demo / "data" / "test" / "labels" / scene.name)[0]
    out_dir = Path(tempfile.mkdtemp(prefix="segbench-seams-"))
    engine = load(build(model, args.engine, out_dir))
    tile = engine.spec.tile
    stride = stride_for(tile, args.overlap)
    near = border_mask(*labels.shape, tile, stride)
    valid = labels != engine.spec.ignore_index
    print(f"scene {scene.name} {labels.shape[1]}x{labels.shape[0]}, tile {tile}, stride {stride}, "
          f"{near[valid].mean():.1%} of pixels within {BAND} px of an interior window border")
    print(f"{'blend':<8}{'error near borders':>20}{'error elsewhere':>18}{'ratio':>8}")
    for blend in ("mean", "cosine", "crop"):
        out = out_dir / f"{blend}.tif"
        segment(scene, engine, out, stride=stride, blend=blend, batch=4)
        wrong = (read_all(out)[0] != labels) & valid
        e_near = wrong[near].sum() / max((valid & near).sum(), 1)
        e_far = wrong[~near].sum() / max((valid & ~near).sum(), 1)
        print(f"{blend:<8}{e_near:>20.4%}{e_far:>18.4%}{e_near / e_far if e_far else float('nan'):>8.2f}")


if __name__ == "__main__":
    main()
