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
from segbench.bench.rank import pareto_front
from segbench.bench.report import _g, _num, _p90, honest_limits
from segbench.files import atomic_output, write_text
from segbench.train.catalogue import ATTENTION, CNN, FAST, TRANSFORMER

FAMILIES = (CNN, ATTENTION, TRANSFORMER, FAST)  # the tables' order; other families follow
TABLE_KINDS = ("networks", "engines")
STUDY_RULE = ("Ranks and the Pareto front (*) are across every network's engines of the dataset; "
              "each engine qualifies against its own network's reference.")


# -- ranking ---------------------------------------------------------------------------------------

def rank_study(report: dict) -> dict:
    """Rank every (network, engine) row of each dataset together (in place); returns the report.

    A row qualifies as its own bench ranked it (against its network's
    reference); ``study_rank`` orders the qualified rows of a dataset by scene
    throughput (1 = fastest) and ``study_pareto`` marks the front of mIoU
    against p50 latency at batch 1 among all measured rows.
    """
    for dataset in report.get("datasets", []):
        rows = engine_rows(dataset)
        for row in rows:
            row["study_rank"], row["study_pareto"] = None, False
        ok = [r for r in rows if r.get("status") == "ok"]
        qualified = sorted((r for r in ok if r.get("qualified")),
                           key=lambda r: -(_g("scene", "megapixels_per_s")(r) or 0.0))
        for i, row in enumerate(qualified, 1):
            row["study_rank"] = i
        for row in pareto_front(ok):
            row["study_pareto"] = True
    return report


def engine_rows(dataset: dict) -> list[dict]:
    """Every engine row of every network of the dataset (the report's own dicts)."""
    return [r for n in dataset.get("networks", []) for r in n.get("engines") or []]


def ordered_networks(dataset: dict) -> list[dict]:
    """The dataset's networks grouped by family, in the paper's family order (stable within a family)."""
    def key(network: dict) -> tuple[int, str]:
        family = family_of(network)
        return (FAMILIES.index(family), "") if family in FAMILIES else (len(FAMILIES), family)

    return sorted(dataset.get("networks", []), key=key)


def family_of(network: dict) -> str:
    return network.get("family") or "other"


def merged_machines(report: dict) -> bool:
    """Whether the report's rows carry the machine they ran on (a merged study)."""
    return any(r.get("machine") for d in report.get("datasets", []) for r in engine_rows(d))


# -- one column definition serves the terminal, Markdown, CSV and LaTeX ---------------------------

@dataclass(frozen=True)
class Column:
    """A table column: its header, its CSV key, its figure (in the column's unit) and that figure as shown."""

    header: str
    key: str
    value: Callable[[dict], object]
    text: Callable[[dict], str]
    numeric: bool = True
    best: bool = False      # the highest figure of the table is emphasised
    latex: bool = True      # shown in the LaTeX table
    csv_only: bool = False  # only in the CSV (status, reason, units the text already shows)


def _figure(header: str, key: str, get: Callable[[dict], object], scale: float = 1.0,
            fmt: str = ".2f", best: bool = False, csv_only: bool = False, undefined: str = "") -> Column:
    """A figure column; ``undefined`` is shown for a row that ran but has no figure (NaN IoU)."""
    def value(row: dict) -> float | None:
        v = get(row)
        return v if v is None or scale == 1 else v * scale

    def text(row: dict) -> str:
        v = value(row)
        return undefined if v is None and row.get("status") == "ok" else _num(fmt)(v)

    return Column(header, key, value, text, best=best, csv_only=csv_only)


def _label(header: str, key: str, get: Callable[[dict], object], latex: bool = True,
           csv_only: bool = False) -> Column:
    return Column(header, key, get, lambda r: str(get(r) or ""), numeric=False, latex=latex,
                  csv_only=csv_only)


def _status_text(row: dict, ok_text: Callable[[dict], str]) -> str:
    """``ok_text(row)`` for a row that ran, else its status (skipped, failed, pending)."""
    return ok_text(row) if row.get("status") == "ok" else row.get("status") or ""


