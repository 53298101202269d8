"""int8 that qualifies: each runtime's formats, the accuracy target on held-out tiles, outlier
smoothing and float fallback, the sensitivity ranking, and variants keyed by all of it.

The model with outliers is a small conv net whose conv2 -> conv3 activation has two channels 100 times
larger than the rest (a function-preserving rescale): identical in float, and per-tensor int8 of that
activation loses most of the other channels. The criterion without labels is the mIoU of the int8
labels against the float graph's (``ratio``), which must reach the target plus the held-out margin
(``required``).
"""

import numpy as np
import pytest

from segbench.bench.int8 import int8_setup
from segbench.engines.registry import build, load
from segbench.export.calibration import calibration_set
from segbench.export.qualify import Int8Options, Int8Target, class_iou, describe_int8, precision_label
from segbench.export.quantize import Calibrated, ort_session, usable
from segbench.export.sensitivity import measure_gains, rank_layers
from segbench.export.smoothing import smooth
from segbench.export.variants import graph_path
from segbench.files import sha256_file
from segbench.spec import ModelSpec
from tests.conftest import (
    blob_scene,
    channels_last_outlier_onnx,
    engine_here,
    make_spec,
    outlier_conv_onnx,
    outliers_in_several_inputs_onnx,
    require_engine,
    small_class_onnx,
    small_class_scene,
)

