"""The study's renderings: one ranking across networks, the paper's tables and plots, from ``study.json``.

Per dataset there are two tables, each defined once as a list of
:class:`Column` and rendered to the terminal (rich), Markdown, CSV and
LaTeX (booktabs), and two figures:

* the network table: one row per network, grouped by family, with its cost
  (parameters, GFLOPs per tile), per-class IoU, mIoU, mean F1, overall
  accuracy and training time;
* the engine table: one row per (network, engine): latency, throughput,
  memory, size, accuracy, agreement with the network's reference, and the
  study's rank and Pareto front across every network of the dataset;
* ``<dataset>-pareto.png``: mIoU against p50 latency, the front drawn;
* ``<dataset>-iou.png``: per-class IoU of each network as a heat map.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from segbench import __version__
from segbench.bench import columns as shared
from segbench.bench.columns import Column, is_nan
from segbench.bench.columns import figure as _figure
from segbench.bench.columns import label as _label
from segbench.bench.figures import honest_limits
from segbench.bench.model import Dataset, EngineRow, Network
from segbench.bench.model import Study as StudyReport
from segbench.bench.page import iou_grid as grid_of
from segbench.bench.rank import pareto_front, throughput_order
from segbench.files import atomic_output
from segbench.train.catalogue import ATTENTION, CNN, FAST, TRANSFORMER

FAMILIES = (CNN, ATTENTION, TRANSFORMER, FAST)  # the tables' order; other families follow
TABLE_KINDS = ("networks", "engines")
STUDY_RULE = ("Ranks and the Pareto front (*) are across every network's engines of the dataset; "
              "each engine qualifies against its own network's reference.")


# -- ranking ---------------------------------------------------------------------------------------

def rank_study(report: StudyReport) -> StudyReport:
    """Rank every (network, engine) row of each dataset together (in place); returns the report.

    A row qualifies as its own bench ranked it (against its network's
    reference); ``study_rank`` orders the qualified rows of a dataset by scene
    throughput (1 = fastest) and ``study_pareto`` marks the front of mIoU
    against p50 latency at batch 1 among all measured rows.
    """
    for dataset in report.datasets:
        rows = dataset.engine_rows()
        for row in rows:
            row.study_rank, row.study_pareto = None, False
        ok = [r for r in rows if r.ok]
        for i, row in throughput_order(ok):
            row.study_rank = i
        for row in pareto_front(ok):
            row.study_pareto = True
    return report


def ordered_networks(dataset: Dataset) -> list[Network]:
    """The dataset's networks grouped by family, in the paper's family order (stable within a family)."""
    def key(network: Network) -> tuple[int, str]:
        family = family_of(network)
        return (FAMILIES.index(family), "") if family in FAMILIES else (len(FAMILIES), family)

    return sorted(dataset.networks, key=key)


def family_of(network: Network) -> str:
    return network.family or "other"


# -- one column definition serves the terminal, Markdown, CSV and LaTeX ---------------------------

def _status_text(row: Network | EngineRow, ok_text: Callable[[Network | EngineRow], str]) -> str:
    """``ok_text(row)`` for a row that ran, else its status (skipped, failed, pending)."""
    return ok_text(row) if row.ok else row.status


def duration(seconds: float | None) -> str:
    """A training time as people say it: 42 s, 13.5 min, 2.3 h."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _uniform_tile(networks: list[Network]) -> int | None:
    tiles = {n.tile for n in networks if n.tile}
    return tiles.pop() if len(tiles) == 1 else None


def _accuracy(name: str) -> Callable[[Network], float | None]:
    return lambda n: getattr(n.accuracy, name) if n.accuracy else None


def _class_iou(name: str) -> Callable[[Network], float | None]:
    def get(network: Network) -> float | None:
        found = network.accuracy.per_class.get(name) if network.accuracy else None
        return found.iou if found else None

    return get