def best_tiles_per_s(row: dict) -> float | None:
    """Tiles per second at the best of the batch sizes tried (batch 1 or the tiler's batch)."""
    ms = [_g("latency", "batch1", "p50")(row), _g("latency", "per_tile_ms_at_batch")(row)]
    rates = [1000.0 / m for m in ms if m]
    return max(rates) if rates else None


def duration(seconds: float | None) -> str:
    """A training time as people say it: 42 s, 13.5 min, 2.3 h."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _uniform_tile(networks: list[dict]) -> int | None:
    tiles = {n.get("tile") for n in networks if n.get("tile")}
    return tiles.pop() if len(tiles) == 1 else None


def network_columns(dataset: dict) -> list[Column]:
    """The network table's columns: cost, per-class IoU, the class means, OA, training time."""
    excluded = set(dataset.get("excluded_classes") or [])
    tile = _uniform_tile(dataset.get("networks", []))
    cols = [
        _label("network", "network", _g("name")),
        _label("family", "family", family_of, latex=False),
        _label("source", "source", _g("source"), latex=False),
        _figure("params M", "params_m", _g("params"), 1e-6),
        _figure(f"GFLOPs @{tile}" if tile else "GFLOPs", "gflops", _g("gflops"), fmt=".1f"),
    ]
    if not tile:
        cols.append(Column("tile", "tile", _g("tile"), lambda r: str(r.get("tile") or "")))
    for name in dataset.get("classes", []):
        cols.append(_figure(name + ("†" if name in excluded else ""), f"iou_{name}_pct",
                            _g("accuracy", "per_class", name, "iou"), 100, best=True, undefined="n/a"))
    cols += [
        _figure("mIoU %", "miou_pct", _g("accuracy", "miou"), 100, best=True),
        _figure("mF1 %", "mf1_pct", _g("accuracy", "mf1"), 100, best=True),
        _figure("OA %", "oa_pct", _g("accuracy", "oa"), 100, best=True),
        Column("train", "train_s", _g("train_seconds"),
               lambda r: _status_text(r, lambda r: duration(r.get("train_seconds"))
                                      or ("imported" if r.get("source") == "imported" else ""))),
        _label("status", "status", _g("status"), csv_only=True),
        _label("reason", "reason", _g("reason"), csv_only=True),
    ]
    return cols


def _rank_text(row: dict) -> str:
    return _status_text(row, lambda r: str(r["study_rank"]) if r.get("study_rank") else "–")


def engine_columns(machines: bool) -> list[Column]:
    """The engine table's columns (a machine column when the study merges several machines)."""
    cols = [
        _label("network", "network", _g("network")),
        _label("family", "family", _g("family"), csv_only=True),
        _label("engine", "engine", _g("name")),
    ]
    if machines:
        cols.append(_label("machine", "machine", _g("machine")))
    cols += [
        _label("device", "device", _g("device")),
        _figure("p50 ms", "p50_ms", _g("latency", "batch1", "p50"), fmt=".1f"),
        Column("p90 ms", "p90_ms", _g("latency", "batch1", "p90"),
               lambda r: _p90(_g("latency", "batch1")(r))),
        _figure("n", "latency_n", _g("latency", "batch1", "n"), fmt="d", csv_only=True),
        _figure("tiles/s", "tiles_per_s", best_tiles_per_s, fmt=".1f"),
        _figure("MP/s", "megapixels_per_s", _g("scene", "megapixels_per_s")),
        _figure("km²/h", "km2_per_h", _g("scene", "km2_per_h"), fmt=".1f"),
        _figure("peak MiB", "peak_rss_mib", _g("memory", "peak_rss_bytes"), 2**-20, ".0f"),
        _figure("size MiB", "artifact_mib", _g("artifact_bytes"), 2**-20, ".1f"),
        _figure("mIoU %", "miou_pct", _g("accuracy", "miou"), 100, best=True),
        _figure("agree %", "agreement_pct", _g("accuracy", "agreement"), 100),
        Column("qualified", "qualified", _g("qualified"),
               lambda r: ("yes" if r.get("qualified") else "no") if r.get("status") == "ok" else "",
               numeric=False),
        Column("rank", "study_rank", _g("study_rank"), _rank_text),
        Column("Pareto", "study_pareto", _g("study_pareto"),
               lambda r: "*" if r.get("study_pareto") else "", numeric=False),
        _label("status", "status", _g("status"), csv_only=True),
        _label("reason", "reason", lambda r: r.get("reason") or r.get("rank_reason"), csv_only=True),
    ]
    return cols


