"""Shared fixtures: small real artifacts (GeoTIFF scenes, ONNX graphs with specs)."""

from __future__ import annotations

import importlib.util
import os
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin

from segbench.raster import write_raster
from segbench.spec import BuildRecord, ModelSpec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
UTM = CRS.from_epsg(32633)


# -- skips: a broken runtime always fails; in CI every skip fails but the allowed ones -------------

#: CI (.ci/run) sets SEGBENCH_STRICT_SKIPS=1: every client, extra and CPU runtime is installed there,
#: so a test skipped for want of one fails; a user's ``make test`` skips with the reason.
STRICT = os.environ.get("SEGBENCH_STRICT_SKIPS", "").strip() not in ("", "0")

#: skips allowed even in CI, by their reasons: what no CI machine is asked to have
ALLOWED = {
    # a CUDA GPU (and, on a GPU machine, the tests of what a CPU-only machine says)
    "a CUDA GPU": re.compile(r"CUDA GPU|NVIDIA GPU|CUDA provider|CUDA machine|this machine has a GPU"),
    "a kernel feature": re.compile(r"\bkernel\b"),
}
#: the clients .ci/run installs with apt (and ../shared's data, which it cannot), by the name under
#: which it lists one it could not provide in SEGBENCH_ABSENT_CLIENTS, and the skips that one explains
CLIENTS = {
    "qgis": re.compile(r"QGIS is not installed"),
    "chromium": re.compile(r"Chromium is not installed"),
    "pdflatex": re.compile(r"pdflatex is not installed"),
    "shared-data": re.compile(r"real test data .* is absent"),
}
#: a reason naming a segbench extra to install: never a GPU's to excuse
EXTRA = re.compile(r"pip install 'segbench\[")


def absent_clients() -> set[str]:
    """The clients .ci/run said it could not install (SEGBENCH_ABSENT_CLIENTS, comma separated)."""
    names = {n.strip() for n in os.environ.get("SEGBENCH_ABSENT_CLIENTS", "").split(",") if n.strip()}
    unknown = names - set(CLIENTS)
    if unknown:
        raise ValueError(f"SEGBENCH_ABSENT_CLIENTS names {sorted(unknown)}; known: {sorted(CLIENTS)}")
    return names


@cache
def broken_runtimes() -> tuple[str, ...]:
    """The reasons of every engine whose runtime is installed but broken here (probed once, when a
    test first skips): a test that skips with one of them has met a broken install, not a missing one."""
    from segbench.engines.registry import KINDS, probe

    found = (probe(name, run) for name in KINDS for run in (False, True))
    return tuple(sorted({f.reason for f in found if f.state == "broken"}))


def broken_reason(reason: str) -> str | None:
    """Why a skip with ``reason`` is really a broken runtime, or None."""
    if any(broken in reason for broken in broken_runtimes()):
        return "its runtime is installed but broken"
    imported = re.search(r"could not import '([\w.]+)'", reason)  # pytest.importorskip
    if imported:
        try:
            installed = importlib.util.find_spec(imported.group(1).split(".")[0]) is not None
        except (ImportError, ValueError):
            installed = False
        if installed:
            return f"{imported.group(1)} is installed but fails to import"
    return None


def skip_verdict(reason: str, strict: bool = STRICT, absent: set[str] | None = None) -> str | None:
    """None when a test may skip with ``reason``; else why that skip is a failure."""
    if (broken := broken_reason(reason)) is not None:
        return f"a broken install is a failure, not a skip: {broken}"
    if not strict:
        return None
    absent = absent_clients() if absent is None else absent
    if any(CLIENTS[name].search(reason) for name in absent):
        return None  # .ci/run could not install it, and said so
    if not EXTRA.search(reason) and any(pattern.search(reason) for pattern in ALLOWED.values()):
        return None
    return ("SEGBENCH_STRICT_SKIPS: CI installs every client, extra and CPU runtime (.ci/run), so only "
            f"a test that needs {' or '.join(ALLOWED)} this machine lacks may skip there")


