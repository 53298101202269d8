"""Shared fixtures: small real artifacts (GeoTIFF scenes, ONNX graphs with specs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin

from segbench.raster import write_raster
from segbench.spec import BuildRecord, ModelSpec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
UTM = CRS.from_epsg(32633)


def make_spec(bands: int = 3, classes: int = 3, tile: int = 32) -> ModelSpec:
    return ModelSpec(
        classes=tuple(f"class{i}" for i in range(classes)),
        palette=tuple((i * 40, 255 - i * 40, 7 * i) for i in range(classes)),
        bands=tuple(range(1, bands + 1)),
        mean=(100.0,) * bands,
        std=(50.0,) * bands,
        tile=tile,
        architecture="tiny-conv",
    )


def tiny_conv_onnx(path: Path, spec: ModelSpec, seed: int = 0) -> Path:
    """A real two-layer conv net as ONNX (normalization baked in), with its spec.

    pixels -> (x - mean) / std -> 3x3 conv -> ReLU -> 1x1 conv -> logits, same size.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    b, c, hidden = spec.num_bands, spec.num_classes, 8
    inits = [
        numpy_helper.from_array(np.array(spec.mean, np.float32).reshape(1, b, 1, 1), "mean"),
        numpy_helper.from_array(np.array(spec.std, np.float32).reshape(1, b, 1, 1), "std"),
        numpy_helper.from_array(rng.normal(0, 0.5, (hidden, b, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (hidden,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (c, hidden, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (c,)).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["x"]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Conv", ["a", "w2", "b2"], ["logits"]),
    ]
    t = spec.tile
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", b, t, t])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c, t, t])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    spec.replace(build=BuildRecord(backend="onnx", precision="fp32")).save(path)
    return path


def tiny_conv_pt2(path: Path, spec: ModelSpec, seed: int = 0, engine: str = "torch-fp32") -> Path:
    """The same kind of two-layer conv net as :func:`tiny_conv_onnx`, as a torch engine: a
    ``torch.export`` program (``.pt2``) with the spec and build record ``segbench build`` writes."""
    import torch

    class TinyConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(seed)
            b, c, hidden = spec.num_bands, spec.num_classes, 8
            self.register_buffer("mean", torch.tensor(spec.mean).reshape(1, b, 1, 1))
            self.register_buffer("std", torch.tensor(spec.std).reshape(1, b, 1, 1))
            self.conv1 = torch.nn.Conv2d(b, hidden, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(hidden, c, 1)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

        def forward(self, pixels):
            return self.conv2(torch.relu(self.conv1((pixels - self.mean) / self.std)))

    example = torch.zeros(2, spec.num_bands, spec.tile, spec.tile)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(TinyConv().eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    precision = engine.rsplit("-", 1)[1]
    spec.replace(build=BuildRecord(backend="torch", precision=precision, engine=engine)).save(path)
    return path


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return make_spec()


@pytest.fixture
def tiny_onnx(tmp_path: Path, tiny_spec: ModelSpec) -> Path:
    return tiny_conv_onnx(tmp_path / "model.onnx", tiny_spec)


def write_scene(path: Path, data: np.ndarray, nodata=None, crs=UTM, pixel: float = 0.5) -> Path:
    """Write ``data`` (bands, H, W) as a georeferenced GeoTIFF."""
    return write_raster(path, data, crs=crs, transform=from_origin(500_000, 5_800_000, pixel, pixel),
                        nodata=nodata)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    return write_scene(tmp_path / "scene.tif", rng.integers(0, 256, (3, 100, 130), dtype=np.uint8))


def require_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (it ships beside the checkout, not in it)")
    return path
