"""``study.html``: the study on one self-contained page, a section per dataset (its networks and
engines tables, sortable; per-class IoU as a heat map; the latency-accuracy plot with an honest
accuracy axis) and the machines that ran it. The pieces are the bench page's
(:mod:`segbench.bench.page`).
"""

from __future__ import annotations

from segbench.bench.model import Dataset, Study
from segbench.bench.page import esc, figure, iou_figure, machine, page, table
from segbench.study.render import FIGURE_RC, iou_grid, pareto_figure, study_name, study_tables


def study_page(report: Study) -> str:
    """The page of a study report (``study.json``, or several merged)."""
    tables = study_tables(report)
    name = study_name(report) or ""
    parts = [f"<h1>segbench study: {esc(name)}</h1>",
             f"<p class=muted>{len(report.datasets)} dataset(s): each network by family, then "
             "each on every engine; an engine qualifies at 99% of its reference's mIoU (the MLPerf rule) "
             "and qualified engines rank by throughput.</p>"]
    for dataset in report.datasets:
        parts.append(f"<h2>{esc(dataset.name)}</h2>")
        for t in (t for t in tables if t.dataset is dataset):
            cols = t.shown
            parts += [f"<h3>{esc(t.title)}</h3>",
                      table([c.header for c in cols], [[c.text(row) for c in cols] for row in t.rows])]
            parts += [f"<p class=muted>{esc(n)}</p>" for n in t.notes]
        heat = iou_figure(iou_grid(dataset), list(dataset.classes), f"{dataset.name}: per-class IoU (%)")
        if heat is not None:
            parts += ["<h3>Per-class IoU</h3>", heat]
        parts += ["<h3>Latency against accuracy</h3>", figure(_pareto(dataset))]
    parts += ["<h2>Machines</h2>", *(machine(m) for m in report.all_machines)]
    return page(f"segbench study {name}", parts)


def _pareto(dataset: Dataset):
    """The study's latency-accuracy figure (:func:`segbench.study.render.pareto_figure`), as it is
    in the PNG."""
    import matplotlib.pyplot as plt

    with plt.rc_context(FIGURE_RC):
        return pareto_figure(dataset)