def _train_text(network: Network) -> str:
    return duration(network.train_seconds) or ("imported" if network.source == "imported" else "")


def network_columns(dataset: Dataset) -> list[Column]:
    """The network table's columns: cost, per-class IoU, the class means, OA, training time."""
    excluded = set(dataset.excluded_classes)
    tile = _uniform_tile(dataset.networks)
    cols = [
        _label("network", "network", lambda n: n.name),
        _label("family", "family", family_of, latex=False),
        _label("source", "source", lambda n: n.source, latex=False),
        _figure("params M", "params_m", lambda n: n.params, 1e-6),
        _figure(f"GFLOPs @{tile}" if tile else "GFLOPs", "gflops", lambda n: n.gflops, fmt=".1f"),
    ]
    if not tile:
        cols.append(Column("tile", "tile", lambda n: n.tile, lambda n: str(n.tile or "")))
    for name in dataset.classes:
        cols.append(_figure(name + ("†" if name in excluded else ""), f"iou_{name}_pct",
                            _class_iou(name), 100, best=True, undefined="n/a"))
    cols += [
        _figure("mIoU %", "miou_pct", _accuracy("miou"), 100, best=True),
        _figure("mF1 %", "mf1_pct", _accuracy("mf1"), 100, best=True),
        _figure("OA %", "oa_pct", _accuracy("oa"), 100, best=True),
        Column("train", "train_s", lambda n: n.train_seconds, lambda n: _status_text(n, _train_text)),
        _label("status", "status", lambda n: n.status, csv_only=True),
        _label("reason", "reason", lambda n: n.reason, csv_only=True),
    ]
    return cols


def _rank_text(row: EngineRow) -> str:
    return _status_text(row, lambda r: str(r.study_rank) if r.study_rank else "–")


def engine_columns(machines: bool) -> list[Column]:
    """The engine table's columns (a machine column when the study merges several machines)."""
    cols = [
        _label("network", "network", lambda r: r.network),
        _label("family", "family", lambda r: r.family, csv_only=True),
        shared.ENGINE,
    ]
    if machines:
        cols.append(_label("machine", "machine", lambda r: r.machine))
    cols += [
        shared.DEVICE, shared.P50, shared.P90, shared.LATENCY_N, shared.TILES_PER_S, shared.MP_S,
        shared.KM2_H, shared.PEAK, shared.SIZE, shared.MIOU, shared.AGREE,
        Column("qualified", "qualified", lambda r: r.qualified,
               lambda r: ("yes" if r.qualified else "no") if r.ok else "", numeric=False),
        Column("rank", "study_rank", lambda r: r.study_rank, _rank_text),
        Column("Pareto", "study_pareto", lambda r: r.study_pareto,
               lambda r: "*" if r.study_pareto else "", numeric=False),
        shared.STATUS,
        _label("reason", "reason", lambda r: r.reason or r.rank_reason, csv_only=True),
    ]
    return cols


# -- the tables -----------------------------------------------------------------------------------

@dataclass
class StudyTable:
    """One table of one dataset: its columns, rows (grouped by family) and notes."""

    kind: str
    dataset: Dataset
    columns: list[Column]
    rows: list[Network] | list[EngineRow]
    groups: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def shown(self) -> list[Column]:
        return [c for c in self.columns if not c.csv_only]

    def best(self, column: Column) -> float | None:
        """The highest figure of a ``best`` column among rows that ran; None when all of them tie
        (a column where every network scores 0 has no best)."""
        values = [column.value(r) for r in self.rows if r.ok]
        values = [v for v in values if isinstance(v, (int, float)) and not is_nan(v)]
        if not column.best or len(set(values)) < 2:
            return None
        return max(values)

    def is_best(self, column: Column, row: Network | EngineRow) -> bool:
        best = self.best(column)
        return best is not None and row.ok and column.value(row) == best

    def blocks(self) -> Iterator[tuple[str, list]]:
        """(family, rows) for each family, in order."""
        pairs = zip(self.groups, self.rows, strict=True)
        for family, group in itertools.groupby(pairs, key=lambda p: p[0]):
            yield family, [row for _, row in group]

    @property
    def title(self) -> str:
        d = self.dataset
        what = ("networks: cost and accuracy" if self.kind == "networks"
                else "engines: latency, throughput, memory and accuracy")
        return f"{d.name} ({d.split or '?'} split, {len(d.classes)} classes): {what}"