def _reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_if_not_allowed(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        verdict = skip_verdict(reason)
        if verdict is not None:
            report.outcome = "failed"
            report.longrepr = f"{verdict}.\nIt skipped because: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module skipped whole (a module-level importorskip) is judged the same way: its failure is
    a collection error, which 'make test' (--continue-on-collection-errors) reports and goes on."""
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())


def require_engine(name: str, run: bool = True) -> None:
    """Skip, with the reason, a test of engine ``name`` where this machine cannot build it (with
    ``run``: or run it); fail the test where the engine's runtime is installed but broken."""
    from segbench.engines.registry import probe

    found = probe(name, run)
    if found.state == "broken":
        pytest.fail(f"{name}'s runtime is installed but broken: {found.reason}")
    if not found.ok:
        pytest.skip(found.reason)


def engine_here(name: str, run: bool = True) -> bool:
    """Whether the optional part of a test that needs engine ``name`` can run here; the test fails
    where the engine's runtime is broken, or where skipping that part is a skip CI does not allow."""
    from segbench.engines.registry import probe

    found = probe(name, run)
    if not found.ok and (verdict := skip_verdict(found.reason)) is not None:
        pytest.fail(f"{verdict}: {found.reason}")
    return found.ok


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
    return _save_graph(graph, path, spec)


def _save_graph(graph, path: Path, spec: ModelSpec) -> Path:
    """An fp32 graph as an ONNX file at IR 9, opset 18, with its spec."""
    import onnx
    from onnx import helper

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


def outlier_conv_onnx(path: Path, spec: ModelSpec, scale: float = 1.0, seed: int = 0,
                      outliers: tuple[int, ...] = (2, 5), hidden: int = 32, depthwise: bool = False) -> Path:
    """A four-layer conv net (``conv1`` .. ``conv4``, 3x3 3x3 1x1 1x1, ReLU between) as ONNX, with its
    spec, its last layer fitted to the colours of blob scenes; ``scale`` > 1 makes the ``outliers``
    channels of ``conv2``'s output ``scale`` times larger and divides ``conv3``'s weights on them by as
    much: the same function in float (a function-preserving rescale, as trained networks have outlier
    channels), and activations int8 cannot hold per tensor. ``depthwise``: conv3 is a depthwise
    1x1 convolution (a per-channel scale), whose inputs smoothing leaves alone."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    b, c = spec.num_bands, spec.num_classes
    w = {"w1": rng.normal(0, 0.4, (hidden, b, 3, 3)), "b1": rng.normal(0, 0.1, hidden),
         "w2": rng.normal(0, 0.3, (hidden, hidden, 3, 3)), "b2": rng.normal(0, 0.1, hidden),
         "w3": (rng.uniform(0.5, 1.5, (hidden, 1, 1, 1)) if depthwise
                else rng.normal(0, 0.3, (hidden, hidden, 1, 1))), "b3": rng.normal(0, 0.1, hidden),
         "w4": rng.normal(0, 0.5, (c, hidden, 1, 1)), "b4": rng.normal(0, 0.1, c)}
    w["w4"], w["b4"] = _fit_readout(w, spec)
    k = list(outliers)
    w["w2"][k] *= scale
    w["b2"][k] *= scale
    w["w3"][k if depthwise else (slice(None), k)] /= scale
    inits = [numpy_helper.from_array(np.array(spec.mean, np.float32).reshape(1, b, 1, 1), "mean"),
             numpy_helper.from_array(np.array(spec.std, np.float32).reshape(1, b, 1, 1), "std")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in w.items()]
    nodes = [helper.make_node("Sub", ["pixels", "mean"], ["centred"], name="sub"),
             helper.make_node("Div", ["centred", "std"], ["x"], name="div")]
    previous = "x"
    for i, pad in enumerate((1, 1, 0, 0), start=1):
        out = "logits" if i == 4 else f"h{i}"
        attributes = {"pads": [pad] * 4} if pad else {}
        if i == 3 and depthwise:
            attributes["group"] = hidden
        nodes.append(helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [out], name=f"conv{i}",
                                      **attributes))
        if i < 4:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            previous = f"a{i}"
    t = spec.tile
    graph = helper.make_graph(
        nodes, "outliers",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", b, t, t])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c, t, t])], inits)
    return _save_graph(graph, path, spec)


def _forward(w: dict, x: np.ndarray, layers: int) -> np.ndarray:
    """The net's first ``layers`` conv+ReLU layers in numpy, on normalized pixels ``(bands, H, W)``."""

    def conv(a, weight, bias):
        if weight.shape[1] == 1 and a.shape[0] > 1:  # depthwise 1x1
            return a * weight[:, 0, 0, 0, None, None] + bias[:, None, None]
        k = weight.shape[-1]
        pad = np.pad(a, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        out = np.zeros((weight.shape[0], *a.shape[1:]))
        for dy in range(k):
            for dx in range(k):
                window = pad[:, dy:dy + a.shape[1], dx:dx + a.shape[2]]
                out += np.einsum("oi,ihw->ohw", weight[:, :, dy, dx], window)
        return out + bias[:, None, None]

    for i in range(1, layers + 1):
        x = np.maximum(conv(x, w[f"w{i}"], w[f"b{i}"]), 0)
    return x


def colour_classes(pixels: np.ndarray) -> np.ndarray:
    """The rule the outlier net is fitted to: the nearest of the :data:`BLOB_COLOURS`."""
    distance = ((pixels[:3, None] - BLOB_COLOURS.T[:, :, None, None]) ** 2).sum(0)
    return np.argmin(distance, axis=0)


def _fit_readout(w: dict, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """A trained last layer: least squares from the hidden features to the colour classes (logits +-4),
    on blob imagery: a network with margins, as trained ones have, where random weights give near-ties."""
    pixels = blob_pixels(96, seed=123)[: spec.num_bands]
    x = (pixels - np.array(spec.mean)[:, None, None]) / np.array(spec.std)[:, None, None]
    hidden = _forward(w, x, 3).reshape(w["w3"].shape[0], -1).T
    target = np.full((hidden.shape[0], spec.num_classes), -4.0)
    target[np.arange(hidden.shape[0]), colour_classes(pixels).ravel() % spec.num_classes] = 4.0
    design = np.hstack([hidden, np.ones((hidden.shape[0], 1))])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    return solution[:-1].T.reshape(spec.num_classes, -1, 1, 1), solution[-1]


#: the colours of blob scenes: red, green, blue and dark ground, one per class of the outlier net
BLOB_COLOURS = np.array([(200, 60, 50), (50, 190, 70), (60, 80, 210), (40, 35, 30)], float)


def blob_scene(path: Path, size: int = 128, bands: int = 3, seed: int = 0, blob: int = 16) -> Path:
    """A scene of squares in the four :data:`BLOB_COLOURS` (varied and noisy): imagery with classes a
    network can tell apart, where random noise gives every pixel a near-tie."""
    return write_scene(path, blob_pixels(size, seed, blob)[:bands].astype(np.uint8))


def blob_pixels(size: int, seed: int, blob: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = size // blob
    colours = BLOB_COLOURS[rng.integers(0, len(BLOB_COLOURS), (n, n))] + rng.normal(0, 15, (n, n, 3))
    cells = np.moveaxis(colours, -1, 0)
    data = np.kron(cells, np.ones((blob, blob))) + rng.normal(0, 8, (3, n * blob, n * blob))
    return np.clip(data, 0, 255)


def outliers_in_several_inputs_onnx(path: Path, spec: ModelSpec, scale: float = 100.0) -> Path:
    """:func:`outlier_conv_onnx` with a depthwise ``conv3`` and outliers in the inputs of two layers:
    ``conv1``'s output channels 1 and 7 (``conv2``'s input, a plain convolution) and ``conv2``'s
    channels 2 and 5 (the depthwise ``conv3``'s input, as SegFormer's Mix-FFN has), each ``scale``
    times larger with the reader's weights divided by as much: the same function in float."""
    import onnx
    from onnx import numpy_helper

    outlier_conv_onnx(path, spec, scale=scale, depthwise=True)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    w = {name: numpy_helper.to_array(inits[name]).copy() for name in ("w1", "b1", "w2")}
    picked = [1, 7]
    w["w1"][picked] *= scale
    w["b1"][picked] *= scale
    w["w2"][:, picked] /= scale
    for name, value in w.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(path))
    return path


#: the colours of small-class scenes: red, green, blue ground, and small white squares (class 3)
SMALL_CLASS_COLOURS = np.array([(200, 60, 50), (50, 190, 70), (60, 80, 210), (235, 235, 235)], float)


def small_class_scene(path: Path, size: int = 192, seed: int = 0) -> Path:
    """Blobs of red, green and blue ground with a 2x2 white square at the centre of every 32x32 cell:
    any 32^2 window holds about 0.4% white pixels, the small class (cars in an urban scene)."""
    rng = np.random.default_rng(seed)
    n = size // 16
    cells = SMALL_CLASS_COLOURS[rng.integers(0, 3, (n, n))] + rng.normal(0, 10, (n, n, 3))
    data = np.kron(np.moveaxis(cells, -1, 0), np.ones((16, 16))) + rng.normal(0, 6, (3, size, size))
    for r in range(15, size, 32):
        for c in range(15, size, 32):
            data[:, r:r + 2, c:c + 2] = SMALL_CLASS_COLOURS[3][:, None, None]
    return write_scene(path, np.clip(data, 0, 255).astype(np.uint8))


def small_class_onnx(path: Path, spec: ModelSpec) -> Path:
    """A two-layer 1x1 conv net (``conv1`` -> ReLU -> ``conv2``) for :func:`small_class_scene`, exact in
    float: three hidden channels ``100 * relu(band)`` carry red, green and blue, a fourth carries white
    at a ten-thousandth of their size (``0.01 * relu(r + g + b - 6)``, its classifier weight 300 to
    match), so per-tensor int8 of the hidden activation rounds white to nothing: the loss sits in one
    small class, and pixel agreement barely sees it."""
    from onnx import TensorProto, helper, numpy_helper

    b, t = spec.num_bands, spec.tile
    w1 = np.zeros((4, b, 1, 1))
    w1[:3, :3, 0, 0] = 100 * np.eye(3)
    w1[3, :3, 0, 0] = 0.01
    b1 = np.array([0, 0, 0, -0.06])
    w2 = np.zeros((4, 4, 1, 1))
    w2[:3, :3, 0, 0] = np.eye(3) / 100
    w2[3, 3, 0, 0] = 300.0
    inits = [numpy_helper.from_array(np.array(spec.mean, np.float32).reshape(1, b, 1, 1), "mean"),
             numpy_helper.from_array(np.array(spec.std, np.float32).reshape(1, b, 1, 1), "std")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n)
              for n, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", np.zeros(4)))]
    nodes = [helper.make_node("Sub", ["pixels", "mean"], ["centred"], name="sub"),
             helper.make_node("Div", ["centred", "std"], ["x"], name="div"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="conv1"),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["logits"], name="conv2")]
    graph = helper.make_graph(
        nodes, "small-class",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", b, t, t])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, t, t])], inits)
    return _save_graph(graph, path, spec)


def channels_last_outlier_onnx(path: Path, spec: ModelSpec, scale: float = 100.0, hidden: int = 16) -> Path:
    """``conv1`` (3x3) -> ReLU -> Transpose to channels-last -> ``matmul`` (a pointwise Linear, as
    ConvNeXt's and Swin's are) -> Transpose back -> ReLU -> ``conv2`` (1x1 classifier), random weights,
    with ``conv1``'s output channels 0 and 3 ``scale`` times larger and the MatMul's rows for them
    divided by as much: outliers in a MatMul's input whose channels are axis 3 of a 4-D tensor."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    b, c, t = spec.num_bands, spec.num_classes, spec.tile
    w1, b1 = rng.normal(0, 0.4, (hidden, b, 3, 3)), rng.normal(0, 0.1, hidden)
    wm = rng.normal(0, 0.3, (hidden, hidden))
    w1[[0, 3]] *= scale
    b1[[0, 3]] *= scale
    wm[[0, 3]] /= scale
    arrays = {"w1": w1, "b1": b1, "wm": wm, "w2": rng.normal(0, 0.5, (c, hidden, 1, 1)),
              "b2": rng.normal(0, 0.1, c)}
    inits = [numpy_helper.from_array(np.array(spec.mean, np.float32).reshape(1, b, 1, 1), "mean"),
             numpy_helper.from_array(np.array(spec.std, np.float32).reshape(1, b, 1, 1), "std")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in arrays.items()]
    nodes = [helper.make_node("Sub", ["pixels", "mean"], ["centred"], name="sub"),
             helper.make_node("Div", ["centred", "std"], ["x"], name="div"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Transpose", ["a1"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["nhwc", "wm"], ["m"], name="matmul"),
             helper.make_node("Transpose", ["m"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Relu", ["nchw"], ["a2"], name="relu2"),
             helper.make_node("Conv", ["a2", "w2", "b2"], ["logits"], name="conv2")]
    graph = helper.make_graph(
        nodes, "channels-last",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", b, t, t])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c, t, t])], inits)
    return _save_graph(graph, path, spec)
