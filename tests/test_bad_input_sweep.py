"""Bad input and faults against every command (issue 35): each case asserts its exit status, one line
on stderr (one sentence, no traceback), its inputs byte-identical afterwards and nothing under a final
output name (nothing written at all where the command fails).

The command line runs in this process (:func:`segbench.cli.main`), so an exception that escapes it
fails the case with its traceback. The cases share one small world of inputs, copied for each case: a
tiny real ONNX model and its ORT engine, a uint8 scene with its labels, a float one, a report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from segbench.cli import main
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

GOLDEN_REPORT = Path(__file__).parent / "golden" / "report.json"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The world every case starts from (copied per case, so a case may damage its copy)."""
    from segbench.engines.registry import build

    root = tmp_path_factory.mktemp("world")
    spec = make_spec()  # 3 bands, 3 classes, tile 32, mean 100, std 50, uint8
    tiny_conv_onnx(root / "model.onnx", spec)
    tiny_conv_onnx(root / "fmodel.onnx", spec.replace(input_dtype="float32"))
    build(root / "model.onnx", "ort-fp32", root / "engines")
    build(root / "fmodel.onnx", "ort-fp32", root / "fengines")
    rng = np.random.default_rng(0)
    write_scene(root / "scene.tif", rng.integers(0, 255, (3, 48, 64), dtype=np.uint8))
    write_scene(root / "labels.tif", rng.integers(0, 3, (1, 48, 64), dtype=np.uint8), nodata=255)
    write_scene(root / "fscene.tif", rng.uniform(0, 255, (3, 48, 64)).astype(np.float32))
    shutil.copy(GOLDEN_REPORT, root / "report.json")
    (root / "notes.txt").write_text("a file that is not a folder\n")
    (root / "folder.tif").mkdir()
    (root / "folder.tif" / "keep.txt").write_text("a folder named like a raster\n")
    return root


@dataclass
class World:
    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def engine(self) -> Path:
        return next((self.root / "engines").glob("*.onnx"))

    @property
    def fengine(self) -> Path:
        return next((self.root / "fengines").glob("*.onnx"))

    def s(self, name: str) -> str:
        return str(self.root / name)


@dataclass
class Case:
    argv: list[str]
    code: int
    says: str = ""  # a part of the one line on stderr (case-insensitive)
    finals: list[str] = field(default_factory=list)  # final output names: absent on failure, else present
    lines: int = 1  # lines on stderr
    prefix: str = "segbench"  # how the line starts: an error or warning's, or a remark's
    check: Callable[[World], None] | None = None  # what a command that succeeded must have written
    kept: str | None = None  # where a failure leaves what it says on purpose (a bench's report of why)


def _seg(w: World, *args: str, engine: Path | None = None, out: str = "out.tif") -> list[str]:
    return ["segment", *args, "--engine", str(engine or w.engine), "-o", w.s(out), "--batch", "2"]


def _bench(w: World, *args: str, out: str = "bench", labels: str | None = "labels.tif",
           scene: str = "scene.tif") -> list[str]:
    return ["bench", "--model", w.s("model.onnx"), "--engines", "ort-fp32", "--scenes", w.s(scene),
            *(["--labels", w.s(labels)] if labels else []), "--reference", "ort-fp32",
            "--batch", "2", "-o", w.s(out), *args]


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _write(path: Path, content: bytes | str) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def then(*_setup) -> Callable[[Case], Case]:
    """The case, once its inputs (the arguments, evaluated first) are made: ``then(make(...))(Case(...))``."""
    return lambda case: case


def _scene(w: World, name: str, data: np.ndarray, nodata=None) -> str:
    write_scene(w / name, data, nodata=nodata)
    return w.s(name)


def _truncated_labels(w: World) -> str:
    data = np.random.default_rng(6).integers(0, 3, (1, 48, 64), dtype=np.uint8)
    _truncate(Path(_scene(w, "lcut.tif", data, nodata=255)), 0.6)
    return "lcut.tif"


def _study(w: World, out: str, dataset: str = "data") -> str:
    (w / "data").mkdir(exist_ok=True)
    _write(w / "study.toml", f'networks = ["segformer-b0"]\nengines = ["ort-fp32"]\n[study]\nname = "s"\n'
                             f'out = "{out}"\n[[datasets]]\nname = "d"\npath = "{dataset}"\n')
    return w.s("study.toml")