def network_table(dataset: Dataset) -> StudyTable:
    networks = ordered_networks(dataset)
    notes = _grouped((f"{n.status}: {n.reason}", n.name) for n in networks if not n.ok)
    excluded = dataset.excluded_classes
    if excluded:
        notes.append(f"† {', '.join(excluded)}: left out of mIoU and mF1 (ISPRS); OA counts every class.")
    return StudyTable("networks", dataset, network_columns(dataset), networks,
                      [family_of(n) for n in networks], notes)


def engine_table(dataset: Dataset, machines: bool) -> StudyTable:
    rows, groups, notes = [], [], []  # notes: (what is said, of which row or network)
    for network in ordered_networks(dataset):
        family = family_of(network)
        for row in network.engines:
            rows.append(row.model_copy(update={"network": network.name, "family": family}))
            groups.append(family)
            if what := _engine_note(row):
                where = f" on {row.machine}" if row.machine else ""
                notes.append((what, f"{network.name} / {row.name}{where}"))
        if not network.engines:
            why = network.engines_reason or (
                f"the network is {network.status}" if not network.ok else "not benchmarked yet")
            notes.append((f"no engines: {why}", network.name))
    return StudyTable("engines", dataset, engine_columns(machines), rows, groups, _grouped(notes))


def _grouped(notes) -> list[str]:
    """One note per thing said, naming everything it is said of: "a, b: skipped: ..."."""
    said: dict[str, list[str]] = {}
    for what, of in notes:
        said.setdefault(what, []).append(of)
    return [f"{', '.join(names)}: {what}" for what, names in said.items()]


def _engine_note(row: EngineRow) -> str | None:
    """Why a row has no figures, or why it is not ranked; None when there is nothing to say."""
    if not row.ok:
        return f"{row.status}: {row.reason}"
    if not row.qualified and row.rank_reason:
        return f"not ranked: {row.rank_reason}"
    return None


def study_tables(report: StudyReport) -> list[StudyTable]:
    """Both tables of every dataset, in order."""
    machines = report.has_machines
    return [t for d in report.datasets for t in (network_table(d), engine_table(d, machines))]


def caption(table: StudyTable, report: StudyReport) -> str:
    """What the table shows, in words (the ranking rule for the engine table)."""
    if table.kind == "networks":
        tile = _uniform_tile(table.dataset.networks)
        per = f"per {tile}×{tile} tile" if tile else "per tile"
        return (f"Parameters, GFLOPs {per}, per-class IoU, mIoU, mean F1 and overall accuracy (%) "
                "of each network; the best figure of each column in bold.")
    return f"{report.rule} {STUDY_RULE}".strip()


# -- terminal ---------------------------------------------------------------------------------------

def render_tables(report: StudyReport) -> list:
    """Rich tables of every dataset (print them with ``segbench.bench.report.console()``)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = []
    for table in study_tables(report):
        text = caption(table, report) + "".join(f"\n{n}" for n in table.notes)
        rich = Table(title=table.title, caption=Text(text), caption_justify="left", box=box.SIMPLE_HEAD,
                     collapse_padding=True, pad_edge=False)
        for c in table.shown:
            # names and headers stay whole; long figures and a merged study's machine labels wrap
            rich.add_column(c.header, justify="right" if c.numeric else "left", min_width=len(c.header),
                            no_wrap=not c.numeric and c.key != "machine")
        for i, (_, rows) in enumerate(table.blocks()):
            if i:
                rich.add_section()
            for row in rows:
                rich.add_row(*(Text(c.text(row), style="bold" if table.is_best(c, row) else "")
                               for c in table.shown))
        out.append(rich)
    return out


# -- Markdown -----------------------------------------------------------------------------------------

def study_name(report: StudyReport) -> str | None:
    """The study's name, from its study file."""
    return (report.study or {}).get("name")


