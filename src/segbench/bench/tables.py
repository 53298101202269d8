"""The bench report as tables: the terminal (rich), Markdown and CSV, from one list of columns."""

from __future__ import annotations

import csv
import io

from segbench.bench import columns as c
from segbench.bench.columns import Column
from segbench.bench.model import EngineRow, Report
from segbench.export.qualify import describe_fp16, describe_int8


def rank_text(row: EngineRow) -> str:
    """``1*``: the row's rank (``-`` unranked), ``*`` on the Pareto front; the status of a row that
    did not run."""
    mark = "*" if row.pareto else ""
    if not row.ok:
        return row.status
    return f"{row.rank}{mark}" if row.rank else f"-{mark}"


RANK = Column("rank", "rank", lambda r: r.rank, rank_text)

#: the bench's table, in order (optional columns shown where some engine has a value)
COLUMNS: list[Column] = [c.ENGINE, c.DEVICE, c.PRECISION, c.MIOU, c.OA, c.AGREE, c.DIFFER, c.SEAM, c.P50,
                         c.P90, c.MP_S, c.SINGLE_STREAM, c.MULTI_STREAM, c.SERVER, c.OFFLINE, c.KM2_H_OPT,
                         c.OFFLINE_KM2_H, c.USD, c.ENERGY, c.PEAK, c.GPU, c.SIZE, RANK]

LEFT = ("engine", "device", "machine", "precision")


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, one row per engine (machine column when merged; the optional
    columns where some engine has a value)."""
    shown = [col for col in COLUMNS if not col.optional or any(col.text(r) for r in report.engines)]
    header = [col.header for col in shown]
    rows = [[col.text(r) for col in shown] for r in report.engines]
    if report.has_machines:
        header.insert(1, "machine")
        for row, r in zip(rows, report.engines, strict=True):
            row.insert(1, r.machine or "")
    return header, rows


def render_table(report: Report):
    """A rich Table of the report, with the ranking rule as its caption."""
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(title="segbench: accuracy, latency and memory per engine" + model_line(report),
                  caption=report.rule, caption_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name in LEFT else "right")
    for row in rows:
        table.add_row(*row)
    for r in report.engines:
        if not r.ok:
            table.caption += f"\n{r.name}: {r.status}: {r.reason}"
    return table


def model_line(report: Report) -> str:
    """The source model in one line (after a line break), or nothing."""
    return f"\n{report.model.line}" if report.model else ""


def notes(report: Report) -> list[str]:
    """Why each engine that did not run did not."""
    return [f"{r.name}: {r.status}: {r.reason}" for r in report.engines if not r.ok]


def to_markdown(report: Report) -> str:
    header, rows = table_rows(report)
    lines = [f"Model: {report.model.line}", ""] if report.model else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    said = [f"- {n}" for n in notes(report)]
    reduced = [f"- {r.name}: " + "; ".join(x.strip() for x in precision_lines(r))
               for r in report.engines if precision_lines(r)]
    return "\n".join(lines + ["", report.rule] + ([""] + said if said else [])
                     + (["", "int8 and fp16 engines:", *reduced] if reduced else [])) + "\n"


def precision_lines(row: EngineRow) -> list[str]:
    """What an int8 engine's search did, or what an fp16 graph kept in float32 (none for others)."""
    if row.int8:
        return describe_int8(row.int8)
    return describe_fp16(row.fp16) if row.fp16 else []


def to_csv(report: Report) -> str:
    header, rows = table_rows(report)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