SPEC = make_spec(classes=4, tile=32)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    return [blob_scene(root / f"train{i}.tif", size=192, seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def drawn(scenes):
    return calibration_set(scenes, SPEC, count=16, held_out=12)


def _labels(graph, tiles):
    session = ort_session(graph)
    return session.run(None, {"pixels": tiles})[0].argmax(1)


def test_held_out_tiles_come_from_scenes_calibration_never_saw(scenes, drawn):
    assert len(drawn.tiles) == 16 and len(drawn.held_out.tiles) == 12
    held = set(drawn.held_out_scenes)
    assert len(held) == 1 and {s for s, _, _ in drawn.held_out_windows} == held  # one whole scene
    assert not held & {s for s, _, _ in drawn.windows}
    assert drawn.held_out.scenes == (scenes[next(iter(held))].name,)
    assert drawn.held_out.margin(0.99) == pytest.approx(0.01 * 0.5 * (16 / 12) ** 0.5)  # a share of 1 point
    again = calibration_set(scenes, SPEC, count=16, held_out=12)  # deterministic
    assert again.held_out.digest == drawn.held_out.digest and np.array_equal(again.tiles, drawn.tiles)
    # one scene: windows no calibration tile overlaps, said so, with the largest margin
    one = calibration_set(scenes[:1], SPEC, count=16, held_out=12)
    assert one.held_out.scenes == () and one.held_out.margin(0.99) == pytest.approx(0.0075)
    assert "one calibration scene" in one.held_out.describe()
    for scene, row, col in one.held_out_windows:
        for s, r, c in one.windows:
            assert s != scene or abs(r - row) >= SPEC.tile or abs(c - col) >= SPEC.tile


def test_the_outliers_defeat_plain_int8_but_not_float(tmp_path, drawn):
    plain = outlier_conv_onnx(tmp_path / "plain.onnx", SPEC)
    outliers = outlier_conv_onnx(tmp_path / "outliers.onnx", SPEC, scale=100)
    tiles = drawn.held_out.tiles
    assert np.mean(_labels(plain, tiles) == _labels(outliers, tiles)) > 0.9999  # the same function
    for graph, worst in ((plain, 0.99), (outliers, 0.0)):
        reference = _labels(graph, tiles)
        with Calibrated(graph, drawn.tiles) as c:
            for fmt in ("qdq-s8", "qdq-u8", "qop-u8"):
                agreement = np.mean(_labels(c.quantize(fmt, tmp_path / f"{fmt}.onnx"), tiles) == reference)
                assert agreement >= worst if worst else agreement < 0.95, (graph.name, fmt, agreement)


def test_the_ranking_puts_the_layers_carrying_the_outliers_first(tmp_path, drawn):
    graph = outlier_conv_onnx(tmp_path / "outliers.onnx", SPEC, scale=100)
    reference = _labels(graph, drawn.held_out.tiles)
    with Calibrated(graph, drawn.tiles) as c:
        proxy = c.quantize("qdq-s8", tmp_path / "proxy.onnx")
        ranked = rank_layers(proxy, c.layers, drawn.held_out.tiles)
    # conv2 makes the outlier channels (ONNX Runtime quantizes its output too), conv3 reads them
    assert ranked[0].name == "conv2" and ranked[0].sqnr_db < ranked[2].sqnr_db - 10, ranked
    assert {e.name for e in ranked[:2]} == {"conv2", "conv3"}, ranked

    def agreement(model: bytes) -> float:
        return float(np.mean(_labels(model, drawn.held_out.tiles) == reference))

    # each alone leaves the other's Q/DQ pair on the outliers, so gains little; the two gain most
    measured = sorted(measure_gains(proxy, graph, ranked, agreement), key=lambda e: -e.gain)
    assert {e.name for e in measured[:2]} == {"conv2", "conv3"} and measured[1].gain > 0, measured


def test_smoothing_keeps_the_function_and_tames_the_outliers(tmp_path, drawn):
    graph = outlier_conv_onnx(tmp_path / "outliers.onnx", SPEC, scale=100)
    result = smooth(graph, tmp_path / "smoothed.onnx", drawn.tiles)
    assert result.layers == ("conv3",) and result.folded == 1 and result.inserted == 0  # into conv2
    tiles = drawn.held_out.tiles
    a, b = (ort_session(g).run(None, {"pixels": tiles})[0] for g in (graph, result.path))
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    clean = outlier_conv_onnx(tmp_path / "clean.onnx", SPEC)
    assert smooth(clean, tmp_path / "clean-smoothed.onnx", drawn.tiles).layers == ()  # nothing uneven


@pytest.mark.parametrize("engine", ["ort-int8", "openvino-int8", "trtrtx-int8"])
def test_the_search_meets_the_target_where_plain_int8_misses_it(tmp_path, scenes, engine):
    require_engine(engine, run=False)
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC, scale=100)
    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    lines = []
    artifact = build(model, engine, tmp_path / "engines", calibration, int8=options, note=lines.append)
    record = ModelSpec.load(artifact).build.options["int8"]
    required = record["target"]["required"]
    assert record["met"] and record["final"]["ratio"] >= required > 0.99
    assert all(f["ratio"] < required for f in record["formats"].values())  # plain int8 missed it
    assert record["smoothing"] is not None or record["float_layers"]
    assert record["runtime"] == {"ort-int8": "onnxruntime", "openvino-int8": "openvino",
                                 "trtrtx-int8": "tensorrt"}[engine]
    # the formats each runtime takes (TensorRT's parser one graph only: float biases, symmetric int8);
    # the search tries each and keeps one of them
    expected = {"ort-int8": {"qop-u8", "qdq-u8"}, "openvino-int8": {"qdq-s8", "nncf"},
                "trtrtx-int8": {"qdq-s8"}}[engine]
    assert set(record["formats"]) == {f for f in expected if f != "nncf" or usable("nncf")}, record["formats"]
    assert record["format"] in record["formats"]
    assert record["search_seconds"] > 0 and any("misses the target" in line for line in lines)
    assert any(line.startswith("target 99.0%") and line.endswith("met") for line in describe_int8(record))
    assert lines[0] == f"criterion: {record['criterion']}" and "against the float graph's" in lines[0]
    if engine_here(engine):  # the built engine runs here: its labels agree as recorded
        tiles = options.held_out.tiles
        with load(artifact) as run:
            labels = run.infer(tiles).argmax(1)
        agreement = np.mean(labels == _labels(model, tiles))
        assert abs(agreement - record["final"]["agreement"]) < 0.01


def test_float_fallback_without_smoothing(tmp_path, scenes):
    """Outliers into a depthwise conv3, with smoothing off: the search keeps the layers that carry them
    (conv2 makes them and its output is quantized, conv3 reads them) in float."""
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC, scale=100, depthwise=True)
    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    options = Int8Options(target=Int8Target(0.99, max_float=0.7), held_out=options.held_out,  # 2 of 3
                          smoothing=False)
    lines = []
    artifact = build(model, "ort-int8", tmp_path / "engines", calibration, int8=options, note=lines.append)
    built = ModelSpec.load(artifact).build.options
    record = built["int8"]
    names = [k["name"] for k in record["float_layers"]]
    assert record["met"] and record["smoothing"] is None, lines
    assert 1 <= len(names) <= 2 and set(names) <= {"conv2", "conv3"}, names
    assert precision_label(built) == f"int8 ({len(names)} fp32)"
    assert record["quantized_layers"] == 3 - len(names)  # conv4, the classifier, is float anyway
    with Calibrated(model, calibration) as c:  # and the same with fewer layers in float misses it
        for fewer in ([], names[:-1]) if len(names) > 1 else ([],):
            q = c.quantize(record["format"], tmp_path / "fewer.onnx", fewer)
            tiles = options.held_out.tiles
            ious = class_iou(_labels(q, tiles), _labels(model, tiles))
            assert np.nanmean(ious) < record["target"]["required"]