def to_markdown(report: StudyReport) -> str:
    """Every table as Markdown: a section per dataset, the ranking rule and notes under each table."""
    name = study_name(report) or "study"
    lines = [f"# segbench study: {name}", ""]
    for table in study_tables(report):
        if table.kind == "networks":
            lines += [f"## {table.dataset.name}", ""]
        lines += [f"### {table.title}", ""]
        cols = table.shown
        lines.append("| " + " | ".join(c.header for c in cols) + " |")
        lines.append("|" + "".join("---:|" if c.numeric else "---|" for c in cols))
        for row in table.rows:
            cells = [f"**{c.text(row)}**" if table.is_best(c, row) else _md_escape(c.text(row))
                     for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", caption(table, report), ""]
        lines += [f"- {_md_escape(n)}" for n in table.notes] + ([""] if table.notes else [])
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


# -- CSV ----------------------------------------------------------------------------------------------

def to_csv(report: StudyReport, kind: str) -> str:
    """One CSV of ``kind`` ("networks" or "engines") for all datasets, a dataset column first.

    Figures are in the unit of their column's name (``_pct``, ``_ms``, ``_mib``),
    unrounded beyond 6 decimals; an absent figure is an empty cell.
    """
    tables = [t for t in study_tables(report) if t.kind == kind]
    header = list(dict.fromkeys(["dataset"] + [c.key for t in tables for c in t.columns]))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for table in tables:
        for row in table.rows:
            values = {"dataset": table.dataset.name, **{c.key: c.value(row) for c in table.columns}}
            writer.writerow(_csv_cell(values.get(k)) for k in header)
    return buf.getvalue()


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 6))
    return str(value)


# -- LaTeX --------------------------------------------------------------------------------------------

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "²": r"\textsuperscript{2}", "†": r"\textsuperscript{\dag}", "–": "--", "×": r"$\times$",
          "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    """Text as LaTeX source: special characters escaped, ² and † as superscripts."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(table: StudyTable) -> str:
    """A complete booktabs ``tabular`` of the table: family blocks separated by rules, best in bold."""
    cols = [c for c in table.shown if c.latex]
    lines = [r"\begin{tabular}{" + "".join("r" if c.numeric else "l" for c in cols) + "}", r"\toprule",
             " & ".join(latex_escape(c.header) for c in cols) + r" \\"]
    for family, rows in table.blocks():
        lines += [r"\midrule", rf"\multicolumn{{{len(cols)}}}{{l}}{{\emph{{{latex_escape(family)}}}}} \\"]
        previous = None
        for row in rows:
            network = getattr(row, "network", None)  # engine rows name their network
            lines.append(_latex_row(table, cols, row, repeat=network != previous) + r" \\")
            previous = network
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_row(table: StudyTable, cols: list[Column], row: Network | EngineRow, repeat: bool) -> str:
    """One row's cells; a row that did not run spans its figures with its status and reason."""
    cells = []
    for c in cols:
        text = latex_escape(c.text(row))
        if c.key == "network" and table.kind == "engines" and not repeat:
            text = ""  # the network is named on its first engine's row
        cells.append(rf"\textbf{{{text}}}" if table.is_best(c, row) else text)
    if row.ok:
        return " & ".join(cells)
    first = next((i for i, c in enumerate(cols) if c.numeric), len(cols) - 1)
    why = row.status
    if row.reason:
        why += f": {short_reason(row.reason)}"
    span = rf"\multicolumn{{{len(cols) - first}}}{{l}}{{\emph{{{latex_escape(why)}}}}}"
    return " & ".join(cells[:first] + [span])


