import json

import pytest

from segbench.errors import SpecError
from segbench.spec import BuildRecord, ModelSpec, sidecar_path
from tests.conftest import make_spec


def test_round_trip_through_sidecar(tmp_path):
    spec = make_spec(bands=4).replace(
        build=BuildRecord(backend="onnxruntime", precision="int8", engine="ort-int8",
                          versions={"onnxruntime": "1.32.0"}, build_seconds=1.5)
    )
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"x")
    path = spec.save(artifact)
    assert path == tmp_path / "model.onnx.spec.json"
    assert ModelSpec.load(artifact) == spec
    assert ModelSpec.load(artifact).build.engine == "ort-int8"


def test_missing_sidecar_is_one_clear_sentence(tmp_path):
    with pytest.raises(SpecError, match="No spec found"):
        ModelSpec.load(tmp_path / "engine.plan")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(palette=((0, 0, 0),)), "palette has 1 colours"),
        (dict(mean=(1.0,)), "one value per input band"),
        (dict(std=(1.0, 0.0, 1.0)), "positive"),
        (dict(bands=(0, 1, 2)), "1-based"),
        (dict(ignore_index=1), "collides"),
        (dict(tile=8), "too small"),
        (dict(output="probs"), "Unknown spec output"),
    ],
)
def test_invalid_specs_are_refused(change, message):
    with pytest.raises(SpecError, match=message):
        make_spec().replace(**change)


def test_unknown_fields_and_bad_json_are_refused(tmp_path):
    artifact = tmp_path / "a.onnx"
    d = make_spec().to_dict()
    d["colour"] = "red"
    sidecar_path(artifact).write_text(json.dumps(d))
    with pytest.raises(SpecError, match="Unknown field"):
        ModelSpec.load(artifact)
    sidecar_path(artifact).write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.load(artifact)