# -- the tables -----------------------------------------------------------------------------------

@dataclass
class StudyTable:
    """One table of one dataset: its columns, rows (grouped by family) and notes."""

    kind: str
    dataset: dict
    columns: list[Column]
    rows: list[dict]
    groups: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def shown(self) -> list[Column]:
        return [c for c in self.columns if not c.csv_only]

    def best(self, column: Column) -> float | None:
        """The highest figure of a ``best`` column among rows that ran; None when all of them tie
        (a column where every network scores 0 has no best)."""
        values = [column.value(r) for r in self.rows if r.get("status") == "ok"]
        values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        if not column.best or len(set(values)) < 2:
            return None
        return max(values)

    def is_best(self, column: Column, row: dict) -> bool:
        best = self.best(column)
        return best is not None and row.get("status") == "ok" and column.value(row) == best

    def blocks(self) -> Iterator[tuple[str, list[dict]]]:
        """(family, rows) for each family, in order."""
        pairs = zip(self.groups, self.rows, strict=True)
        for family, group in itertools.groupby(pairs, key=lambda p: p[0]):
            yield family, [row for _, row in group]

    @property
    def title(self) -> str:
        d = self.dataset
        what = ("networks: cost and accuracy" if self.kind == "networks"
                else "engines: latency, throughput, memory and accuracy")
        return f"{d['name']} ({d.get('split') or '?'} split, {len(d.get('classes', []))} classes): {what}"


def network_table(dataset: dict) -> StudyTable:
    networks = ordered_networks(dataset)
    notes = _grouped((f"{n.get('status')}: {n.get('reason')}", n["name"]) for n in networks
                     if n.get("status") != "ok")
    excluded = dataset.get("excluded_classes") or []
    if excluded:
        notes.append(f"† {', '.join(excluded)}: left out of mIoU and mF1 (ISPRS); OA counts every class.")
    return StudyTable("networks", dataset, network_columns(dataset), networks,
                      [family_of(n) for n in networks], notes)


def engine_table(dataset: dict, machines: bool) -> StudyTable:
    rows, groups, notes = [], [], []  # notes: (what is said, of which row or network)
    for network in ordered_networks(dataset):
        family = family_of(network)
        for row in network.get("engines") or []:
            rows.append({**row, "network": network["name"], "family": family})
            groups.append(family)
            if what := _engine_note(row):
                where = f" on {row['machine']}" if row.get("machine") else ""
                notes.append((what, f"{network['name']} / {row.get('name')}{where}"))
        if not network.get("engines"):
            why = network.get("engines_reason") or (
                f"the network is {network.get('status')}" if network.get("status") != "ok"
                else "not benchmarked yet")
            notes.append((f"no engines: {why}", network["name"]))
    return StudyTable("engines", dataset, engine_columns(machines), rows, groups, _grouped(notes))


def _grouped(notes) -> list[str]:
    """One note per thing said, naming everything it is said of: "a, b: skipped: ..."."""
    said: dict[str, list[str]] = {}
    for what, of in notes:
        said.setdefault(what, []).append(of)
    return [f"{', '.join(names)}: {what}" for what, names in said.items()]


def _engine_note(row: dict) -> str | None:
    """Why a row has no figures, or why it is not ranked; None when there is nothing to say."""
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason')}"
    if not row.get("qualified") and row.get("rank_reason"):
        return f"not ranked: {row['rank_reason']}"
    return None


def study_tables(report: dict) -> list[StudyTable]:
    """Both tables of every dataset, in order."""
    machines = merged_machines(report)
    return [t for d in report.get("datasets", []) for t in (network_table(d), engine_table(d, machines))]


def caption(table: StudyTable, report: dict) -> str:
    """What the table shows, in words (the ranking rule for the engine table)."""
    if table.kind == "networks":
        tile = _uniform_tile(table.dataset.get("networks", []))
        per = f"per {tile}×{tile} tile" if tile else "per tile"
        return (f"Parameters, GFLOPs {per}, per-class IoU, mIoU, mean F1 and overall accuracy (%) "
                "of each network; the best figure of each column in bold.")
    return f"{report.get('rule', '')} {STUDY_RULE}".strip()