def test_a_loss_in_one_small_class_fails_the_miou_criterion(tmp_path):
    """Per-tensor int8 rounds away the white squares (0.4% of the pixels): 99.6% pixel agreement, which
    the old target took; the mIoU against the float labels falls by a quarter (one class of four), so
    the plain graphs miss, the search says so and names the class, and keeps a layer in float."""
    scenes = [small_class_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(2)]
    model = small_class_onnx(tmp_path / "model.onnx", SPEC)
    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    lines = []
    artifact = build(model, "ort-int8", tmp_path / "engines", calibration, int8=options, note=lines.append)
    record = ModelSpec.load(artifact).build.options["int8"]
    for figures in record["formats"].values():  # plain int8: pixel agreement passes, the mIoU fails
        assert figures["agreement"] >= 0.99 and figures["ratio"] < 0.8, figures
        assert figures["worst_class"]["class"] == "class3" and figures["worst_class"]["change"] < -0.9
    assert sum("misses the target" in line for line in lines) >= 2 and "worst class class3" in lines[1]
    assert record["met"] and [k["name"] for k in record["float_layers"]] == ["conv1"], lines
    assert record["final"]["ratio"] >= record["target"]["required"]


def test_every_layer_whose_input_has_outliers_is_smoothed(tmp_path, scenes, drawn):
    """Outliers in the inputs of conv2 (a plain convolution) and of conv3 (depthwise): both smoothed,
    folded into the convolutions that make them, the function unchanged; the search's record, its
    output, the precision label and the report's lines say the same."""
    graph = outliers_in_several_inputs_onnx(tmp_path / "several.onnx", SPEC)
    result = smooth(graph, tmp_path / "smoothed.onnx", drawn.tiles)
    assert result.layers == ("conv2", "conv3") and result.folded == 2 and result.skipped == ()
    tiles = drawn.held_out.tiles
    a, b = (ort_session(g).run(None, {"pixels": tiles})[0] for g in (graph, result.path))
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())

    from segbench.bench.model import EngineRow
    from segbench.bench.tables import precision_lines

    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    lines = []
    artifact = build(graph, "ort-int8", tmp_path / "engines", calibration, int8=options, note=lines.append)
    built = ModelSpec.load(artifact).build.options
    record = built["int8"]
    assert record["smoothing_tried"]["layers"] == ["conv2", "conv3"]
    label = precision_label(built)
    chosen = next(line for line in lines if line.startswith("chosen: "))
    assert chosen.endswith(f"(precision {label})")
    assert f"{len(record['float_layers'])} layer(s) in float" in chosen
    if record["smoothing"]:
        assert "smoothed on 2 layer(s) (conv2, conv3)" in chosen and label.startswith("int8 (smoothed")
    row = EngineRow(name="ort-int8", int8=record, precision_label=label)
    page = precision_lines(row)
    assert page == describe_int8(record) and any(record["criterion"].split(" >= ")[0] in x or
                                                 "against the float graph's labels" in x for x in page)


