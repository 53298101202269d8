"""The report page: self-contained, every row and figure on it, an honest accuracy axis, and it renders
in a real browser (headless Chromium) without a console error."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from segbench.bench.figures import honest_limits, latency_accuracy_figure
from segbench.bench.model import Accuracy, EngineRow, Latency, LatencyStats, Ranking, Report
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

pytest.importorskip("matplotlib")


def test_the_accuracy_axis_holds_the_reference_and_never_zooms_into_noise():
    assert honest_limits([63.21, 63.23], reference=63.22)[1] - honest_limits([63.21, 63.23])[0] >= 2.0
    low, high = honest_limits([60.0, 40.0], reference=70.0)
    assert low < 40.0 and high > 70.0  # every value and the reference, padded
    def row(name, miou, p50):
        stats = LatencyStats(n=20, mean=p50, std=0.0, p50=p50, min=p50, max=p50)
        return EngineRow(name=name, accuracy=Accuracy(miou=miou), latency=Latency(batch1=stats, batch=1))

    report = Report(ranking=Ranking(reference="torch-fp32"),
                    engines=[row("torch-fp32", 0.6322, 40.0), row("ort-int8", 0.6320, 14.0)])
    fig = latency_accuracy_figure(report)
    low, high = fig.axes[0].get_ylim()
    assert low <= 63.22 <= high and high - low >= 2.0  # 0.02 points are not a cliff


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A real bench of two engines with labels and maps: its folder and report."""
    pytest.importorskip("openvino")
    from segbench.bench.run import BenchConfig, run_bench

    root = tmp_path_factory.mktemp("page")
    model = tiny_conv_onnx(root / "m.onnx", make_spec(tile=32))
    rng = np.random.default_rng(5)
    scene = write_scene(root / "scene.tif", rng.integers(1, 256, (3, 96, 120), dtype=np.uint8))
    labels = write_scene(root / "labels.tif", rng.integers(0, 3, (1, 96, 120), dtype=np.uint8))
    out = root / "bench"
    report = run_bench(BenchConfig.flat(model=model, engines=["ort-fp32", "openvino-fp32"], scenes=[scene],
                                   labels=[labels], reference="ort-fp32", out=out, batch=2, quick=True,
                                   maps=True), show_table=False)
    return out, report


def test_the_page_is_one_self_contained_file_with_every_row_and_figure(bench):
    out, report = bench
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from anywhere
    assert page.count("<svg") >= 2  # the latency-accuracy plot and the IoU heat map, inline
    body = page[page.index("<tbody>"):page.index("</tbody>")]
    assert body.count("<tr>") == len(report.engines)
    for row in report.engines:
        assert f">{row.name}<" in body
    # the scene, then each engine's labels, and the second engine's disagreement map
    assert page.count("src='data:image/png;base64,") == 1 + 2 + 1
    assert "where it differs from the reference" in page and "Machine" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_in_headless_chromium(bench, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    out, report = bench
    url = (out / "report.html").resolve().as_uri()
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
              "--enable-logging=stderr", "--v=0", "--window-size=1400,2600"]
    shot = tmp_path / "page.png"
    done = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr>") >= len(report.engines) + 1 and dom.count("<svg") >= 2
    shutil.copy(shot, out / "report-screenshot.png")  # for a person to look at