def short_reason(reason: str | None) -> str:
    """What went wrong without what to do about it: the reason up to its first semicolon."""
    return (reason or "").split(";")[0].strip().rstrip(".")


#: the LaTeX a study's tables need (a table of a dozen columns and more is scaled to the text width)
LATEX_PACKAGES = ("booktabs", "graphicx")


def to_latex_document(report: StudyReport) -> str:
    """Every table as a LaTeX ``table`` float with caption and label, each scaled down to the text
    width where it is wider (needs :data:`LATEX_PACKAGES`)."""
    name = study_name(report) or "study"
    needs = ", ".join(rf"\usepackage{{{p}}}" for p in LATEX_PACKAGES)
    parts = [f"% segbench {__version__}: the tables of study {name}, rendered from study.json.",
             rf"% Needs {needs}; each tabular is also in <dataset>-<table>.tex for \input.",
             ""]
    for table in study_tables(report):
        text = latex_escape(f"{table.title}. {caption(table, report)}")
        for note in table.notes:
            parts.append(f"% {note}")
        parts += [r"\begin{table}", r"\centering", r"\small", rf"\caption{{{text}}}",
                  rf"\label{{tab:{slug(table.dataset.name)}-{table.kind}}}",
                  r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
                  to_latex(table).rstrip() + "}", r"\end{table}", ""]
    return "\n".join(parts)