def test_a_matmul_reading_channels_last_is_smoothed_on_its_channels(tmp_path, drawn):
    """Its input's channels are axis 3 of a 4-D tensor (a pointwise Linear on NHWC): measured there, not
    on axis 1 (the rows), smoothed, the function unchanged."""
    graph = channels_last_outlier_onnx(tmp_path / "nhwc.onnx", SPEC)
    result = smooth(graph, tmp_path / "smoothed.onnx", drawn.tiles)
    assert result.layers == ("matmul",) and result.skipped == ()
    tiles = drawn.held_out.tiles
    a, b = (ort_session(g).run(None, {"pixels": tiles})[0] for g in (graph, result.path))
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_the_fastest_format_that_meets_the_target_is_kept(tmp_path, scenes):
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC)  # no outliers: every format meets it
    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    artifact = build(model, "ort-int8", tmp_path / "engines", calibration, int8=options)
    record = ModelSpec.load(artifact).build.options["int8"]
    formats = record["formats"]
    assert set(formats) == {"qop-u8", "qdq-u8"} and all(f["agreement"] >= 0.99 for f in formats.values())
    assert formats[record["format"]]["p50_ms"] == min(f["p50_ms"] for f in formats.values())
    assert record["float_layers"] == [] and record["smoothing"] is None
    assert precision_label(ModelSpec.load(artifact).build.options) == "int8"


def test_a_miss_builds_the_best_graph_reached(tmp_path, scenes):
    """Nothing meets a target of 100% with one layer in float at most: the build keeps the graph with
    the highest figure the search reached (not the fastest plain one), and says so."""
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC, scale=100)
    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    options = Int8Options(target=Int8Target(1.0, max_float=0.0), held_out=options.held_out, smoothing=False)
    artifact = build(model, "ort-int8", tmp_path / "engines", calibration, int8=options)
    record = ModelSpec.load(artifact).build.options["int8"]
    assert not record["met"] and record["tried"] > len(record["formats"])
    best = record["final"]["ratio"]
    assert best > max(f["ratio"] for f in record["formats"].values()) and len(record["float_layers"]) == 1
    assert f"the best reached {best:.2%}" in record["missed"] and "built that graph" in record["missed"]


def test_nncf_accuracy_control_against_the_search(tmp_path, scenes):
    """--int8-method both for openvino-int8: NNCF's quantize_with_accuracy_control under the search's
    criterion beside the search; the record names the winner and why, and agrees with itself."""
    pytest.importorskip("nncf")
    require_engine("openvino-int8", run=False)
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC, scale=100)
    calibration, options = int8_setup(SPEC, scenes, tiles=16, method="both")
    lines = []
    artifact = build(model, "openvino-int8", tmp_path / "engines", calibration, int8=options,
                     note=lines.append)
    built = ModelSpec.load(artifact).build.options
    record = built["int8"]
    methods = record["methods"]
    assert record["method"] == "both" and methods["nncf-ac"]["seconds"] > 0 and methods["why"]
    won = methods[methods["won"]]
    assert (record["format"] == "nncf-ac") == (methods["won"] == "nncf-ac") and record["met"] == won["meets"]
    assert record["final"]["ratio"] == won["ratio"] and len(record["float_layers"]) == won["float_layers"]
    assert methods["nncf-ac"]["meets"]  # plain NNCF misses; accuracy control reverts a layer and meets it
    assert methods["nncf-ac"]["float_layers"] >= 1 and methods["nncf-ac"]["format"] == "nncf-ac"
    kept = len(record["float_layers"])
    assert precision_label(built) == "int8" + (f" ({'smoothed, ' if record['smoothing'] else ''}{kept} fp32)"
                                               if kept else " (smoothed)" if record["smoothing"] else "")
    said = [line for line in describe_int8(record) if line.startswith("kept ")]
    assert len(said) == 1 and methods["why"] in said[0] and any(said[0] in line for line in lines)


def _ground_truth(scene, dest):
    """The label raster of a blob scene: the colour each pixel is nearest to (what the net was fitted to)."""
    import rasterio

    from tests.conftest import colour_classes, write_scene

    with rasterio.open(scene) as ds:
        return write_scene(dest, colour_classes(ds.read().astype(float))[None].astype(np.uint8))


def test_labelled_held_out_tiles_make_the_target_the_miou(tmp_path, scenes):
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC)
    labels = [_ground_truth(s, tmp_path / f"labels{i}.tif") for i, s in enumerate(scenes)]
    calibration, options = int8_setup(SPEC, scenes, labels, tiles=16)
    assert options.held_out.labels is not None and options.labelled
    artifact = build(model, "ort-int8", tmp_path / "engines", calibration, int8=options)
    record = ModelSpec.load(artifact).build.options["int8"]
    assert record["target"]["metric"] == "miou" and record["met"]
    assert record["reference"]["miou"] > 0.8  # the float model is good at its colours
    assert record["final"]["miou"] >= 0.99 * record["reference"]["miou"]


