"""Every file a study's report is rendered to: tables (Markdown, CSV, LaTeX), plots and the page."""

from __future__ import annotations

import os
from pathlib import Path

from segbench.bench.model import Study
from segbench.files import write_text
from segbench.study.page import study_page
from segbench.study.render import (
    TABLE_KINDS,
    plot_iou,
    plot_pareto,
    slug,
    study_tables,
    to_csv,
    to_latex,
    to_latex_document,
    to_markdown,
)


def write_study(report: Study, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write study.md, study-networks.csv, study-engines.csv, study.tex, one tabular per table
    (<dataset>-networks.tex, <dataset>-engines.tex), each dataset's Pareto plot and IoU heat map,
    and study.html (:mod:`segbench.study.page`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"study.md": to_markdown(report), "study.tex": to_latex_document(report)}
    texts.update({f"study-{kind}.csv": to_csv(report, kind) for kind in TABLE_KINDS})
    texts.update({f"{slug(t.dataset.name)}-{t.kind}.tex": to_latex(t) for t in study_tables(report)})
    paths = [write_text(out / name, text) for name, text in texts.items()]
    for dataset in report.datasets:
        paths.append(plot_pareto(dataset, out / f"{slug(dataset.name)}-pareto.png"))
        paths.append(plot_iou(dataset, out / f"{slug(dataset.name)}-iou.png"))
    paths.append(write_text(out / "study.html", study_page(report)))
    return paths
