"""The bench report: JSON is the source of truth; the table, Markdown, CSV and plot render it.

A report holds the machine (CPU, cores, memory, GPU, library versions), the
configuration, the model, one row per engine and the ranking rule. Reports of
one model from several machines merge into one, ranked once, each row
labelled with its machine, so a GPU box and a CPU box compare side by side.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import importlib
import io
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from segbench import __version__
from segbench.bench.latency import P90_MIN_SAMPLES
from segbench.bench.rank import RankRule, rank
from segbench.errors import InputError
from segbench.export.qualify import describe_fp16, describe_int8
from segbench.files import atomic_output, write_text
from segbench.machine import cpu_model, nvidia_driver

LIBRARIES = ("numpy", "onnxruntime", "openvino", "torch", "tensorrt", "tensorrt_rtx_bindings",
             "rasterio", "mmseg")


def console():
    """A rich console; wide enough for the table when output is not a terminal."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def machine_info() -> dict:
    """What ran the bench: CPU model, cores, memory, GPU and driver, library versions."""
    info = {
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
        "libraries": {},
    }
    for name in LIBRARIES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001  (absent or broken: not part of this machine's stack)
            continue
        info["libraries"][name] = str(getattr(module, "__version__", "?"))
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = {"name": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                           "driver": nvidia_driver(),
                           "memory_bytes": torch.cuda.get_device_properties(0).total_memory}
    except ImportError:
        pass
    return info


def machine_label(machine: dict) -> str:
    """A short label for a machine: its GPU if any, else its CPU, and the host name."""
    gpu = machine.get("gpu")
    what = gpu["name"] if gpu else f"{machine.get('cpu', 'CPU')} x{machine.get('cores', '?')}"
    return f"{machine.get('hostname', '?')} ({what})"


def new_report(config: dict, rule_text: str) -> dict:
    machine = machine_info()
    return {
        "segbench": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "rule": rule_text,
        "engines": [],
    }


def write_json(report: dict, path: str | os.PathLike[str]) -> Path:
    """Write the report atomically (an interrupted bench keeps the last complete report)."""
    return write_text(path, json.dumps(report, indent=2, default=str) + "\n")


def read_json_report(path: str | os.PathLike[str]) -> object:
    """The JSON in ``path``; one sentence when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"Report {path} does not exist.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"Report {path} is not valid JSON ({exc}).") from exc


def load_report(path: str | os.PathLike[str]) -> dict:
    report = read_json_report(path)
    if not isinstance(report, dict) or "engines" not in report:
        raise InputError(f"{path} is not a segbench bench report.")
    return report


# What makes two reports comparable: the same model, classes, bands and tile.
MODEL_KEYS = ("architecture", "checkpoint_digest", "classes", "class_names", "bands", "tile")


def rank_report(report: dict) -> dict:
    """Rank the report's rows (in place) by the report's own rule; returns the report."""
    rule = RankRule.from_report(report)
    rank(report["engines"], rule)
    report["ranking"], report["rule"] = rule.to_dict(), rule.text()
    return report


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report, ranked once, whose rows carry the machine and model they ran on.

    Reports (merged ones too) must be of one model and class set. The merged
    rows are ranked by the first report's rule, on one rank order and one
    Pareto front; the reports given are not changed.
    """
    if len(reports) == 1:
        return reports[0]
    for other in reports[1:]:
        _check_comparable(reports[0], other)
    first = reports[0]
    merged = {
        **merged_provenance(reports),
        "model": first.get("model"),
        "config": first.get("config", {}),
        "ranking": RankRule.from_report(first).to_dict(),
        "engines": [row for r in reports for row in _labelled_rows(r)],
    }
    return rank_report(merged)


def merged_provenance(reports: Sequence[dict]) -> dict:
    """What a merge of ``reports`` (merged ones too) starts with: version, time, machines, sources."""
    return {
        "segbench": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machines": [m for r in reports for m in r.get("machines") or [r.get("machine", {})]],
        "merged_from": [c for r in reports for c in r.get("merged_from") or [r.get("created")]],
    }


def machine_rows(report: dict, rows: list[dict]) -> list[dict]:
    """Copies of ``rows``, each with ``report``'s machine (rows of a merged report keep theirs)."""
    machine = machine_label(report["machine"]) if "machine" in report else None
    rows = copy.deepcopy(rows)
    for row in rows:
        row.setdefault("machine", machine)
    return rows


def _labelled_rows(report: dict) -> list[dict]:
    """Copies of the report's rows, each with its machine and model (rows of a merged report keep theirs)."""
    model = (report.get("model") or {}).get("architecture")
    rows = machine_rows(report, report["engines"])
    for row in rows:
        row.setdefault("model", model)
    return rows


def report_label(report: dict) -> str:
    """The report (or study) in words, for messages: its machine, or how many machines it merges."""
    kind = "study" if report.get("kind") == "study" else "report"
    if "machine" in report:
        return f"{kind} from {machine_label(report['machine'])}"
    return f"merged {kind} of {len(report.get('machines', []))} machines"


def _check_comparable(a: dict, b: dict) -> None:
    """Refuse, in one sentence, to merge reports of different models or class sets."""
    ma, mb = a.get("model"), b.get("model")
    if not ma or not mb:
        raise InputError(f"The {report_label(a if not ma else b)} does not say which model it "
                         "measured; re-run 'segbench bench' to merge it.")
    for key in MODEL_KEYS:
        va, vb = ma.get(key), mb.get(key)
        if va is not None and vb is not None and va != vb:
            raise InputError(
                f"The {report_label(a)} and the {report_label(b)} are of different models "
                f"({key} {va!r} against {vb!r}); merge only reports of one model and class set."
            )


# -- one column definition serves the table, Markdown and CSV -----------------------------
def _g(*path: str) -> Callable[[dict], object]:
    def get(row: dict):
        for key in path:
            if not isinstance(row, dict):
                return None
            row = row.get(key)
        return row
    return get


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _num(fmt: str) -> Callable[[object], str]:
    return lambda v: "" if v is None else format(v, fmt)


def _mib(v) -> str:
    return "" if v is None else f"{v / 2**20:.0f}"


def _p90(latency) -> str:
    """p90 with its sample count; never a figure from fewer samples than its minimum."""
    if not isinstance(latency, dict) or latency.get("n") is None:
        return ""
    n, p90 = latency["n"], latency.get("p90")
    if p90 is None or n < P90_MIN_SAMPLES:
        return f"not stated (n={n} < {P90_MIN_SAMPLES})"
    return f"{p90:.1f} (n={n})"


def _seam(seam: dict | None) -> str:
    """``2.1 / 0.8``: the error rate in the seam band and elsewhere (percent)."""
    if not seam or seam.get("error_in_band") is None:
        return ""
    return f"{100 * seam['error_in_band']:.1f} / {100 * seam['error_elsewhere']:.1f}"


def _rank(row: dict) -> str:
    mark = "*" if row.get("pareto") else ""
    if row.get("status") != "ok":
        return row.get("status", "")
    return f"{row['rank']}{mark}" if row.get("rank") else f"-{mark}"


COLUMNS: list[tuple[str, Callable[[dict], object], Callable[[object], str]]] = [
    ("engine", _g("name"), str),
    ("device", _g("device"), lambda v: v or ""),
    # what ran: "int8 (2 fp32)" for an int8 engine with two layers kept in float
    ("precision", lambda r: r.get("precision_label") or r.get("precision"), lambda v: v or ""),
    ("mIoU %", _g("accuracy", "miou"), _pct),
    ("OA %", _g("accuracy", "oa"), _pct),
    ("agree %", _g("accuracy", "agreement"), _pct),
    # the pixels whose label differs from the reference engine's (bench.disagreement)
    ("differ %", _g("disagreement", "share"), _pct),
    # the error against the ground truth within a few pixels of the window borders, and elsewhere
    ("seam err %", _g("disagreement", "seam"), lambda v: _seam(v)),
    ("p50 ms", _g("latency", "batch1", "p50"), _num(".1f")),
    ("p90 ms", _g("latency", "batch1"), _p90),
    ("MP/s", _g("scene", "megapixels_per_s"), _num(".2f")),
    ("peak MiB", _g("memory", "peak_rss_bytes"), _mib),
    # the process's peak GPU allocation (torch's allocator); shown when some engine ran on a GPU
    ("GPU MiB", _g("memory", "gpu", "peak_allocated_bytes"), _mib),
    ("size MiB", _g("artifact_bytes"), lambda v: "" if v is None else f"{v / 2**20:.1f}"),
    ("rank", lambda r: r, _rank),
]


#: columns shown only where some engine has a value (a GPU; a reference to differ from; labels)
OPTIONAL_COLUMNS = ("GPU MiB", "differ %", "seam err %")


def _has_machines(report: dict) -> bool:
    return any("machine" in r for r in report["engines"])


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, one row per engine (machine column when merged; the optional
    columns where some engine has a value)."""
    columns = [c for c in COLUMNS if c[0] not in OPTIONAL_COLUMNS
               or any(c[2](c[1](r)) for r in report["engines"])]
    header = [c[0] for c in columns]
    rows = [[fmt(get(r)) for _, get, fmt in columns] for r in report["engines"]]
    if _has_machines(report):
        header.insert(1, "machine")
        for row, r in zip(rows, report["engines"], strict=True):
            row.insert(1, r.get("machine", ""))
    return header, rows


def render_table(report: dict):
    """A rich Table of the report, with the ranking rule as its caption."""
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(title="segbench: accuracy, latency and memory per engine" + _model_line(report),
                  caption=report.get("rule", ""), caption_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name in ("engine", "device", "machine", "precision")
                         else "right")
    for row in rows:
        table.add_row(*row)
    skipped = [r for r in report["engines"] if r.get("status") != "ok"]
    for r in skipped:
        table.caption += f"\n{r['name']}: {r.get('status')}: {r.get('reason')}"
    return table


def _model_line(report: dict) -> str:
    """The source model in one line: architecture, size, parameters and GFLOPs."""
    m = report.get("model")
    if not m:
        return ""
    cost = ""
    if m.get("params"):
        cost += f", {m['params'] / 1e6:.2f} M params"
    if m.get("gflops"):
        cost += f", {m['gflops']:.1f} GFLOPs/tile"
    return f"\n{m['architecture']} ({m['bands']} bands, {m['tile']}x{m['tile']} tiles{cost})"


def to_markdown(report: dict) -> str:
    header, rows = table_rows(report)
    lines = [f"Model: {_model_line(report).strip()}", ""] if report.get("model") else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [f"- {r['name']}: {r.get('status')}: {r.get('reason')}"
             for r in report["engines"] if r.get("status") != "ok"]
    reduced = [f"- {r['name']}: " + "; ".join(x.strip() for x in precision_lines(r))
               for r in report["engines"] if precision_lines(r)]
    return "\n".join(lines + ["", report.get("rule", "")] + ([""] + notes if notes else [])
                     + (["", "int8 and fp16 engines:", *reduced] if reduced else [])) + "\n"


def precision_lines(row: dict) -> list[str]:
    """What an int8 engine's search did, or what an fp16 graph kept in float32 (none for others)."""
    if row.get("int8"):
        return describe_int8(row["int8"])
    return describe_fp16(row["fp16"]) if row.get("fp16") else []


def to_csv(report: dict) -> str:
    header, rows = table_rows(report)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


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


def latency_accuracy_figure(report: dict):
    """A matplotlib figure of p50 tile latency (log x) against mIoU, one point per engine, the Pareto
    front drawn, the accuracy axis honest (:func:`honest_limits`, the reference always in range)."""
    from segbench.extras import require

    matplotlib = require("matplotlib", "the report's latency-accuracy plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    pts = [(r, _g("latency", "batch1", "p50")(r), _g("accuracy", "miou")(r))
           for r in report["engines"] if r.get("status") == "ok"]
    pts = [(r, x, 100 * y) for r, x, y in pts if x is not None and y is not None]
    named = (report.get("ranking") or {}).get("reference")
    reference = next((y for r, _, y in pts if r["name"] == named), None)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    markers = "osD^vP<>Xh"
    for i, (r, x, y) in enumerate(pts):
        label = r["name"] + (f" [{r['machine']}]" if "machine" in r else "")
        if r.get("pareto"):
            label += " *"
        ax.scatter(x, y, s=50, zorder=3, marker=markers[i % len(markers)], label=label)
    front = sorted((x, y) for r, x, y in pts if r.get("pareto"))
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


def plot(report: dict, path: str | os.PathLike[str]) -> Path:
    """PNG of :func:`latency_accuracy_figure`."""
    import matplotlib.pyplot as plt

    fig = latency_accuracy_figure(report)
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_all(report: dict, out_dir: str | os.PathLike[str], stem: str = "report") -> list[Path]:
    """The JSON report and its Markdown, CSV, PNG and HTML renderings in ``out_dir``."""
    from segbench.bench.page import bench_page

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_json(report, out_dir / f"{stem}.json")]
    for suffix, text in ((".md", to_markdown(report)), (".csv", to_csv(report))):
        paths.append(write_text(out_dir / f"{stem}{suffix}", text))
    paths.append(plot(report, out_dir / f"{stem}.png"))
    paths.append(write_text(out_dir / f"{stem}.html", bench_page(report)))
    return paths