def test_variants_are_keyed_by_target_calibration_and_runtime(tmp_path, scenes):
    model = outlier_conv_onnx(tmp_path / "model.onnx", SPEC)
    calibration, options = int8_setup(SPEC, scenes, tiles=16)
    ort_variant = graph_path(model, "int8", runtime="onnxruntime")
    build(model, "ort-int8", tmp_path / "e", calibration, int8=options)
    first = sha256_file(ort_variant)
    stamp = ort_variant.stat().st_mtime_ns
    build(model, "ort-int8", tmp_path / "e", calibration, int8=options)  # the same: reused
    assert ort_variant.stat().st_mtime_ns == stamp
    stricter = Int8Options(target=Int8Target(0.995), held_out=options.held_out)
    build(model, "ort-int8", tmp_path / "e", calibration, int8=stricter)  # another target: remade
    assert ort_variant.stat().st_mtime_ns != stamp
    stamp = ort_variant.stat().st_mtime_ns
    other, _ = int8_setup(SPEC, scenes, tiles=12)  # another calibration set: remade
    build(model, "ort-int8", tmp_path / "e", other, int8=stricter)
    assert ort_variant.stat().st_mtime_ns != stamp
    # each runtime its own graph, beside the model
    if engine_here("trtrtx-int8", run=False):
        build(model, "trtrtx-int8", tmp_path / "e", calibration, int8=options)
        assert graph_path(model, "int8", runtime="tensorrt").is_file()
        assert sha256_file(graph_path(model, "int8", runtime="tensorrt")) != first
    explained = Int8Options(target=options.target, held_out=options.held_out, explain=True)
    build(model, "ort-int8", tmp_path / "e", calibration, int8=explained)  # explain: measured once
    record = ModelSpec.load(ort_variant).build.options["int8"]
    assert [e["name"] for e in record["sensitivity"]][:1] and all("gain" in e for e in record["sensitivity"])


def test_fp16_explain_ranks_first_the_layer_half_precision_hurts(tmp_path, scenes, capsys):
    """A conv net whose last layer has weights and logits below half precision's normal range (all
    scaled by 1e-6: the same labels in float32): that layer ranks first, and keeping it float32 wins
    back the agreement its fp16 rounding costs."""
    import onnx
    from onnx import numpy_helper

    from segbench.cli import main
    from tests.conftest import tiny_conv_onnx

    spec = make_spec(classes=4, tile=32)
    model_path = tiny_conv_onnx(tmp_path / "model.onnx", spec, seed=3)
    model = onnx.load(str(model_path))
    for init in model.graph.initializer:
        if init.name in ("w2", "b2"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1e-6), init.name))
    onnx.save(model, str(model_path))
    calibration, options = int8_setup(spec, scenes, tiles=16, explain=True)
    artifact = build(model_path, "ort-fp16", tmp_path / "e", calibration, int8=options)
    ranked = ModelSpec.load(artifact).build.options["sensitivity"]
    assert [e["name"] for e in ranked] == ["Conv_4", "Conv_2"]  # the scaled layer first
    scaled, normal = ranked
    assert scaled["sqnr_db"] < normal["sqnr_db"] and scaled["gain"] > 0.01 >= abs(normal["gain"])

    assert main(["build", str(model_path), "--engine", "ort-fp16", "-o", str(tmp_path / "cli"),
                 "--calib", *map(str, scenes), "--calib-tiles", "16", "--explain"]) == 0
    printed = capsys.readouterr().out
    assert "sensitive: Conv_4 (Conv)" in printed and "points of agreement in float32" in printed
    assert "float32" in printed

    from segbench.bench.model import EngineRow, Report
    from segbench.bench.tables import precision_lines, to_markdown

    row = EngineRow(name="ort-fp16", fp16=ModelSpec.load(artifact).build.options)
    assert precision_lines(row)[0].startswith("0 node(s) kept float32")
    assert any("sensitive: Conv_4" in line for line in precision_lines(row))
    assert "int8 and fp16 engines:" in to_markdown(Report(engines=[row]))
