"""Table columns, each defined once: the bench's table and the study's engine table pick from them.

A :class:`Column` reads one figure from a typed row (:mod:`segbench.bench.model`)
and formats it; the terminal, Markdown, CSV, LaTeX and the pages all render
the same columns. A new metric is one field in the model and one column here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segbench.bench.latency import P90_MIN_SAMPLES
from segbench.bench.model import EngineRow


@dataclass(frozen=True)
class Column:
    """A table column: its header, its CSV key, its figure (in the column's unit) and that figure as shown."""

    header: str
    key: str
    value: Callable[[Any], object]
    text: Callable[[Any], str]
    numeric: bool = True
    best: bool = False      # the highest figure of the table is emphasised (study tables)
    latex: bool = True      # shown in the LaTeX table
    csv_only: bool = False  # only in the CSV (status, reason, units the text already shows)
    optional: bool = False  # shown only where some row has a value (the bench's table)


def number(fmt: str) -> Callable[[object], str]:
    return lambda v: "" if v is None else format(v, fmt)


def figure(header: str, key: str, get: Callable[[Any], object], scale: float = 1.0, fmt: str = ".2f",
           best: bool = False, csv_only: bool = False, undefined: str = "", optional: bool = False) -> Column:
    """A figure column; ``undefined`` is shown for a row that ran but has no figure (NaN IoU)."""
    def value(row) -> float | None:
        v = get(row)
        return v if v is None or scale == 1 else v * scale

    def text(row) -> str:
        v = value(row)
        return undefined if v is None and row.status == "ok" else number(fmt)(v)

    return Column(header, key, value, text, best=best, csv_only=csv_only, optional=optional)


def label(header: str, key: str, get: Callable[[Any], object], latex: bool = True,
          csv_only: bool = False) -> Column:
    return Column(header, key, get, lambda r: str(get(r) or ""), numeric=False, latex=latex,
                  csv_only=csv_only)


def p90_text(row: EngineRow) -> str:
    """p90 with its sample count; never a figure from fewer samples than its minimum."""
    if row.latency is None:
        return ""
    stats = row.latency.batch1
    if stats.p90 is None or stats.n < P90_MIN_SAMPLES:
        return f"not stated (n={stats.n} < {P90_MIN_SAMPLES})"
    return f"{stats.p90:.1f} (n={stats.n})"


def seam_text(row: EngineRow) -> str:
    """``2.1 / 0.8``: the error rate in the seam band and elsewhere (percent)."""
    seam = row.disagreement.seam if row.disagreement else None
    if seam is None or seam.error_in_band is None or seam.error_elsewhere is None:
        return ""
    return f"{100 * seam.error_in_band:.1f} / {100 * seam.error_elsewhere:.1f}"


def best_tiles_per_s(row: EngineRow) -> float | None:
    """Tiles per second at the best of the batch sizes tried (batch 1 or the tiler's batch)."""
    if row.latency is None:
        return None
    rates = [1000.0 / m for m in (row.latency.batch1.p50, row.latency.per_tile_ms_at_batch) if m]
    return max(rates) if rates else None


def _acc(name: str) -> Callable[[EngineRow], float | None]:
    return lambda r: getattr(r.accuracy, name) if r.accuracy else None


def _gpu_peak(row: EngineRow) -> int | None:
    return row.memory.gpu.peak_allocated_bytes if row.memory and row.memory.gpu else None


def _p90_value(row: EngineRow) -> float | None:
    return row.latency.batch1.p90 if row.latency else None


def _n(row: EngineRow) -> int | None:
    return row.latency.batch1.n if row.latency else None


def _km2(row: EngineRow) -> float | None:
    return row.scene.km2_per_h if row.scene else None


def _differ(row: EngineRow) -> float | None:
    return row.disagreement.share if row.disagreement else None


def _seam_value(row: EngineRow) -> float | None:
    seam = row.disagreement.seam if row.disagreement else None
    return seam.error_in_band if seam else None


# -- every engine figure, once -----------------------------------------------------------------------

ENGINE = label("engine", "engine", lambda r: r.name)
DEVICE = label("device", "device", lambda r: r.device)
# what ran: "int8 (2 fp32)" for an int8 engine with two layers kept in float
PRECISION = label("precision", "precision", lambda r: r.precision_label or r.precision)
MIOU = figure("mIoU %", "miou_pct", _acc("miou"), 100, best=True)
OA = figure("OA %", "oa_pct", _acc("oa"), 100, best=True)
AGREE = figure("agree %", "agreement_pct", _acc("agreement"), 100)
# the pixels whose label differs from the reference engine's (bench.disagreement)
DIFFER = figure("differ %", "differ_pct", _differ, 100, optional=True)
# the error against the ground truth within a few pixels of the window borders, and elsewhere
SEAM = Column("seam err %", "seam_error_pct", _seam_value, seam_text, optional=True)
P50 = figure("p50 ms", "p50_ms", lambda r: r.p50_ms, fmt=".1f")
P90 = Column("p90 ms", "p90_ms", _p90_value, p90_text)
LATENCY_N = figure("n", "latency_n", _n, fmt="d", csv_only=True)
TILES_PER_S = figure("tiles/s", "tiles_per_s", best_tiles_per_s, fmt=".1f")
MP_S = figure("MP/s", "megapixels_per_s", lambda r: r.megapixels_per_s)
KM2_H = figure("km²/h", "km2_per_h", _km2, fmt=".1f")
PEAK = figure("peak MiB", "peak_rss_mib", lambda r: r.peak_rss_bytes, 2**-20, ".0f")
# the process's peak GPU allocation (torch's allocator); shown when some engine ran on a GPU
GPU = figure("GPU MiB", "gpu_peak_mib", _gpu_peak, 2**-20, ".0f", optional=True)
SIZE = figure("size MiB", "artifact_mib", lambda r: r.artifact_bytes, 2**-20, ".1f")
STATUS = label("status", "status", lambda r: r.status, csv_only=True)


# -- LoadGen's scenarios and what a scene costs (shown where some engine has them) -------------------

def _figure_of(scenario: str) -> Callable[[EngineRow], float | None]:
    def get(row: EngineRow) -> float | None:
        found = row.scenario(scenario)
        return found.figure if found and found.valid else None

    return get


def server_text(row: EngineRow) -> str:
    """``41.2 (p99 88 ms)``: the highest valid Server QPS and its p99; ``none <= 50 ms (best p99 73)``
    where no full point of the search met the bound (its short probes never count); ``no full point
    (budget)`` where the budget held none."""
    found = row.scenario("server")
    if found is None:
        return ""
    if found.valid and found.figure is not None:
        return f"{found.figure:.1f} (p99 {found.p99_ms:.0f} ms)" if found.p99_ms else f"{found.figure:.1f}"
    if not found.points:  # the budget held no full point (its note says what would)
        return "no full point (budget)"
    best = min((p.p99_ms for p in found.points if p.p99_ms is not None and not p.probe), default=None)
    bound = f" <= {found.latency_bound_ms:.0f} ms" if found.latency_bound_ms else ""
    return f"none{bound}" + (f" (best p99 {best:.0f})" if best is not None else "")


def _scenario_text(scenario: str, fmt: str) -> Callable[[EngineRow], str]:
    """The scenario's figure, or why it has none (INVALID: too few queries to claim one)."""
    def text(row: EngineRow) -> str:
        found = row.scenario(scenario)
        if found is None:
            return ""
        return format(found.figure, fmt) if found.valid and found.figure is not None else "invalid"

    return text


def _cost(name: str) -> Callable[[EngineRow], float | None]:
    return lambda r: getattr(r.cost, name) if r.cost else None


def _energy_text(row: EngineRow) -> str:
    if row.cost is None:
        return ""
    if row.cost.joules_per_km2 is not None:
        return f"{row.cost.joules_per_km2 / 3.6e6:.3g}"  # kWh
    return "not measured here" if row.cost.energy_note else ""


SERVER = Column("Server QPS", "server_qps", lambda r: r.server_qps, server_text, optional=True)
OFFLINE = Column("Offline tiles/s", "offline_tiles_per_s", _figure_of("offline"),
                 _scenario_text("offline", ".1f"), optional=True)
SINGLE_STREAM = Column("SS p90 ms", "single_stream_p90_ms", _figure_of("single-stream"),
                       _scenario_text("single-stream", ".1f"), optional=True)
MULTI_STREAM = Column("MS p99 ms", "multi_stream_p99_ms", _figure_of("multi-stream"),
                      _scenario_text("multi-stream", ".1f"), optional=True)
# the area whole scenes cover per hour (in the bench's table once a row has its cost worked out)
KM2_H_OPT = figure("km²/h", "km2_per_h", _cost("km2_per_h"), fmt=".1f", optional=True)
OFFLINE_KM2_H = figure("offline km²/h", "offline_km2_per_h", _cost("offline_km2_per_h"), fmt=".1f",
                       optional=True)
USD = figure("$/1000 km²", "usd_per_1000_km2", _cost("usd_per_1000_km2"), fmt=".2f", optional=True)
ENERGY = Column("kWh/km²", "kwh_per_km2", lambda r: r.cost.joules_per_km2 / 3.6e6
                if r.cost and r.cost.joules_per_km2 is not None else None, _energy_text, optional=True)


def is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
