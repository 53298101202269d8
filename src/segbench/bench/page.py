"""``report.html``: one self-contained page a person opens in any browser (and the pieces of
``study.html``, :mod:`segbench.study.page`).

The pages are jinja2 templates (``segbench/bench/templates``, autoescaped); this
module gathers what they show. No network and no CDN: the figures are inline
SVG drawn by matplotlib (the latency-accuracy plot with the honest accuracy axis
of :func:`segbench.bench.figures.honest_limits`, per-class IoU as a heat map,
latency under load), the thumbnails inline PNG read from the COGs' overviews
(the scene, each engine's labels, its disagreement map), the styles inline, and
the one script a few lines that sort a table by the column clicked. A merged or
a single report renders alike.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from segbench.bench.figures import latency_accuracy_figure, pyplot, server_latency_figure
from segbench.bench.model import EngineRow, Machine, Report
from segbench.bench.tables import model_line, notes, precision_lines, table_rows

#: the longest side of a thumbnail, in pixels
THUMBNAIL = 240


def bench_page(report: Report) -> str:
    """The page of a bench report (or a merged one)."""
    header, rows = table_rows(report)
    classes = report.model.class_names if report.model else []
    load = server_latency_figure(report)
    return render("report.html.j2", title="segbench report", model_line=model_line(report).strip(),
                  header=header, rows=cells(rows), rule=report.rule, notes=notes(report),
                  latency=svg(latency_accuracy_figure(report)), load=svg(load) if load is not None else None,
                  heat=iou_figure(_engine_iou(report), classes, "per-class IoU (%) by engine"),
                  int8=[(r.name, precision_lines(r)) for r in report.engines if precision_lines(r)],
                  legend=_legend(report), scenes=_scenes(report),
                  machine=machine_rows(report.machine, report.segbench))


# -- pieces ----------------------------------------------------------------------------------------------

@functools.cache
def environment() -> Environment:
    """The pages' templates, HTML autoescaped."""
    return Environment(loader=PackageLoader("segbench.bench", "templates"),
                       autoescape=select_autoescape(["j2", "html"], default_for_string=True),
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **values) -> str:
    return environment().get_template(template).render(**values)


def cells(rows: Sequence[Sequence[str]]) -> list[list[dict]]:
    """Table cells with how they align: text left, figures right."""
    return [[{"text": c, "texty": _texty(c)} for c in row] for row in rows]


def _texty(cell: str) -> bool:
    try:
        float(str(cell).split()[0].rstrip("*%x"))
        return False
    except (ValueError, IndexError):
        return bool(cell)


def svg(fig) -> Markup:
    """A matplotlib figure as inline SVG (then closed)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return Markup(text[text.index("<svg"):])  # matplotlib's own markup


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


def iou_figure(data, classes: list[str], title: str) -> Markup | None:
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
    return svg(fig)


def _legend(report: Report) -> list[tuple[str, tuple]]:
    """The class colours of the thumbnails, and the colour of agreement on a disagreement map."""
    from segbench.bench.disagreement import AGREE_COLOUR

    palette = report.model.palette if report.model else None
    classes = report.model.class_names if report.model else []
    if not (classes and palette and report.config.scenes):
        return []
    return [*((n, tuple(c)) for n, c in zip(classes, palette, strict=False)),
            ("agrees with the reference", tuple(AGREE_COLOUR))]


def _scenes(report: Report) -> list[dict]:
    """For each scene, the scene, and each engine's labels and disagreement map, as thumbnails."""
    palette = report.model.palette if report.model else None
    scenes = []
    for i, scene in enumerate(report.config.scenes):
        thumbs = [_thumb(_scene_rgb(scene), Path(scene).name)]
        for r in report.ok_rows:
            if i < len(r.outputs):
                thumbs += _engine_thumbs(r, r.outputs[i], palette)
        scenes.append({"name": Path(scene).name, "thumbs": [t for t in thumbs if t]})
    return scenes


def _engine_thumbs(row: EngineRow, labels: str, palette) -> list[dict | None]:
    """An engine's labels of one scene and, where it was written, its disagreement map."""
    from segbench.bench.disagreement import AGREE_COLOUR, map_path

    thumbs = [_thumb(_paletted(labels, palette), f"{row.name}: labels")]
    differ = map_path(labels)
    if Path(differ).is_file():
        share = row.disagreement.share if row.disagreement else None
        note = f" ({100 * share:.2f}% of pixels)" if share is not None else ""
        thumbs.append(_thumb(_paletted(differ, [AGREE_COLOUR, *(palette or [])]),
                             f"{row.name}: where it differs from the reference{note}"))
    return thumbs


def _thumb(image: np.ndarray | None, caption: str) -> dict | None:
    """A thumbnail as the page shows it: inline PNG, its size and caption."""
    if image is None:
        return None
    from segbench.extras import require

    require("matplotlib", "the report page")
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, image, format="png")
    return {"data": base64.b64encode(buf.getvalue()).decode("ascii"), "width": image.shape[1],
            "height": image.shape[0], "caption": caption}


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


def machine_rows(m: Machine | None, segbench: str | None = None) -> list[tuple[str, object]]:
    """The machine (and the segbench that ran on it), as the page's definition list shows it."""
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
    return [(k, v) for k, v in rows if v]
