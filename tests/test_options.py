"""Options defined once: the command line generated from the options objects, with their defaults,
and a study's [bench] table filled into the same object."""

import dataclasses

import pytest

from segbench.argfields import KEY, cli_fields, flag
from segbench.bench.options import STUDY_DEFAULTS, BenchOptions
from segbench.cli import build_parser
from segbench.errors import InputError
from segbench.study.studyfile import bench_options, load_study
from segbench.workflow import SegmentOptions


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_segment_and_bench_defaults_are_the_objects_own():
    from segbench.argfields import from_args

    segment = _parse("segment", "s.tif", "--engine", "e.onnx", "-o", "l.tif")
    assert from_args(SegmentOptions, segment) == SegmentOptions()
    bench = _parse("bench", "--model", "m.onnx", "--engines", "ort-fp32", "--scenes", "s.tif")
    assert from_args(BenchOptions, bench) == BenchOptions()
    assert SegmentOptions().batch == BenchOptions().batch == "auto"


def test_every_option_is_on_the_command_line_with_its_help(capsys):
    for command, cls in (("segment", SegmentOptions), ("bench", BenchOptions)):
        with pytest.raises(SystemExit):
            _parse(command, "--help")
        text = " ".join(capsys.readouterr().out.split())
        for f in cli_fields(cls):
            meta = f.metadata[KEY]
            assert flag(f.name) in text and " ".join(meta.help.split()[:4]) in text, (command, f.name)
    assert "(default: auto)" in text and "(default: 0.99)" in text  # bench's, from the fields
    assert [f.name for f in dataclasses.fields(BenchOptions) if not cli_fields(BenchOptions, [f.name])] == \
        ["quick"]


def test_values_parse_to_the_objects_types():
    from segbench.argfields import from_args

    args = _parse("bench", "--model", "m.onnx", "--engines", "ort-fp32", "--scenes", "s.tif", "--batch", "8",
                  "--int8-target", "off", "--overlap", "16", "--maps")
    options = from_args(BenchOptions, args)
    assert (options.batch, options.int8_target, options.int8_ratio, options.overlap, options.maps) == \
        (8, False, None, 16, True)
    assert _parse("build", "m.onnx", "--engine", "ort-int8", "--int8-target", "0.97").int8_target == 0.97
    for bad in (["--batch", "0"], ["--batch", "many"], ["--int8-target", "2"]):
        with pytest.raises(SystemExit):
            _parse("bench", "--model", "m", "--engines", "e", "--scenes", "s", *bad)
    with pytest.raises(SystemExit):
        _parse("segment", "s.tif", "--engine", "e", "-o", "o", "--workers", "2", "--scheduler", "tcp://x:1")


def test_a_study_bench_table_fills_the_same_object():
    assert bench_options({}) == BenchOptions(**STUDY_DEFAULTS)
    assert bench_options({}).batch == "auto" and bench_options({"batch": "auto"}).batch == "auto"
    assert bench_options({"batch": 2, "overlap": 0, "int8_target": False, "maps": False}) == \
        BenchOptions(batch=2, overlap=0, int8_target=False, maps=False)
    assert bench_options({"scenarios": ["server", "offline"], "max_queue_ms": 0}).scenarios == \
        ("server", "offline")
    for table, words in [({"batch": "fast"}, "batch should be 'auto'"),
                         ({"batch": 0}, "batch should be greater than or equal to 1"),
                         ({"overlap": -1}, "overlap should be greater than or equal to 0"),
                         ({"blend": "max"}, "blend should be 'mean', 'cosine' or 'crop'"),
                         ({"calib_method": "magic"}, "calib_method should be 'minmax'"),
                         ({"maps": "yes"}, "maps should be a valid boolean"),
                         ({"min_ratio": 0}, "min_ratio should be greater than 0"),
                         ({"int8_target": 2}, "int8_target: 2.0 is neither 'off' nor a ratio"),
                         ({"scenarios": ["nope"]}, "scenarios: nope is not a scenario"),
                         ({"batchsize": 4}, "unknown key(s) batchsize")]:
        with pytest.raises(InputError) as error:
            bench_options(table)
        assert str(error.value).startswith("[bench] ") and words in str(error.value), str(error.value)


@pytest.mark.parametrize("text, message", [
    ('[study]\nname = ""\n', "[study] name: string should have at least 1 character"),
    ('study = 3\n', "[study] must be a table"),
    ('[study]\nname = "x"\n[[datasets]]\nname = "d"\n', "[[datasets]] #1 needs path"),
    ('networks = [3]\n[study]\nname = "x"\n', "networks #1 should be a valid string; got 3"),
    ('networks = [{ name = "n", weights = "w.pth" }]\n[study]\nname = "x"\n',
     "networks #1 has unknown key(s) weights"),
    ('[study]\nname = "x"\n[recipe]\niters = 0\n', "[recipe] iters should be greater than or equal to 1"),
    ('[study]\nname = "x"\n[recipe]\nlr = { a = -1.0 }\n', "[recipe] lr should be greater than 0"),
    ('[study]\nname = "x"\n[recipe]\ndevice = 1\n', "[recipe] device should be a valid string"),
    ('bench = 1\n[study]\nname = "x"\n', "[bench] must be a table"),
    ('colour = 1\n[study]\nname = "x"\n', "the study file has unknown key(s) colour"),
])
def test_study_file_mistakes_are_one_sentence_naming_the_key(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_study(path)
    assert message in str(error.value) and str(error.value).count("\n") == 0, str(error.value)
