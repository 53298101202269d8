"""A missing or broken optional extra is one sentence naming what to install, never a traceback.

Each case runs the real ``segbench`` command in a child process with a
package early on PYTHONPATH that shadows the installed runtime and fails to
import the way broken installs do: OSError (a missing shared library),
ImportError (half installed) or ModuleNotFoundError (not installed).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import engine_statuses

SEGBENCH = Path(sys.executable).with_name("segbench")
FAILURES = {
    "oserror": 'raise OSError("libopenvino.so.2541: cannot open shared object file")',
    "importerror": 'raise ImportError("cannot import name \'_pyopenvino\' (partially initialized module)")',
    "missing": 'raise ModuleNotFoundError("No module named {name!r}", name={name!r})',
}


def _run(tmp_path, args, broken: dict[str, str]):
    shadow = tmp_path / "shadow"
    for module, failure in broken.items():
        (shadow / module).mkdir(parents=True, exist_ok=True)
        (shadow / module / "__init__.py").write_text(FAILURES[failure].format(name=module) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    if not SEGBENCH.is_file():
        pytest.skip(f"{SEGBENCH} is not installed (run 'make install')")
    return subprocess.run([str(SEGBENCH), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def _one_sentence(proc, extra):
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("segbench: error: "), err
    assert f"pip install 'segbench[{extra}]'" in err, err
    return err


#: what 'segbench engines' says of the OpenVINO engines for each failure: absent, or broken with its error
LISTED = {"oserror": ("broken: ", "OSError: libopenvino.so.2541: cannot open shared object file"),
          "importerror": ("broken: ", "ImportError: cannot import name '_pyopenvino'"),
          "missing": ("unavailable: ", "needs openvino, which is not installed")}


@pytest.mark.parametrize("failure", ["oserror", "importerror", "missing"])
def test_engines_listing_survives_a_broken_openvino(tmp_path, failure):
    proc = _run(tmp_path, ["engines"], {"openvino": failure})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    statuses = engine_statuses(proc.stdout)
    assert statuses["ort-fp32"] == "available"
    state, said = LISTED[failure]
    for name in ("openvino-fp32", "openvino-bf16", "openvino-int8"):
        assert statuses[name].startswith(state) and said in statuses[name], statuses[name]
        assert "pip install 'segbench[openvino]'" in statuses[name]
    others = [s for n, s in statuses.items() if not n.startswith("openvino-")]
    assert not [s for s in others if s.startswith("broken: ")]  # the others' runtimes are fine


#: an OpenVINO test that skips where OpenVINO is absent
OPENVINO_TEST = "tests/test_engines.py::test_cpu_engines_build_load_and_agree[openvino-fp32-0.999]"


@pytest.mark.parametrize("failure, strict, outcome", [
    ("oserror", False, "failed"), ("importerror", True, "failed"),  # broken: never a skip
    ("missing", False, "skipped"), ("missing", True, "failed"),  # absent: a skip, but not in CI
])
def test_a_broken_openvino_fails_the_tests_an_absent_one_skips(tmp_path, failure, strict, outcome):
    """The suite itself (pytest in a child process, tests/conftest.py's rules) on a machine whose
    OpenVINO is broken or absent, as a user's 'make test' and as CI (SEGBENCH_STRICT_SKIPS=1)."""
    shadow = tmp_path / "shadow" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(FAILURES[failure].format(name="openvino") + "\n")
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path,
           "SEGBENCH_STRICT_SKIPS": "1" if strict else "0", "SEGBENCH_ABSENT_CLIENTS": ""}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                           "--basetemp", str(tmp_path / "run"), OPENVINO_TEST], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    summary = done.stdout.strip().splitlines()[-1]
    assert f"1 {outcome}" in summary and done.returncode == (0 if outcome == "skipped" else 1), done.stdout
    if failure != "missing":
        assert "installed but broken" in done.stdout and FAILURES[failure].split('"')[1] in done.stdout
    elif strict:
        assert "SEGBENCH_STRICT_SKIPS" in done.stdout and "which is not installed" in done.stdout


@pytest.mark.parametrize("failure", ["oserror", "importerror", "missing"])
def test_build_with_a_broken_openvino_is_one_sentence(tmp_path, tiny_onnx, failure):
    proc = _run(tmp_path, ["build", tiny_onnx, "--engine", "openvino-fp32"], {"openvino": failure})
    assert proc.returncode == 3
    _one_sentence(proc, "openvino")
    assert not list(tiny_onnx.parent.glob("*.xml"))


def test_fp16_without_onnxconverter_common(tmp_path, tiny_onnx):
    proc = _run(tmp_path, ["build", tiny_onnx, "--engine", "ort-fp16"], {"onnxconverter_common": "missing"})
    assert proc.returncode == 3
    assert "onnxconverter_common" in _one_sentence(proc, "quant")


def test_without_torch(tmp_path):
    proc = _run(tmp_path, ["engines"], {"torch": "missing"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    statuses = engine_statuses(proc.stdout)
    assert statuses["ort-fp32"] == "available"
    assert "pip install 'segbench[train]'" in statuses["torch-fp32"]
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not read: the extra is checked first")
    proc = _run(tmp_path, ["export", checkpoint, "-o", tmp_path / "model.onnx"], {"torch": "oserror"})
    assert proc.returncode == 3
    _one_sentence(proc, "train")
