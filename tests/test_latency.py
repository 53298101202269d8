"""Latency percentiles are stated only from enough samples (MLPerf's early-stopping minimums)."""

import numpy as np
import pytest

from segbench.bench.latency import LatencyStats
from segbench.bench.model import Report
from segbench.bench.tables import render_table, table_rows, to_csv, to_markdown

# MLPerf LoadGen's early-stopping floors (SingleStream, tolerance 0, 99 % confidence)
P90_MIN_SAMPLES, P99_MIN_SAMPLES = 64, 662


def _samples(n: int, low: float = 0.010, high: float = 0.030) -> np.ndarray:
    return np.random.default_rng(n).uniform(low, high, n)  # seconds


def test_minimums_are_mlperfs():
    from segbench.bench import latency

    assert (latency.P90_MIN_SAMPLES, latency.P99_MIN_SAMPLES) == (P90_MIN_SAMPLES, P99_MIN_SAMPLES)


def test_percentiles_from_too_few_samples_are_not_stated():
    few = LatencyStats.from_samples(_samples(P90_MIN_SAMPLES - 1))
    assert few.p50 is not None and few.p90 is None and few.p99 is None
    enough = LatencyStats.from_samples(_samples(P90_MIN_SAMPLES))
    assert enough.p90 == pytest.approx(np.percentile(_samples(P90_MIN_SAMPLES) * 1e3, 90))
    assert enough.p99 is None
    many = LatencyStats.from_samples(_samples(P99_MIN_SAMPLES))
    assert many.p50 <= many.p90 <= many.p99 <= many.max
    d = few.to_dict()
    assert d["p90"] is None and d["n"] == P90_MIN_SAMPLES - 1


def _report(*stats: LatencyStats) -> Report:
    rows = [{"name": f"engine{i}", "status": "ok", "device": "cpu",
             "latency": {"batch1": s.to_dict(), "batch": 1},
             "scene": {"megapixels_per_s": 1.0, "seconds": 1.0, "megapixels": 1.0}}
            for i, s in enumerate(stats)]
    return Report.model_validate({"engines": rows, "rule": ""})


def test_renderings_show_the_sample_count_and_never_an_unstated_p90():
    few = LatencyStats.from_samples(_samples(10, 0.1, 0.2))  # p90 near 190 ms, p50 near 150
    enough = LatencyStats.from_samples(_samples(80))
    report = _report(few, enough)
    header, rows = table_rows(report)
    col = next(i for i, h in enumerate(header) if h.startswith("p90"))
    assert rows[1][col] == f"{enough.p90:.1f} (n=80)"
    assert rows[0][col] == "not stated (n=10 < 64)"
    unsound = f"{np.percentile(_samples(10, 0.1, 0.2) * 1e3, 90):.1f}"  # what the old table printed
    for text in (to_markdown(report), to_csv(report)):
        assert "(n=80)" in text and "n=10 < 64" in text and unsound not in text
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    assert "n=10 < 64" in console.export_text() and unsound not in console.export_text()
