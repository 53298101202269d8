"""The suite's skip rules (tests/conftest.py), run by pytest itself on a module of skipping tests:
a user's run skips with the reason; CI's (SEGBENCH_STRICT_SKIPS=1) fails every skip but those for
a CUDA GPU, a kernel feature and a client .ci/run said it could not install."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIPPING = '''
import pytest

def test_gpu():
    pytest.skip("needs a CUDA GPU (benchmarks/bench_gpu.py measures it)")

def test_trt():
    pytest.skip("trt-fp16 needs tensorrt, which is not installed; install TensorRT from NVIDIA's "
                "package index on a machine with an NVIDIA GPU ('pip install tensorrt-cu13')")

def test_kernel():
    pytest.skip("this kernel cannot reset the memory high-water mark")

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_gpu_marker():
    pass

def test_qgis():
    pytest.skip("QGIS is not installed (apt-get install python3-qgis)")

def test_chromium():
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")

def test_extra():
    pytest.skip("trtrtx-fp32 needs tensorrt_rtx_bindings, which is not installed; "
                "run pip install 'segbench[tensorrt-rtx]' (no NVIDIA GPU needed to build)")

def test_importorskip_absent():
    pytest.importorskip("segbench_no_such_module")

def test_importorskip_broken():
    pytest.importorskip("segbench_broken_module")

@pytest.fixture
def data():
    pytest.skip("real test data ../shared/data/real/x.tif is absent")

def test_data(data):
    pass

def test_passes():
    pass
'''


#: a module skipped whole, when it is collected
SKIPPED_MODULE = '''
import pytest

pytest.importorskip("segbench_no_such_module")


def test_never_collected():
    pass
'''


def _outcomes(tmp_path: Path, strict: bool, absent: str = "") -> dict[str, str]:
    """Each test of SKIPPING, and the module SKIPPED_MODULE: passed, skipped, failure or error (a
    failure in set-up or collection), from pytest run with the options 'make test' gives it."""
    folder = tmp_path / ("strict" if strict else "user") / absent.replace(",", "-")
    folder.mkdir(parents=True)
    (folder / "test_skipping.py").write_text(SKIPPING)
    (folder / "test_skipped_module.py").write_text(SKIPPED_MODULE)
    broken = folder / "modules" / "segbench_broken_module"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("cannot import name \'_native\'")\n')
    env = {**os.environ, "SEGBENCH_STRICT_SKIPS": "1" if strict else "", "SEGBENCH_ABSENT_CLIENTS": absent,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(broken.parent)])}
    xml = folder / "results.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.conftest", "--rootdir", str(folder), f"--junitxml={xml}",
                           "--continue-on-collection-errors", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    assert done.returncode == (1 if "failure" in outcomes.values() or "error" in outcomes.values() else 0)
    return outcomes


def test_a_users_run_skips_with_the_reason_but_a_broken_module_fails(tmp_path):
    outcomes = _outcomes(tmp_path, strict=False)
    assert outcomes.pop("test_importorskip_broken") == "failure"  # installed but fails to import
    assert outcomes.pop("test_passes") == "passed"
    assert set(outcomes.values()) == {"skipped"}, outcomes


@pytest.mark.parametrize("absent", ["", "qgis,shared-data"])
def test_ci_fails_every_skip_but_a_gpu_a_kernel_feature_and_what_ci_could_not_install(tmp_path, absent):
    outcomes = _outcomes(tmp_path, strict=True, absent=absent)
    allowed = {"test_gpu", "test_trt", "test_kernel", "test_gpu_marker"}
    if absent:
        allowed |= {"test_qgis", "test_data"}
    assert {name for name, outcome in outcomes.items() if outcome == "skipped"} == allowed, outcomes
    assert outcomes.pop("test_passes") == "passed"
    failed = {name: outcome for name, outcome in outcomes.items() if name not in allowed}
    # a skip in a fixture happens in set-up, a module's in collection: pytest says error there
    assert failed == {name: "error" if name in ("test_data", "test_skipped_module") else "failure"
                      for name in failed}, failed
    assert {"test_extra", "test_chromium", "test_importorskip_absent", "test_skipped_module"} <= set(failed)
