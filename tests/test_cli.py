"""The command line: help texts, and bad input stopping with one sentence and nothing written."""

import importlib.util

import numpy as np
import pytest

from segbench.cli import build_parser, main
from segbench.engines.registry import build
from tests.conftest import write_scene

SUBCOMMANDS = ["demo", "data", "models", "train", "eval", "export", "build", "engines", "segment",
               "bench", "report"]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([name, "--help"])
        assert exit_.value.code == 0


@pytest.fixture
def engine(tmp_path, tiny_onnx):
    return build(tiny_onnx, "ort-fp32", tmp_path / "engines")


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("segbench: error: ") and len(err.splitlines()) == 1, err
    return err


def test_segment_writes_a_georeferenced_label_raster(tmp_path, engine, capsys):
    scene = write_scene(tmp_path / "s.tif", np.random.default_rng(0).integers(0, 255, (3, 70, 90),
                                                                             dtype=np.uint8))
    assert main(["segment", str(scene), "--engine", str(engine), "-o", str(tmp_path / "l.tif")]) == 0
    import rasterio

    with rasterio.open(tmp_path / "l.tif") as out, rasterio.open(scene) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)


@pytest.mark.parametrize("case", ["missing", "not-a-geotiff", "wrong-bands"])
def test_bad_scenes_stop_with_one_sentence(tmp_path, engine, capsys, case):
    scene = tmp_path / "scene.tif"
    if case == "not-a-geotiff":
        scene.write_text("hello")
    elif case == "wrong-bands":
        write_scene(scene, np.zeros((1, 40, 40), np.uint8))
    out = tmp_path / "labels.tif"
    code = main(["segment", str(scene), "--engine", str(engine), "-o", str(out)])
    assert code != 0
    err = _one_line_error(capsys)
    assert {"missing": "does not exist", "not-a-geotiff": "not a readable GeoTIFF",
            "wrong-bands": "has 1 band(s)"}[case] in err
    assert not out.exists() and not any(p.name.startswith(".labels") for p in tmp_path.iterdir())


def test_unknown_engine_and_missing_model(tmp_path, tiny_onnx, capsys):
    assert main(["build", str(tiny_onnx), "--engine", "ort-fp64"]) != 0
    assert "choose one of: ort-fp32" in _one_line_error(capsys)
    assert main(["build", str(tmp_path / "none.onnx"), "--engine", "ort-fp32"]) != 0
    assert "does not exist" in _one_line_error(capsys)


def engine_statuses(listing: str) -> dict[str, str]:
    """Engine name -> status column of 'segbench engines' (columns start where the header's do)."""
    header, *rows = listing.splitlines()
    assert header.split() == ["engine", "description", "status"], header
    start = header.index("status")
    return {row.split()[0]: row[start:].strip() for row in rows}


def test_engines_listing(capsys):
    from segbench.engines.registry import KINDS

    assert main(["engines"]) == 0
    statuses = engine_statuses(capsys.readouterr().out)
    assert list(statuses) == list(KINDS)
    assert statuses["ort-fp32"] == "available"  # onnxruntime is a core dependency
    if importlib.util.find_spec("tensorrt") is None:  # full TensorRT cannot be installed here
        assert statuses["trt-int8"].startswith("unavailable: ") and "NVIDIA" in statuses["trt-int8"]
    for status in statuses.values():
        assert status == "available" or status.startswith(("unavailable: ", "build only: ")), status


@pytest.mark.parametrize("case,code", [
    ("argparse", 2), ("conflicting options", 2), ("unknown engine", 2), ("missing scene", 1),
    ("output folder missing", 1), ("corrupt engine", 1),
])
def test_exit_codes_tell_usage_from_failures_of_the_work(tmp_path, engine, capsys, case, code):
    """2: the command line is wrong; 1: the work failed (130/143 on signals: test_signals.py)."""
    scene = write_scene(tmp_path / "s.tif", np.zeros((3, 40, 40), np.uint8))
    out = str(tmp_path / "l.tif")
    argv = {
        "argparse": ["segment", str(scene), "-o", out],  # --engine missing
        "conflicting options": ["segment", str(scene), "--engine", str(engine), "-o", out, "--chunk", "256"],
        "unknown engine": ["build", str(engine), "--engine", "ort-fp64"],
        "missing scene": ["segment", str(tmp_path / "none.tif"), "--engine", str(engine), "-o", out],
        "output folder missing": ["segment", str(scene), "--engine", str(engine), "-o",
                                  str(tmp_path / "nowhere" / "l.tif"), "--batch", "1"],
        "corrupt engine": ["segment", str(scene), "--engine", str(engine), "-o", out, "--batch", "1"],
    }[case]
    if case == "corrupt engine":
        engine.write_bytes(b"not an onnx graph")
    if case == "argparse":
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == code
        return
    assert main(argv) == code
    _one_line_error(capsys)


def test_segment_says_the_batch_it_chose_and_a_line_per_scene(tmp_path, engine, capsys):
    """The command prints what the library's hooks hear: the auto batch on stderr, each scene on stdout."""
    scenes = [write_scene(tmp_path / f"s{i}.tif", np.random.default_rng(i).integers(0, 255, (3, 40, 50),
                                                                                    dtype=np.uint8))
              for i in range(2)]
    assert main(["segment", *map(str, scenes), "--engine", str(engine), "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("batch ") and "auto" in captured.err.splitlines()[0]
    lines = [line for line in captured.out.splitlines() if ".labels.tif: " in line]  # not the bars
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / "out" / f"s{i}.labels.tif")
                                                      for i in range(2)]
    assert all(" MP/s" in line for line in lines)
