"""``report.html``: one self-contained page a person opens in any browser (and the pieces of
``study.html``, :mod:`segbench.study.page`).

No network and no CDN: the figures are inline SVG drawn by matplotlib (the
latency-accuracy plot with the honest accuracy axis of
:func:`segbench.bench.report.honest_limits`, per-class IoU as a heat map),
the thumbnails inline PNG read from the COGs' overviews (the scene, each
engine's labels, its disagreement map), the styles inline, and the one script
a few lines that sort a table by the column clicked. A merged or a single
report renders alike.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segbench.bench.figures import latency_accuracy_figure, pyplot, server_latency_figure
from segbench.bench.model import EngineRow, Machine, Report
from segbench.bench.tables import model_line, notes, precision_lines, table_rows

#: the longest side of a thumbnail, in pixels
THUMBNAIL = 240

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a; margin: 2em auto;
       max-width: 1180px; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 2em;
  border-bottom: 1px solid #d8dde3; padding-bottom: .2em; } h3 { font-size: 1.05em; margin-top: 1.4em; }
.muted { color: #5b6670; } .wide { overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { padding: .3em .65em; border-bottom: 1px solid #e3e7eb; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; cursor: pointer; user-select: none; position: sticky; top: 0; }
th:first-child, td:first-child, td.text { text-align: left; }
th.sorted-asc::after { content: " \\25B2"; font-size: .7em; }
th.sorted-desc::after { content: " \\25BC"; font-size: .7em; }
tr:hover td { background: #f7f9fb; } .figure { margin: 1em 0; } .figure svg { max-width: 100%; height: auto; }
.thumbs { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
.thumbs figure { margin: 0; } .thumbs img { image-rendering: pixelated; border: 1px solid #d8dde3; }
figcaption { font-size: 12px; color: #5b6670; max-width: 260px; } .legend span { display: inline-block;
  margin-right: .9em; font-size: 12px; } .legend i { display: inline-block; width: .9em; height: .9em;
  margin-right: .3em; vertical-align: -1px; border: 1px solid #9aa4ad; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; font-size: 13px; }
dt { color: #5b6670; }
"""

# Sort a table by the column clicked: numbers as numbers (the leading number of a cell), text as text.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var text = row.cells[column].textContent.trim(), number = parseFloat(text);
        return isNaN(number) ? text.toLowerCase() : number;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return x === "" ? 1 : -1; }
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def bench_page(report: Report) -> str:
    """The page of a bench report (or a merged one)."""
    header, rows = table_rows(report)
    parts = ["<h1>segbench: accuracy, latency and memory per engine</h1>",
             f"<p class=muted>{esc(model_line(report).strip())}</p>",
             "<h2>Ranking</h2>", table(header, rows), f"<p class=muted>{esc(report.rule)}</p>"]
    if said := notes(report):
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in said) + "</ul>")
    parts += ["<h2>Latency against accuracy</h2>", figure(latency_accuracy_figure(report))]
    if (load := server_latency_figure(report)) is not None:
        parts += ["<h2>Latency under load (LoadGen Server)</h2>", figure(load)]
    classes = report.model.class_names if report.model else []
    if (heat := iou_figure(_engine_iou(report), classes, "per-class IoU (%) by engine")) is not None:
        parts += ["<h2>Per-class IoU</h2>", heat]
    parts += _int8_section(report)
    parts += _thumbnails(report)
    parts += ["<h2>Machine</h2>", machine(report.machine, report.segbench)]
    return page("segbench report", parts)


# -- pieces ----------------------------------------------------------------------------------------------

def page(title: str, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{_SCRIPT}</script>\n</body></html>\n")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if _texty(c) else ''}>{esc(c)}</td>" for c in row)
                   + "</tr>" for row in rows)
    return (f"<div class=wide><table class=sortable><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")  # a table wider than the page scrolls on its own


def _texty(cell: str) -> bool:
    try:
        float(str(cell).split()[0].rstrip("*%x"))
        return False
    except (ValueError, IndexError):
        return bool(cell)