def slug(name: str) -> str:
    """A dataset name as a file name and LaTeX label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


# -- figures ------------------------------------------------------------------------------------------

MARKERS = "osD^vPXh<>p*"
FIGURE_RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
             "legend.title_fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8}


def _pyplot():
    from segbench.extras import require

    matplotlib = require("matplotlib", "the study's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.05)
    return path


def plot_pareto(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """PNG of :func:`pareto_figure`."""
    plt = _pyplot()
    with plt.rc_context(FIGURE_RC):
        fig = pareto_figure(dataset)
        path = _save(fig, Path(path))
    plt.close(fig)
    return path


def pareto_figure(dataset: Dataset):
    """mIoU (%) against p50 latency at batch 1 (log x): a marker per network, a colour per engine,
    the Pareto front as a step line and ringed points, legends beside the axes, and an accuracy axis
    that shows real differences only (:func:`segbench.bench.report.honest_limits`)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    networks = [n for n in ordered_networks(dataset) if n.engines]
    points = [(n, r, r.p50_ms, r.miou) for n in networks for r in n.engines if r.ok]
    points = [(n, r, x, 100 * y) for n, r, x, y in points if x and y is not None]
    marker = {n.name: MARKERS[i % len(MARKERS)] for i, n in enumerate(networks)}
    engines = list(dict.fromkeys(_engine_key(r) for _, r, _, _ in points))
    cmap = plt.get_cmap("tab10" if len(engines) <= 10 else "tab20")
    colour = {e: cmap(i % cmap.N) for i, e in enumerate(engines)}
    fig, ax = plt.subplots(figsize=(5.0, 3.3), dpi=200)  # with its legends, about a text width
    for n, r, x, y in points:
        front = r.study_pareto
        ax.scatter(x, y, s=46 if front else 36, marker=marker[n.name], c=[colour[_engine_key(r)]],
                   edgecolors="black" if front else "white", linewidths=1.3 if front else 0.6, zorder=3)
    front = sorted((x, y) for _, r, x, y in points if r.study_pareto)
    if len(front) > 1:
        ax.step(*zip(*front, strict=True), where="post", color="0.35", linestyle="--", linewidth=1,
                zorder=2)
    if points:
        ax.set_xscale("log")
        xs = [x for _, _, x, _ in points]
        subs = (1.0, 2.0, 5.0) if max(xs) / min(xs) >= 10 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))  # labelled ticks within a decade
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12)
        ax.set_ylim(*honest_limits([y for _, _, _, y in points]))
    else:
        ax.text(0.5, 0.5, "no engine measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("p50 latency per tile, batch 1 (ms, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{dataset.name}: accuracy against latency")
    ax.grid(True, which="major", alpha=0.3)
    nets = [Line2D([], [], marker=marker[n.name], linestyle="", color="0.3", markersize=6,
                   label=n.name) for n in networks]
    nets.append(Line2D([], [], marker="o", linestyle="--", color="0.35", markerfacecolor="white",
                       markeredgecolor="black", markeredgewidth=1.3, label="Pareto front"))
    engs = [Line2D([], [], marker="o", linestyle="", color=colour[e], markersize=6, label=e)
            for e in engines]
    _legends_beside(fig, ax, [("network", nets), ("engine", engs)])
    return fig


def _engine_key(row: EngineRow) -> str:
    return row.name + (f" @ {row.machine}" if row.machine else "")


def _legends_beside(fig, ax, groups: list[tuple[str, list]]) -> None:
    """Legends stacked top-down right of the axes, each placed under the one before."""
    from matplotlib.legend import Legend

    top = 1.0
    for title, handles in groups:
        if not handles:
            continue
        legend = Legend(ax, handles, [h.get_label() for h in handles], title=title, loc="upper left",
                        bbox_to_anchor=(1.02, top), borderaxespad=0.0, frameon=False, alignment="left")
        ax.add_artist(legend)
        legend.set_clip_on(False)  # add_artist clips to the axes: the saved figure would crop it off
        fig.canvas.draw()
        box = legend.get_window_extent().transformed(ax.transAxes.inverted())
        top = box.y0 - 0.04


def plot_iou(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """PNG heat map of per-class IoU (%): networks x classes and mIoU, values written in, NaN grey."""
    plt = _pyplot()
    import numpy as np

    classes = list(dataset.classes)
    excluded = set(dataset.excluded_classes)
    labels, grid = iou_grid(dataset)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    finite = grid[np.isfinite(grid)]
    low, high = ((math.floor(finite.min() / 10) * 10, math.ceil(finite.max() / 10) * 10)
                 if finite.size else (0, 100))
    high = max(high, low + 10)
    with plt.rc_context(FIGURE_RC):
        fig, ax = plt.subplots(figsize=(1.6 + 0.78 * grid.shape[1], 1.1 + 0.42 * grid.shape[0]), dpi=200)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, _cell_text(v), ha="center", va="center", fontsize=8,
                    color=_ink(cmap, (v - low) / (high - low)) if np.isfinite(v) else "0.35")
        ax.axvline(len(classes) - 0.5, color="white", linewidth=3)
        ax.set_xticks(range(grid.shape[1]),
                      [c + ("†" if c in excluded else "") for c in classes] + ["mIoU"],
                      rotation=30, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(labels)), labels)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        title = f"{dataset.name}: per-class IoU (%)"
        if excluded:
            title += f"\n† not in mIoU ({', '.join(sorted(excluded))})"
        ax.set_title(title)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("IoU (%)")
        bar.outline.set_visible(False)
        path = _save(fig, Path(path))
    plt.close(fig)
    return path


def iou_grid(dataset: Dataset):
    """Row labels and IoU (%) per network x (classes, mIoU), NaN where undefined (a row when none)."""
    import numpy as np

    networks = ordered_networks(dataset)
    if not networks:
        return ["(no networks yet)"], np.full((1, len(dataset.classes) + 1), np.nan)
    return [_network_label(n) for n in networks], grid_of(networks, dataset.classes)


def _cell_text(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.1f}"


def _ink(cmap, fraction: float) -> str:
    """Black on light cells, white on dark ones (by the colour's luminance)."""
    r, g, b, _ = cmap(min(max(fraction, 0.0), 1.0))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _network_label(network: Network) -> str:
    return network.name + ("" if network.ok else f" ({network.status})")
