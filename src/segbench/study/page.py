"""``study.html``: the study on one self-contained page, a section per dataset (its networks and
engines tables, sortable; per-class IoU as a heat map; the latency-accuracy plot with an honest
accuracy axis) and the machines that ran it. The pieces are the bench page's
(:mod:`segbench.bench.page`).
"""

from __future__ import annotations

from segbench.bench.page import esc, figure, iou_figure, machine, page, table
from segbench.study.render import iou_grid, ordered_networks, study_tables


def study_page(report: dict) -> str:
    """The page of a study report (``study.json``, or several merged)."""
    tables = study_tables(report)
    name = (report.get("study") or {}).get("name") or report.get("name") or ""
    parts = [f"<h1>segbench study: {esc(name)}</h1>",
             f"<p class=muted>{len(report.get('datasets', []))} dataset(s): each network by family, then "
             "each on every engine; an engine qualifies at 99% of its reference's mIoU (the MLPerf rule) "
             "and qualified engines rank by throughput.</p>"]
    for dataset in report.get("datasets", []):
        parts.append(f"<h2>{esc(dataset['name'])}</h2>")
        for t in (t for t in tables if t.dataset is dataset):
            cols = t.shown
            parts += [f"<h3>{esc(t.title)}</h3>",
                      table([c.header for c in cols], [[c.text(row) for c in cols] for row in t.rows])]
            parts += [f"<p class=muted>{esc(n)}</p>" for n in t.notes]
        heat = iou_figure(iou_grid(dataset), list(dataset.get("classes", [])),
                          f"{dataset['name']}: per-class IoU (%)")
        if heat is not None:
            parts += ["<h3>Per-class IoU</h3>", heat]
        parts += ["<h3>Latency against accuracy</h3>", figure(_latency_accuracy(dataset))]
    machines = report.get("machines") or ([report["machine"]] if report.get("machine") else [])
    parts += ["<h2>Machines</h2>", *(machine({"machine": m}) for m in machines if isinstance(m, dict))]
    return page(f"segbench study {name}", parts)


def _latency_accuracy(dataset: dict):
    """Every network on every engine of the dataset: p50 latency (log) against mIoU, honest axis."""
    import matplotlib.pyplot as plt

    from segbench.bench.report import _g, honest_limits

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    markers = "osD^vP<>Xh"
    ys = []
    for i, network in enumerate(n for n in ordered_networks(dataset) if n.get("engines")):
        points = [(_g("latency", "batch1", "p50")(r), _g("accuracy", "miou")(r)) for r in network["engines"]
                  if r.get("status") == "ok"]
        points = [(x, 100 * y) for x, y in points if x and y is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=markers[i % len(markers)], s=44,
                       label=network["name"], zorder=3)
            ys += [y for _, y in points]
    if ys:
        ax.set_xscale("log")
        ax.set_ylim(*honest_limits(ys))
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no engine measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("p50 latency per tile, batch 1 (ms, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