def _artifact_as_tif(w: World) -> None:
    shutil.copy(w / "scene.tif", w / "old.tif")
    shutil.copy(f"{w.engine}.spec.json", w / "old.tif.spec.json")


def _same_names(w: World) -> None:
    for sub in ("a", "b"):
        (w / sub).mkdir()
        shutil.copy(w / "scene.tif", w / sub / "scene.tif")


def _pixels(value: float, dtype=np.float32, seed: int = 0, spread: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (value + rng.uniform(-spread, spread, (3, 48, 64))).astype(dtype)


def _non_finite(value: float) -> np.ndarray:
    data = _pixels(120.0)
    data[:, :10, :10] = value
    data[1, 20:30, 20:30] = -value
    return data


def _nodata_where_not_finite(w: World) -> None:
    """The labels are nodata (255) exactly where a band of the scene is not finite."""
    import rasterio

    from segbench.raster import LABEL_NODATA

    with rasterio.open(w / "out.tif") as out:
        labels = out.read(1)
    bad = np.zeros(labels.shape, bool)
    bad[:10, :10] = bad[20:30, 20:30] = True
    assert (labels[bad] == LABEL_NODATA).all() and (labels[~bad] < 3).all()


def _labels(value: int | None, share_rows: int = 48) -> np.ndarray:
    data = np.random.default_rng(5).integers(0, 3, (1, 48, 64), dtype=np.uint8)
    data[0, :share_rows] = value
    return data


# -- the cases: each makes its inputs in the world and returns the command and what it must do ------

JUNK = b"\x80junk"


def _segment_cases() -> dict[str, Callable[[World], Case]]:
    scene = "scene.tif"
    return {
        # outputs that collide with inputs, artifacts or other files
        "segment -o the engine": lambda w: Case(_seg(w, w.s(scene), out=str(w.engine)), 1, "is a file"),
        "segment -o the scene": lambda w: Case(_seg(w, w.s(scene), out=scene), 1, "replace"),
        "segment -o the engine's spec": lambda w: Case(_seg(w, w.s(scene), out=f"{w.engine}.spec.json"), 1,
                                                       "is a file"),
        "segment -o an artifact named .tif": lambda w: then(_artifact_as_tif(w))(
            Case(_seg(w, w.s(scene), out="old.tif"), 1, "model or engine")),
        "segment -o under a file": lambda w: Case(_seg(w, w.s(scene), out="notes.txt/out.tif"), 1,
                                                  "notes.txt"),
        "segment -o a folder named .tif": lambda w: Case(_seg(w, w.s(scene), out="folder.tif"), 1, "folder"),
        "segment -o in a missing folder": lambda w: Case(_seg(w, w.s(scene), out="nowhere/out.tif"), 1,
                                                         "does not exist"),
        "segment --vector a folder": lambda w: then((w / "p.gpkg").mkdir())(
            Case(_seg(w, w.s(scene), "--vector", w.s("p.gpkg")), 1, "folder", finals=["out.tif"])),
        "segment --vector under a file": lambda w: Case(
            _seg(w, w.s(scene), "--vector", w.s("notes.txt/p.gpkg")), 1, "notes.txt", finals=["out.tif"]),
        "segment --vector in no vector format": lambda w: Case(
            _seg(w, w.s(scene), "--vector", w.s("notes.txt")), 2, "polygons", finals=["out.tif"]),
        "segment --chunk-files a file": lambda w: Case(
            _seg(w, w.s(scene), "--workers", "1", "--chunk-files", w.s("notes.txt")), 1, "notes.txt",
            finals=["out.tif"]),
        "segment --chunk-files without Dask": lambda w: Case(
            _seg(w, w.s(scene), "--chunk-files", w.s("chunks")), 2, "--workers", finals=["out.tif"]),
        "segment --probabilities on Dask": lambda w: Case(
            _seg(w, w.s(scene), "--workers", "1", "--probabilities"), 2, "--workers", finals=["out.tif"]),
        "segment two scenes of one name": lambda w: then(_same_names(w))(
            Case(_seg(w, w.s("a/scene.tif"), w.s("b/scene.tif"), out="outdir"), 1, "same name",
                 finals=["outdir"])),
        "segment --confidence onto the scene": lambda w: then(
            shutil.copy(w / scene, w / "out.confidence.tif"))(
            Case(_seg(w, w.s("out.confidence.tif"), "--confidence"), 1, "replace", finals=["out.tif"])),
        # corrupt, truncated, missing inputs
        "segment a missing scene": lambda w: Case(_seg(w, w.s("none.tif")), 1, "does not exist",
                                                  finals=["out.tif"]),
        "segment a text file as scene": lambda w: Case(_seg(w, w.s("notes.txt")), 1, "not a readable",
                                                       finals=["out.tif"]),
        "segment an empty file as scene": lambda w: then(_write(w / "empty.tif", b""))(
            Case(_seg(w, w.s("empty.tif")), 1, "empty.tif", finals=["out.tif"])),
        "segment a truncated scene": lambda w: then(_scene(w, "cut.tif", _pixels(0, np.uint8, spread=255)[
            :, :48, :48].repeat(6, 1).repeat(6, 2)), _truncate(w / "cut.tif", 0.3))(
            Case(_seg(w, w.s("cut.tif")), 1, "cut.tif", finals=["out.tif"])),
        "segment a folder without scenes": lambda w: then((w / "nothing").mkdir())(
            Case(_seg(w, w.s("nothing"), out="outdir"), 1, "holds no", finals=["outdir"])),
        "segment a scene without the bands": lambda w: Case(
            _seg(w, _scene(w, "one.tif", np.zeros((1, 40, 40), np.uint8))), 1, "band", finals=["out.tif"]),
        "segment a corrupt engine": lambda w: then(_write(w.engine, JUNK))(
            Case(_seg(w, w.s(scene)), 1, finals=["out.tif"])),
        "segment a truncated engine": lambda w: then(_truncate(w.engine))(
            Case(_seg(w, w.s(scene)), 1, finals=["out.tif"])),
        "segment an engine with a corrupt spec": lambda w: then(_write(Path(f"{w.engine}.spec.json"), "{x"))(
            Case(_seg(w, w.s(scene)), 1, "spec", finals=["out.tif"])),
        "segment an engine without its spec": lambda w: then(Path(f"{w.engine}.spec.json").unlink())(
            Case(_seg(w, w.s(scene)), 1, "spec", finals=["out.tif"])),
        "segment a folder as engine": lambda w: Case(
            _seg(w, w.s(scene), engine=w / "folder.tif"), 1, finals=["out.tif"]),
        # pixels and option values
        "segment +-inf pixels": lambda w: Case(
            _seg(w, _scene(w, "inf.tif", _non_finite(np.inf)), engine=w.fengine), 0, finals=["out.tif"],
            lines=0, check=_nodata_where_not_finite),
        "segment NaN pixels": lambda w: Case(
            _seg(w, _scene(w, "nan.tif", _non_finite(np.nan)), engine=w.fengine), 0, finals=["out.tif"],
            lines=0, check=_nodata_where_not_finite),
        "segment an int16 scene on a uint8 model": lambda w: Case(
            _seg(w, _scene(w, "i16.tif", _pixels(0, np.int16, spread=2000))), 0, "int16", finals=["out.tif"]),
        "segment pixels far from the model's means": lambda w: Case(
            _seg(w, _scene(w, "bright.tif", _pixels(10_000, spread=1000)), engine=w.fengine), 0,
            "standard deviations", finals=["out.tif"]),
        "segment --batch 10000000": lambda w: Case(
            [*_seg(w, w.s(scene))[:-1], "10000000"], 0, "not 10000000", finals=["out.tif"], prefix="batch"),
        "segment --overlap larger than the tile": lambda w: Case(
            _seg(w, w.s(scene), "--overlap", "1000"), 2, "overlap", finals=["out.tif"]),
        "segment --overlap negative": lambda w: Case(
            _seg(w, w.s(scene), "--overlap=-5"), 2, "overlap", finals=["out.tif"]),
        "segment --chunk without Dask": lambda w: Case(
            _seg(w, w.s(scene), "--chunk", "256"), 2, "--chunk", finals=["out.tif"]),
    }


def _bench_cases() -> dict[str, Callable[[World], Case]]:
    return {
        "bench -o a file": lambda w: Case(_bench(w, out="notes.txt"), 1, "notes.txt"),
        "bench -o under a file": lambda w: Case(_bench(w, out="notes.txt/bench"), 1, "notes.txt"),
        "bench -o the scene": lambda w: Case(_bench(w, out="scene.tif"), 1, "scene.tif"),
        "bench -o where its engines folder is a file": lambda w: then(
            (w / "b").mkdir(), _write(w / "b" / "engines", "x"))(Case(_bench(w, out="b"), 1, "engines")),
        "bench labels all outside the classes": lambda w: then(_scene(w, "l77.tif", _labels(77), nodata=255))(
            Case(_bench(w, labels="l77.tif"), 1, "no pixel", finals=["bench"])),
        "bench labels partly outside the classes": lambda w: then(_scene(w, "l9.tif", _labels(9, 12), 255))(
            Case(_bench(w, labels="l9.tif"), 0, "25.0%", finals=["bench/report.json"])),
        "bench an int16 scene on a uint8 model": lambda w: Case(  # said once, not once per engine
            [*_bench(w, scene=_scene(w, "i16.tif", _pixels(0, np.int16, spread=2000))),
             "--engines", "ort-fp32,openvino-fp32"], 0, "int16", finals=["bench/report.json"]),
        "bench where no engine can be measured": lambda w: then(  # the scene's pixels end early
            _scene(w, "big.tif", np.random.default_rng(1).integers(0, 255, (3, 256, 256), dtype=np.uint8)),
            _truncate(w / "big.tif", 0.6))(
            Case(_bench(w, scene="big.tif", labels=None), 1, "no engine was measured", finals=[],
                 kept="bench")),
        "bench labels that do not align": lambda w: then(
            _scene(w, "small.tif", np.zeros((1, 20, 20), np.uint8)))(
            Case(_bench(w, labels="small.tif"), 1, "does not align", finals=["bench"])),
        "bench a text file as labels": lambda w: Case(_bench(w, labels="notes.txt"), 1, "notes.txt",
                                                      finals=["bench"]),
        "bench a truncated label raster": lambda w: Case(_bench(w, labels=_truncated_labels(w)), 1,
                                                         "truncated", finals=["bench"]),
        "bench more labels than scenes": lambda w: Case(
            [*_bench(w), "--labels", w.s("labels.tif"), w.s("labels.tif")], 2, "one label raster",
            finals=["bench"]),
        "bench a model without its spec": lambda w: then(Path(f"{w / 'model.onnx'}.spec.json").unlink())(
            Case(_bench(w), 1, "spec", finals=["bench"])),
        "bench an unknown engine": lambda w: Case(
            [*_bench(w), "--engines", "ort-fp33"], 2, "ort-fp33", finals=["bench"]),
        "bench --scenario-seconds 0": lambda w: Case(
            [*_bench(w), "--scenario-seconds", "0"], 2, "scenario-seconds", finals=["bench"]),
    }


def _other_cases() -> dict[str, Callable[[World], Case]]:
    def build(w, *args):
        return ["build", w.s("model.onnx"), "--engine", "ort-fp32", *args]

    return {
        "export a corrupt checkpoint": lambda w: then(_write(w / "bad.pth", JUNK))(
            Case(["export", w.s("bad.pth"), "-o", w.s("m.onnx")], 1, finals=["m.onnx"])),
        "export -o a folder": lambda w: then(_write(w / "bad.pth", JUNK), (w / "m.onnx").mkdir())(
            Case(["export", w.s("bad.pth"), "-o", w.s("m.onnx")], 1, "folder")),
        "export -o its own checkpoint": lambda w: then(_write(w / "ck.onnx", JUNK))(
            Case(["export", w.s("ck.onnx"), "-o", w.s("ck.onnx")], 1, "replace")),
        "export -o under a file": lambda w: then(_write(w / "bad.pth", JUNK))(
            Case(["export", w.s("bad.pth"), "-o", w.s("notes.txt/m.onnx")], 1, "notes.txt")),
        "build a corrupt model": lambda w: then(_write(w / "model.onnx", JUNK))(
            Case(build(w, "-o", w.s("built")), 1, finals=["built"])),
        "build a truncated model": lambda w: then(_truncate(w / "model.onnx"))(
            Case(build(w, "-o", w.s("built")), 1, finals=["built"])),
        "build -o a file": lambda w: Case(build(w, "-o", w.s("notes.txt")), 1, "notes.txt"),
        "build -o under a file": lambda w: Case(build(w, "-o", w.s("notes.txt/e")), 1, "notes.txt"),
        "build an unknown engine": lambda w: Case(
            ["build", w.s("model.onnx"), "--engine", "ort-fp64", "-o", w.s("built")], 2, "ort-fp64",
            finals=["built"]),
        "report a corrupt report": lambda w: then(_write(w / "bad.json", "{oops"))(
            Case(["report", w.s("bad.json")], 1, "bad.json")),
        "report a truncated report": lambda w: then(_truncate(w / "report.json"))(
            Case(["report", w.s("report.json"), "-o", w.s("rendered")], 1, "report.json",
                 finals=["rendered"])),
        "report a JSON that is no report": lambda w: then(_write(w / "x.json", json.dumps([1, 2])))(
            Case(["report", w.s("x.json")], 1, "x.json")),
        "report -o a file": lambda w: Case(["report", w.s("report.json"), "-o", w.s("notes.txt")], 1,
                                           "notes.txt"),
        "report -o the report's folder": lambda w: Case(["report", w.s("report.json"), "-o", str(w.root)], 1,
                                                        "report.json"),
        "study a corrupt study file": lambda w: then(_write(w / "bad.toml", "networks = ["))(
            Case(["study", w.s("bad.toml")], 1, "bad.toml")),
        "study out is a file": lambda w: Case(["study", _study(w, "notes.txt")], 1, "notes.txt"),
        "study out under a file": lambda w: Case(["study", _study(w, "notes.txt/s")], 1, "notes.txt"),
        "study out is its dataset": lambda w: Case(["study", _study(w, "data")], 1, "data"),
        "data synth -o a file": lambda w: Case(["data", "synth", w.s("notes.txt"), "--size", "64"], 1,
                                               "notes.txt"),
    }


CASES = {**_segment_cases(), **_bench_cases(), **_other_cases()}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, template, tmp_path, capfd):
    """(``capfd``: the bench's measuring children write to the process's stderr too.)"""
    w = World(tmp_path / "w")
    shutil.copytree(template, w.root)
    case = CASES[name](w)
    before = _files(w.root)
    capfd.readouterr()
    try:
        code = main(case.argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert "Traceback" not in err
    assert len(lines) == case.lines, err
    if lines:
        assert lines[0].startswith(case.prefix), err
        assert case.says.lower() in lines[0].lower(), err
    after = _files(w.root)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"inputs changed: {changed}"
    new = sorted(set(after) - set(before))
    if code != 0:
        unasked = [p for p in new if not (case.kept and Path(p).is_relative_to(case.kept))]
        assert not unasked, f"a failed command wrote {new}"
        if case.kept:
            assert (w / case.kept).exists()
    for final in case.finals:
        assert (w / final).exists() == (code == 0), final
    if case.check is not None:
        case.check(w)


# -- the checks behind some cases, on what the command line cannot reach cheaply -------------------

def test_band_means_come_from_the_smallest_overview_where_there_is_one(tmp_path):
    import rasterio
    from rasterio.enums import Resampling

    from segbench.tiler.fit import band_means

    data = np.full((3, 256, 256), 50, np.uint8)
    data[:, 128:] = 250  # the first windows see 50 only; the whole scene averages 150
    path = write_scene(tmp_path / "s.tif", data)
    spec = make_spec()
    with rasterio.open(path) as ds:
        first, where = band_means(ds, spec)
    assert where == "in its first windows" and np.allclose(first, 50)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
    with rasterio.open(path) as ds:
        whole, where = band_means(ds, spec)
    assert where == "from its overview" and np.allclose(whole, 150)


def test_one_based_labels_count_zero_as_ignored(tmp_path):
    from segbench.bench.labels import count_labels

    data = np.zeros((1, 10, 10), np.uint8)  # 0 ignored, 1..3 the classes, 4 outside, 255 nodata
    data[0, :2], data[0, 2:4], data[0, 4:5] = 1, 3, 4
    data[0, 5:6] = 255
    found = count_labels(write_scene(tmp_path / "l.tif", data, nodata=255), make_spec().replace(
        reduce_zero_label=True))
    assert (found.scored, found.outside, found.total) == (40, {4: 10}, 100)
