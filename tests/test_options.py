"""Options defined once: the command line generated from the options objects, with their defaults,
and a study's [bench] table filled into the same object."""

import dataclasses

import pytest

from segbench.argfields import KEY, cli_fields, flag
from segbench.bench.options import STUDY_DEFAULTS, BenchOptions
from segbench.cli import build_parser
from segbench.errors import InputError
from segbench.study.studyfile import _bench
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
    assert _bench({}) == BenchOptions(**STUDY_DEFAULTS)
    assert _bench({}).batch == "auto" and _bench({"batch": "auto"}).batch == "auto"
    assert _bench({"batch": 2, "overlap": 0, "int8_target": False, "maps": False}) == \
        BenchOptions(batch=2, overlap=0, int8_target=False, maps=False)
    for table, words in [({"batch": "fast"}, "batch must be an integer of at least 1 or 'auto'"),
                         ({"batch": 0}, "batch"), ({"overlap": -1}, "overlap"),
                         ({"blend": "max"}, "blend must be one of"),
                         ({"calib_method": "magic"}, "calib_method must be one of"),
                         ({"maps": "yes"}, "maps must be true or false"),
                         ({"min_ratio": 0}, "min_ratio must be a positive number"),
                         ({"batchsize": 4}, "unknown key(s) batchsize")]:
        with pytest.raises(InputError, match=None) as error:
            _bench(table)
        assert str(error.value).startswith("[bench]") and words in str(error.value), str(error.value)