# -- terminal ---------------------------------------------------------------------------------------

def render_tables(report: dict) -> list:
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

def to_markdown(report: dict) -> str:
    """Every table as Markdown: a section per dataset, the ranking rule and notes under each table."""
    name = (report.get("study") or {}).get("name") or "study"
    lines = [f"# segbench study: {name}", ""]
    for table in study_tables(report):
        if table.kind == "networks":
            lines += [f"## {table.dataset['name']}", ""]
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

def to_csv(report: dict, kind: str) -> str:
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
            values = {"dataset": table.dataset["name"], **{c.key: c.value(row) for c in table.columns}}
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
            lines.append(_latex_row(table, cols, row, repeat=row.get("network") != previous) + r" \\")
            previous = row.get("network")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_row(table: StudyTable, cols: list[Column], row: dict, repeat: bool) -> str:
    """One row's cells; a row that did not run spans its figures with its status and reason."""
    cells = []
    for c in cols:
        text = latex_escape(c.text(row))
        if c.key == "network" and table.kind == "engines" and not repeat:
            text = ""  # the network is named on its first engine's row
        cells.append(rf"\textbf{{{text}}}" if table.is_best(c, row) else text)
    if row.get("status") == "ok":
        return " & ".join(cells)
    first = next((i for i, c in enumerate(cols) if c.numeric), len(cols) - 1)
    why = row.get("status") or ""
    if row.get("reason"):
        why += f": {short_reason(row['reason'])}"
    span = rf"\multicolumn{{{len(cols) - first}}}{{l}}{{\emph{{{latex_escape(why)}}}}}"
    return " & ".join(cells[:first] + [span])


def short_reason(reason: str | None) -> str:
    """What went wrong without what to do about it: the reason up to its first semicolon."""
    return (reason or "").split(";")[0].strip().rstrip(".")


def to_latex_document(report: dict) -> str:
    """Every table as a LaTeX ``table`` float with caption and label (needs booktabs)."""
    name = (report.get("study") or {}).get("name") or "study"
    parts = [f"% segbench {__version__}: the tables of study {name}, rendered from study.json.",
             r"% Needs \usepackage{booktabs}; each tabular is also in <dataset>-<table>.tex for \input.",
             ""]
    for table in study_tables(report):
        text = latex_escape(f"{table.title}. {caption(table, report)}")
        for note in table.notes:
            parts.append(f"% {note}")
        parts += [r"\begin{table}", r"\centering", r"\small", rf"\caption{{{text}}}",
                  rf"\label{{tab:{slug(table.dataset['name'])}-{table.kind}}}", to_latex(table).rstrip(),
                  r"\end{table}", ""]
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


def plot_pareto(dataset: dict, path: str | os.PathLike[str]) -> Path:
    """PNG of :func:`pareto_figure`."""
    plt = _pyplot()
    with plt.rc_context(FIGURE_RC):
        fig = pareto_figure(dataset)
        path = _save(fig, Path(path))
    plt.close(fig)
    return path