def figure(fig) -> str:
    """A matplotlib figure as inline SVG (then closed)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return f"<div class=figure>{svg[svg.index('<svg'):]}</div>"


def _engine_iou(report: Report) -> tuple[list[str], np.ndarray] | None:
    classes = report.model.class_names if report.model else []
    rows = [r for r in report.ok_rows if r.accuracy and r.accuracy.per_class]
    if not rows or not classes:
        return None
    return [r.label for r in rows], iou_grid(rows, classes)


def iou_grid(rows: Sequence, classes: Sequence[str]) -> np.ndarray:
    """IoU (%) of each row (an engine, or a network of a study) x (classes, mIoU), NaN where undefined."""
    def pct(value: float | None) -> float:
        return math.nan if value is None else 100 * value

    def iou(accuracy, name: str) -> float | None:
        found = accuracy.per_class.get(name) if accuracy else None
        return found.iou if found else None

    return np.array([[pct(iou(r.accuracy, c)) for c in classes] + [pct(r.accuracy and r.accuracy.miou)]
                     for r in rows], float).reshape(len(rows), len(classes) + 1)


def iou_figure(data, classes: list[str], title: str) -> str | None:
    """A heat map of IoU (%) rows x (classes, mIoU), values written in; None without data."""
    if data is None:
        return None
    labels, grid = data
    if not np.isfinite(grid).any():
        return None
    plt = pyplot("the report page")
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    finite = grid[np.isfinite(grid)]
    low, high = math.floor(finite.min() / 10) * 10, math.ceil(finite.max() / 10) * 10
    high = max(high, low + 10)
    fig, ax = plt.subplots(figsize=(1.8 + 0.8 * grid.shape[1], 1.0 + 0.42 * grid.shape[0]), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        shade = cmap((v - low) / (high - low)) if np.isfinite(v) else (0.85, 0.85, 0.85, 1)
        ink = "black" if 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.5 else "white"
        ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.1f}", ha="center", va="center", fontsize=8,
                color=ink)
    ax.set_xticks(range(grid.shape[1]), [*classes, "mIoU"], rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(labels)), labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).outline.set_visible(False)
    return figure(fig)


def _int8_section(report: Report) -> list[str]:
    """What each int8 engine's search did and each fp16 graph kept in float32, with the layers that
    reduced precision hurts most where they were explained."""
    rows = [r for r in report.engines if precision_lines(r)]
    if not rows:
        return []
    parts = ["<h2>int8 and fp16 engines</h2>"]
    for r in rows:
        items = "".join(f"<li>{esc(x)}</li>" for x in precision_lines(r))
        parts.append(f"<h3>{esc(r.name)}</h3><ul>{items}</ul>")
    return parts


def _thumbnails(report: Report) -> list[str]:
    """For each scene, the scene, and each engine's labels and disagreement map, side by side."""
    from segbench.bench.disagreement import AGREE_COLOUR

    scenes = report.config.scenes
    palette = report.model.palette if report.model else None
    classes = report.model.class_names if report.model else []
    if not scenes:
        return []
    parts = ["<h2>Scenes</h2>"]
    if classes and palette:
        keys = "".join(f"<span><i style='background:rgb{tuple(c)}'></i>{esc(n)}</span>"
                       for n, c in zip(classes, palette, strict=False))
        parts.append(f"<p class=legend>{keys}<span><i style='background:rgb{AGREE_COLOUR}'></i>"
                     "agrees with the reference</span></p>")
    for i, scene in enumerate(scenes):
        figures = [_thumb(_scene_rgb(scene), Path(scene).name)]
        for r in report.ok_rows:
            if i < len(r.outputs):
                figures += _engine_thumbs(r, r.outputs[i], palette)
        shown = "".join(f for f in figures if f)
        parts.append(f"<h3>{esc(Path(scene).name)}</h3><div class=thumbs>{shown}</div>")
    return parts


def _engine_thumbs(row: EngineRow, labels: str, palette) -> list[str]:
    """An engine's labels of one scene and, where it was written, its disagreement map."""
    from segbench.bench.disagreement import AGREE_COLOUR, map_path

    figures = [_thumb(_paletted(labels, palette), f"{row.name}: labels")]
    differ = map_path(labels)
    if Path(differ).is_file():
        share = row.disagreement.share if row.disagreement else None
        note = f" ({100 * share:.2f}% of pixels)" if share is not None else ""
        figures.append(_thumb(_paletted(differ, [AGREE_COLOUR, *(palette or [])]),
                              f"{row.name}: where it differs from the reference{note}"))
    return figures


def _thumb(image: np.ndarray | None, caption: str) -> str:
    if image is None:
        return ""
    from segbench.extras import require

    require("matplotlib", "the report page")
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, image, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}' width={image.shape[1]} "
            f"height={image.shape[0]}><figcaption>{esc(caption)}</figcaption></figure>")


def _small(path: str | os.PathLike[str], bands: Sequence[int]) -> np.ndarray | None:
    """``bands`` of the raster at ``path`` read at most :data:`THUMBNAIL` pixels a side (GDAL picks the
    overview), nearest; None where it cannot be read."""
    import rasterio
    from rasterio.enums import Resampling

    try:
        with rasterio.open(path) as ds:
            scale = max(ds.width, ds.height) / THUMBNAIL
            shape = (max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1))))
            return ds.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
    except (rasterio.errors.RasterioIOError, OSError, IndexError):
        return None


def _scene_rgb(path: str) -> np.ndarray | None:
    """The scene's first three bands (or its one, grey), stretched between the 2nd and 98th percentiles."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            count = ds.count
    except (rasterio.errors.RasterioIOError, OSError):
        return None
    pixels = _small(path, [1, 2, 3] if count >= 3 else [1, 1, 1])
    if pixels is None:
        return None
    x = pixels.astype(np.float32)
    low, high = np.percentile(x, 2), np.percentile(x, 98)
    x = np.clip((x - low) / max(high - low, 1e-6), 0, 1)
    return np.moveaxis(x, 0, -1)


def _paletted(path: str, palette: Sequence[Sequence[int]] | None) -> np.ndarray | None:
    """A uint8 label-like raster coloured by ``palette`` (nodata transparent)."""
    values = _small(path, [1])
    if values is None:
        return None
    values = values[0]
    colours = np.zeros((256, 4), np.uint8)
    for i, c in enumerate(palette or []):
        colours[i] = (*c[:3], 255)
    if not palette:
        colours[:255, :3] = np.arange(255)[:, None]
        colours[:255, 3] = 255
    return colours[values]


def machine(m: Machine | None, segbench: str | None = None) -> str:
    """The machine (and the segbench that ran on it) as a definition list."""
    rows: list[tuple[str, object]] = []
    if m is not None:
        rows += [("host", m.hostname), ("CPU", f"{m.cpu} ({m.cores} cores)"),
                 ("memory", f"{(m.memory_bytes or 0) / 2**30:.1f} GiB"), ("platform", m.platform),
                 ("Python", m.python)]
        if m.gpu:
            rows.append(("GPU", f"{m.gpu.name} (CUDA {m.gpu.cuda}, driver {m.gpu.driver})"))
        rows += sorted(m.libraries.items())
    if segbench:
        rows.append(("segbench", segbench))
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows if v) + "</dl>"
