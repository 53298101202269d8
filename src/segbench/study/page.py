"""``study.html``: the study on one self-contained page, a section per dataset (its networks and
engines tables, sortable; per-class IoU as a heat map; the latency-accuracy plot with an honest
accuracy axis) and the machines that ran it: the bench page's template pieces
(``segbench/bench/templates/study.html.j2``, :mod:`segbench.bench.page`).
"""

from __future__ import annotations

from segbench.bench.model import Dataset, Study
from segbench.bench.page import cells, iou_figure, machine_rows, render, svg
from segbench.study.render import FIGURE_RC, iou_grid, pareto_figure, study_name, study_tables


def study_page(report: Study) -> str:
    """The page of a study report (``study.json``, or several merged)."""
    tables = study_tables(report)
    datasets = []
    for dataset in report.datasets:
        shown = [{"title": t.title, "header": [c.header for c in t.shown],
                  "rows": cells([[c.text(row) for c in t.shown] for row in t.rows]), "notes": t.notes}
                 for t in tables if t.dataset is dataset]
        heat = iou_figure(iou_grid(dataset), list(dataset.classes), f"{dataset.name}: per-class IoU (%)")
        datasets.append({"name": dataset.name, "tables": shown, "heat": heat,
                         "pareto": svg(_pareto(dataset))})
    name = study_name(report) or ""
    return render("study.html.j2", title=f"segbench study {name}", name=name, datasets=datasets,
                  machines=[machine_rows(m) for m in report.all_machines])


def _pareto(dataset: Dataset):
    """The study's latency-accuracy figure (:func:`segbench.study.render.pareto_figure`), as it is
    in the PNG."""
    import matplotlib.pyplot as plt

    with plt.rc_context(FIGURE_RC):
        return pareto_figure(dataset)