def pareto_figure(dataset: dict):
    """mIoU (%) against p50 latency at batch 1 (log x): a marker per network, a colour per engine,
    the Pareto front as a step line and ringed points, legends beside the axes, and an accuracy axis
    that shows real differences only (:func:`segbench.bench.report.honest_limits`)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    networks = [n for n in ordered_networks(dataset) if n.get("engines")]
    points = [(n, r, _g("latency", "batch1", "p50")(r), _g("accuracy", "miou")(r))
              for n in networks for r in n["engines"] if r.get("status") == "ok"]
    points = [(n, r, x, 100 * y) for n, r, x, y in points if x and y is not None]
    marker = {n["name"]: MARKERS[i % len(MARKERS)] for i, n in enumerate(networks)}
    engines = list(dict.fromkeys(_engine_key(r) for _, r, _, _ in points))
    cmap = plt.get_cmap("tab10" if len(engines) <= 10 else "tab20")
    colour = {e: cmap(i % cmap.N) for i, e in enumerate(engines)}
    fig, ax = plt.subplots(figsize=(5.0, 3.3), dpi=200)  # with its legends, about a text width
    for n, r, x, y in points:
        front = bool(r.get("study_pareto"))
        ax.scatter(x, y, s=46 if front else 36, marker=marker[n["name"]], c=[colour[_engine_key(r)]],
                   edgecolors="black" if front else "white", linewidths=1.3 if front else 0.6, zorder=3)
    front = sorted((x, y) for _, r, x, y in points if r.get("study_pareto"))
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
    ax.set_title(f"{dataset['name']}: accuracy against latency")
    ax.grid(True, which="major", alpha=0.3)
    nets = [Line2D([], [], marker=marker[n["name"]], linestyle="", color="0.3", markersize=6,
                   label=n["name"]) for n in networks]
    nets.append(Line2D([], [], marker="o", linestyle="--", color="0.35", markerfacecolor="white",
                       markeredgecolor="black", markeredgewidth=1.3, label="Pareto front"))
    engs = [Line2D([], [], marker="o", linestyle="", color=colour[e], markersize=6, label=e)
            for e in engines]
    _legends_beside(fig, ax, [("network", nets), ("engine", engs)])
    return fig


def _engine_key(row: dict) -> str:
    return row["name"] + (f" @ {row['machine']}" if row.get("machine") else "")


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


def plot_iou(dataset: dict, path: str | os.PathLike[str]) -> Path:
    """PNG heat map of per-class IoU (%): networks x classes and mIoU, values written in, NaN grey."""
    plt = _pyplot()
    import numpy as np

    classes = list(dataset.get("classes", []))
    excluded = set(dataset.get("excluded_classes") or [])
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
        title = f"{dataset['name']}: per-class IoU (%)"
        if excluded:
            title += f"\n† not in mIoU ({', '.join(sorted(excluded))})"
        ax.set_title(title)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("IoU (%)")
        bar.outline.set_visible(False)
        path = _save(fig, Path(path))
    plt.close(fig)
    return path


def iou_grid(dataset: dict):
    """Row labels and IoU (%) per network x (classes, mIoU), NaN where undefined (a row when none)."""
    import numpy as np

    networks = ordered_networks(dataset)
    getters = [_g("accuracy", "per_class", c, "iou") for c in dataset.get("classes", [])]
    getters.append(_g("accuracy", "miou"))
    grid = np.array([[np.nan if (v := get(n)) is None else 100 * v for get in getters] for n in networks],
                    dtype=float).reshape(len(networks), len(getters))
    if not networks:
        return ["(no networks yet)"], np.full((1, len(getters)), np.nan)
    return [_network_label(n) for n in networks], grid


def _cell_text(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.1f}"


def _ink(cmap, fraction: float) -> str:
    """Black on light cells, white on dark ones (by the colour's luminance)."""
    r, g, b, _ = cmap(min(max(fraction, 0.0), 1.0))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _network_label(network: dict) -> str:
    status = network.get("status")
    return network["name"] + ("" if status == "ok" else f" ({status})")


# -- all of it ------------------------------------------------------------------------------------------

def write_study(report: dict, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write study.md, study-networks.csv, study-engines.csv, study.tex, one tabular per table
    (<dataset>-networks.tex, <dataset>-engines.tex), each dataset's Pareto plot and IoU heat map,
    and study.html (:mod:`segbench.study.page`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"study.md": to_markdown(report), "study.tex": to_latex_document(report)}
    texts.update({f"study-{kind}.csv": to_csv(report, kind) for kind in TABLE_KINDS})
    texts.update({f"{slug(t.dataset['name'])}-{t.kind}.tex": to_latex(t) for t in study_tables(report)})
    paths = [write_text(out / name, text) for name, text in texts.items()]
    for dataset in report.get("datasets", []):
        paths.append(plot_pareto(dataset, out / f"{slug(dataset['name'])}-pareto.png"))
        paths.append(plot_iou(dataset, out / f"{slug(dataset['name'])}-iou.png"))
    from segbench.study.page import study_page

    paths.append(write_text(out / "study.html", study_page(report)))
    return paths

