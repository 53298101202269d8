"""``segbench bench --scenarios``: LoadGen's figures in the report, its logs beside it, the cost
columns, ranking by the Server figure, and the bad inputs of the options."""

import json

import numpy as np
import pytest

from segbench.bench.model import read
from segbench.bench.report import merge_reports
from segbench.bench.run import BenchConfig, run_bench
from segbench.bench.samples import sample_library
from segbench.bench.tables import to_markdown
from segbench.cli import main
from tests.conftest import make_spec, tiny_conv_onnx, write_scene

pytest.importorskip("mlperf_loadgen")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One engine through Server (a short search) and Offline, with a price per hour: the report."""
    root = tmp_path_factory.mktemp("scenarios")
    model = tiny_conv_onnx(root / "m.onnx", make_spec(tile=32))
    rng = np.random.default_rng(3)
    scene = write_scene(root / "scene.tif", rng.integers(1, 256, (3, 96, 96), dtype=np.uint8))
    labels = write_scene(root / "labels.tif", rng.integers(0, 3, (1, 96, 96), dtype=np.uint8))
    out = root / "bench"
    report = run_bench(BenchConfig.flat(
        model=model, engines=["ort-fp32"], scenes=[scene], labels=[labels], reference="ort-fp32",
        overlap=8, batch=4, out=out, quick=True, scenarios=("server", "offline"), scenario_seconds=2.0,
        price_per_hour=2.0, rank_by="server"), show_table=False)
    return out, report, scene, labels


def test_scenarios_land_in_the_report_with_loadgens_logs(bench):
    out, report, _, _ = bench
    (row,) = report.engines
    server, offline = row.scenario("server"), row.scenario("offline")
    assert offline.valid and offline.figure > 0 and offline.unit == "samples/s"
    assert server.latency_bound_ms == pytest.approx(10 * row.p50_ms)  # the default bound
    assert server.points and all(p.target_qps > 0 for p in server.points)
    for found in (server, offline):
        summary = out / "ort-fp32" / "loadgen" / found.scenario / "mlperf_log_summary.txt"
        assert summary.is_file() and "Result is" in summary.read_text()
    # LoadGen's settings and seeds are in report.json, read back by the model
    saved = json.loads((out / "report.json").read_text())
    (raw,) = saved["engines"]
    assert raw["scenarios"][0]["settings"]["schedule_rng_seed"] == server.settings.schedule_rng_seed != 0
    assert read(out / "report.json").engines[0].scenario("offline").figure == offline.figure


def test_cost_columns_and_ranking_by_server(bench):
    _, report, _, _ = bench
    (row,) = report.engines
    cost = row.cost
    assert cost.km2_per_h == pytest.approx(row.scene.km2_per_h)
    stride, pixel_m2 = 32 - 8, 0.5 * 0.5
    assert cost.offline_km2_per_h == pytest.approx(row.scenario("offline").figure * stride**2 * pixel_m2
                                                   * 3600 / 1e6)
    assert cost.usd_per_1000_km2 == pytest.approx(2.0 / cost.km2_per_h * 1000)
    assert cost.joules_per_km2 is None and cost.energy_note  # no RAPL in this VM: said, not guessed
    md = to_markdown(report)
    header = md.splitlines()[2]
    for column in ("Server QPS", "Offline tiles/s", "km²/h", "offline km²/h", "$/1000 km²", "kWh/km²"):
        assert f" {column} " in header
    assert "not measured here" in md and "ranked by Server QPS under the p99 bound" in report.rule
    assert report.ranking.by == "server"


def test_scenario_rows_merge_across_machines(bench):
    _, report, _, _ = bench
    other = report.model_copy(deep=True, update={"machine": report.machine.model_copy(
        update={"hostname": "other"})})
    merged = merge_reports([report, other])
    assert [r.scenario("offline").figure for r in merged.engines] == [report.engines[0].scenario(
        "offline").figure] * 2
    assert "Offline tiles/s" in to_markdown(merged)


def test_the_sample_library_is_the_tilers_windows(bench):
    _, _, scene, labels = bench
    library = sample_library([scene], make_spec(tile=32), overlap=8, labels=[labels])
    assert library.tiles.shape == (16, 3, 32, 32) and library.stride == 24  # 4 x 4 windows of 96^2
    assert library.targets.shape == (16, 32, 32) and library.targets.max() < 3
    small = sample_library([scene], make_spec(tile=32), overlap=8, limit=5)
    assert len(small.tiles) == 5 and small.targets is None


@pytest.mark.parametrize(("args", "said"), [
    (["--scenarios", "servre"], "servre is not a scenario"),
    (["--scenarios", "server", "--server-latency-ms", "0"], "must be a number from 0.1"),
    (["--scenarios", "server", "--scenario-seconds", "-5"], "must be a number from 1"),
    (["--rank-by", "speed"], "invalid choice"),
])
def test_bad_scenario_options_are_usage_errors(args, said, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--model", str(tmp_path / "m.onnx"), "--engines", "ort-fp32", "--scenes",
              str(tmp_path / "s.tif"), *args])
    assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_the_page_plots_latency_under_load(bench):
    out, report, _, _ = bench
    from segbench.bench.page import bench_page

    page = bench_page(report)
    assert "Latency under load (LoadGen Server)" in page and page.count("<svg") >= 2
    assert "Server QPS" in page and "Offline tiles/s" in page


def test_scenarios_without_loadgen_stop_before_any_work(tmp_path, monkeypatch, capsys):
    import sys

    model = tiny_conv_onnx(tmp_path / "m.onnx", make_spec(tile=32))
    scene = write_scene(tmp_path / "s.tif", np.ones((3, 40, 40), np.uint8))
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # as if the extra were not installed
    code = main(["bench", "--model", str(model), "--engines", "ort-fp32", "--reference", "ort-fp32",
                 "--scenes", str(scene), "-o", str(tmp_path / "out"), "--scenarios", "server"])
    err = capsys.readouterr().err
    assert code == 3 and "pip install 'segbench[loadgen]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "engines").exists()  # nothing built
