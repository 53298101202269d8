"""The bench report's figure: p50 latency against mIoU, with an honest accuracy axis."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segbench.bench.model import Report
from segbench.files import atomic_output

#: the least span of the accuracy axis, in mIoU points: differences of a few hundredths of a point
#: (fp32 engines among themselves) stay flat instead of filling the plot
MIN_SPAN = 2.0


def honest_limits(values: Sequence[float], reference: float | None = None,
                  min_span: float = MIN_SPAN) -> tuple[float, float]:
    """An accuracy axis that holds every value and the reference's and spans at least ``min_span``
    (values in percent), padded by a tenth of its span."""
    values = [v for v in [*values, reference] if v is not None]
    if not values:
        return 0.0, 100.0
    low, high = min(values), max(values)
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    pad = (high - low) / 10
    return max(low - pad, 0.0), min(high + pad, 100.0)


def pyplot(purpose: str):
    """matplotlib's pyplot on the Agg backend (one sentence when the plot extra is missing)."""
    from segbench.extras import require

    matplotlib = require("matplotlib", purpose)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_accuracy_figure(report: Report):
    """A matplotlib figure of p50 tile latency (log x) against mIoU, one point per engine, the Pareto
    front drawn, the accuracy axis honest (:func:`honest_limits`, the reference always in range)."""
    plt = pyplot("the report's latency-accuracy plot")
    from matplotlib.ticker import ScalarFormatter

    pts = [(r, r.p50_ms, 100 * r.miou) for r in report.ok_rows
           if r.p50_ms is not None and r.miou is not None]
    named = report.ranking.reference if report.ranking else None
    reference = next((y for r, _, y in pts if r.name == named), None)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    markers = "osD^vP<>Xh"
    for i, (r, x, y) in enumerate(pts):
        ax.scatter(x, y, s=50, zorder=3, marker=markers[i % len(markers)],
                   label=r.label + (" *" if r.pareto else ""))
    front = sorted((x, y) for r, x, y in pts if r.pareto)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey",
                linestyle="--", label="Pareto front (*)")
    if reference is not None:
        ax.axhline(reference, color="0.6", linewidth=0.8, zorder=1, label="reference mIoU")
    if pts:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.margins(x=0.1)
        ax.set_ylim(*honest_limits([y for _, _, y in pts], reference))
        # A legend beside the axes: engine names never overlap one another.
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel("p50 latency per tile, batch 1 (ms, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("segbench: latency against accuracy")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot(report: Report, path: str | os.PathLike[str]) -> Path:
    """PNG of :func:`latency_accuracy_figure`."""
    import matplotlib.pyplot as plt

    fig = latency_accuracy_figure(report)
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def server_latency_figure(report: Report):
    """Per engine, LoadGen's p50, p90 and p99 latency against the offered QPS of its Server search,
    the p99 bound drawn; None when no engine ran the Server scenario."""
    runs = [(r, s) for r in report.ok_rows if (s := r.scenario("server")) is not None and s.points]
    if not runs:
        return None
    plt = pyplot("the report's latency-under-load plot")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, (row, server) in enumerate(runs):
        points = sorted(server.points, key=lambda p: p.target_qps)
        for value, style, name in ((lambda p: p.p50_ms, ":", "p50"), (lambda p: p.p90_ms, "--", "p90"),
                                   (lambda p: p.p99_ms, "-", "p99")):
            xs = [p.target_qps for p in points if value(p) is not None]
            ys = [value(p) for p in points if value(p) is not None]
            ax.plot(xs, ys, style, marker="o", markersize=3, color=colours(i % 10),
                    label=f"{row.label} {name}")
        valid = [p for p in points if p.valid]
        ax.scatter([p.target_qps for p in valid], [p.p99_ms for p in valid], s=40, facecolors="none",
                   edgecolors=colours(i % 10), zorder=3)
    bound = runs[0][1].latency_bound_ms
    if bound:
        ax.axhline(bound, color="0.4", linewidth=0.8, label=f"p99 bound {bound:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (queries per second, LoadGen Server)")
    ax.set_ylabel("latency per query (ms, log scale)")
    ax.set_title("segbench: latency under load (rings: VALID runs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
