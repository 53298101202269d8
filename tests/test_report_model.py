"""The typed report model: golden renderings, the format version, the shipped JSON Schemas."""

import json
import re
from html import unescape
from pathlib import Path

import pytest

from segbench.bench.model import FORMAT, Report, Study, json_schemas, parse, read, to_json
from segbench.bench.page import bench_page
from segbench.bench.tables import to_csv, to_markdown
from segbench.errors import InputError
from segbench.study.page import study_page
from segbench.study.render import TABLE_KINDS, rank_study, study_tables, to_latex_document
from segbench.study.render import to_csv as study_csv
from segbench.study.render import to_markdown as study_markdown

#: a report and a study of the quick demo, written by segbench before the typed model (the first,
#: unversioned format), with the renderings that code made of them
GOLDEN = Path(__file__).parent / "golden"


def _svg_free(html: str) -> str:
    """A page without its inline figures (matplotlib's SVG carries its version and the date) and
    without the int8 search's own lines (:func:`segbench.export.qualify.describe_int8` words them;
    the engines it names are compared)."""
    html = re.sub(r"<svg.*?</svg>", "<svg/>", html, flags=re.S)
    html = re.sub(r"(<h3>[^<]*</h3>)<ul>.*?</ul>", r"\1", html, flags=re.S)
    return unescape(html)  # the same text, whichever of the equivalent escapes made it


def _scaled(tex: str) -> str:
    """The golden LaTeX with the one change made since: wide tables scaled to the text width (they ran
    300 pt past the margin), which needs graphicx."""
    tex = tex.replace(r"\usepackage{booktabs};", r"\usepackage{booktabs}, \usepackage{graphicx};")
    scale = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"
    tex = tex.replace("\\begin{tabular}", scale + "\n\\begin{tabular}")
    return tex.replace("\\end{tabular}", "\\end{tabular}}")


def _raw(path: Path) -> str:
    """A file's text as written (CSV rows end in CRLF)."""
    return path.read_bytes().decode()


def _int8_free(markdown: str) -> str:
    """The Markdown report with each int8 engine's search line cut to the engine's name."""
    return re.sub(r"^(- [\w-]+): format .*$", r"\1", markdown, flags=re.M)


def test_the_report_renders_as_before_the_model():
    report = read(GOLDEN / "report.json")
    assert isinstance(report, Report) and report.format == FORMAT  # upgraded from the first format
    assert _int8_free(to_markdown(report)) == _int8_free((GOLDEN / "report.md").read_text())
    assert to_csv(report) == _raw(GOLDEN / "report.csv")
    assert _svg_free(bench_page(report)) == _svg_free((GOLDEN / "report.html").read_text())


def test_the_study_renders_as_before_the_model():
    study = rank_study(read(GOLDEN / "study.json"))
    assert isinstance(study, Study)
    assert study_markdown(study) == (GOLDEN / "study.md").read_text()
    for kind in TABLE_KINDS:
        assert study_csv(study, kind) == _raw(GOLDEN / f"study-{kind}.csv")
    assert to_latex_document(study) == _scaled((GOLDEN / "study.tex").read_text())
    assert len(study_tables(study)) == 2
    assert _svg_free(study_page(study)) == _svg_free((GOLDEN / "study.html").read_text())


@pytest.mark.parametrize("name", ["report.json", "study.json"])
def test_a_first_format_file_upgrades_and_round_trips(name):
    old = json.loads((GOLDEN / name).read_text())
    assert "format" not in old
    new = parse(old, name)
    again = parse(json.loads(to_json(new)), name)
    assert again == new and json.loads(to_json(again))["format"] == FORMAT
    rows = new.engines if isinstance(new, Report) else new.datasets[0].engine_rows()
    old_rows = old["engines"] if isinstance(new, Report) else [
        r for n in old["datasets"][0]["networks"] for r in n["engines"]]
    for row, raw in zip(rows, old_rows, strict=True):  # the latency at the tiler's batch, renamed
        if raw.get("latency"):
            assert row.latency.at_batch.p50 == raw["latency"][f"batch{raw['latency']['batch']}"]["p50"]


@pytest.mark.parametrize(("change", "said"), [
    ({"format": FORMAT + 1}, f"format {FORMAT + 1}, which this segbench"),
    ({"format": "2"}, "format '2'"),
    ({"engines": [{"name": "ort-fp32", "speed": 3}]}, "engines.0.speed: Extra inputs are not permitted"),
    ({"engines": [{"name": "ort-fp32", "status": "great"}]}, "engines.0.status"),
])
def test_files_it_cannot_read_are_refused_in_one_sentence(change, said):
    data = {**json.loads((GOLDEN / "report.json").read_text()), **change}
    with pytest.raises(InputError, match=re.escape(said)) as info:
        parse(data, "x.json")
    assert len(str(info.value).splitlines()) == 1


def test_the_shipped_json_schemas_are_the_models():
    import segbench

    shipped = Path(segbench.__file__).parent / "schemas"
    for name, text in json_schemas().items():
        assert (shipped / name).read_text() == text, f"run segbench.bench.model.write_schemas() ({name})"
    schema = json.loads((shipped / "report.schema.json").read_text())
    assert {"engines", "model", "format"} <= set(schema["properties"])
    assert schema["$defs"]["EngineRow"]["additionalProperties"] is False


def test_the_pages_escape_what_the_report_holds():
    report = read(GOLDEN / "report.json")
    report.engines[0].name = "<script>alert(1)</script>"
    report.engines[1].reason = report.rule = "a & b < c"
    page = bench_page(report)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &amp; b &lt; c" in page
