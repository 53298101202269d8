"""Study reports: one ranking across networks, the paper's tables and plots, merges across machines."""

import copy
import csv
import io
import json
import re

import numpy as np
import pytest

from segbench.bench.metrics import metrics_from_counts
from segbench.bench.model import Report, Study, parse
from segbench.bench.rank import RankRule, rank
from segbench.cli import main
from segbench.errors import InputError
from segbench.study.merge import merge_studies
from segbench.study.outputs import write_study
from segbench.study.render import (
    LATEX_PACKAGES,
    rank_study,
    render_tables,
    study_tables,
    to_csv,
    to_latex,
    to_latex_document,
    to_markdown,
)

POTSDAM = ["impervious_surface", "building", "low_vegetation", "tree", "car", "clutter"]
LOVEDA = ["background", "building", "road", "water", "barren", "forest", "agricultural"]
GPU = {"hostname": "gpu-box", "cpu": "Xeon", "cores": 16, "gpu": {"name": "NVIDIA H200"}}
CPU = {"hostname": "cpu-box", "cpu": "EPYC", "cores": 2, "gpu": None}
LAPTOP = {"hostname": "laptop", "cpu": "i7", "cores": 8, "gpu": None}
RULE = RankRule("torch-fp32")

# network -> family and (engine, mIoU, p50 ms at batch 1, scene MP/s) of the engines that ran
NETWORKS = {
    "pspnet-r18": ("CNN context", [("torch-fp32", 0.780, 40.0, 1.0), ("ort-int8", 0.775, 20.0, 2.0)]),
    "segformer-b0": ("transformer", [("torch-fp32", 0.820, 60.0, 0.8), ("ort-int8", 0.800, 15.0, 3.0)]),
    "bisenetv2": ("fast CNN", [("torch-fp32", 0.700, 10.0, 5.0), ("ort-int8", 0.699, 5.0, 8.0)]),
}


def _latency(p50: float, n: int) -> dict:
    return {"n": n, "mean": p50 * 1.02, "std": p50 * 0.03, "p50": p50, "p90": p50 * 1.1 if n >= 64 else None,
            "p99": None, "min": p50 * 0.95, "max": p50 * 1.3, "cv": 0.03}


def _engine(name: str, miou: float, p50: float, mps: float, speed: float, device: str) -> dict:
    """An engine row as bench/run.py writes it (before ranking)."""
    p50, mps = p50 / speed, mps * speed
    backend, precision = name.split("-")
    n = 20 if name == "ort-int8" and speed < 1 else 80  # a slow machine's too few samples for p90
    return {
        "name": name, "backend": backend, "precision": precision, "device": device, "status": "ok",
        "reason": None, "inputs": "0123456789abcdef", "artifact": f"/bench/engines/{name}.onnx",
        "artifact_bytes": (13 if precision == "int8" else 49) * 2**20, "build_seconds": 3.2,
        "latency": {"batch1": _latency(p50, n), "batch": 4, "batch4": _latency(p50 * 3.2, 10),
                    "per_tile_ms_at_batch": p50 * 0.8, "noisy": False},
        "scene": {"seconds": 60 / mps, "megapixels": 60.0, "megapixels_per_s": mps,
                  "km2_per_h": None if name == "ort-int8" else mps * 0.0025 * 3600, "windows": 300,
                  "skipped_windows": 0, "stages": {"read": 1.0, "infer": 20.0, "blend": 2.0, "write": 1.0,
                                                   "idle": 0.1}, "outputs": [f"/bench/{name}/a.labels.tif"]},
        "memory": {"peak_rss_bytes": int(900 * 2**20 / speed), "children_peak_rss_bytes": None, "gpu": None,
                   "engine_device_bytes": None},
        "accuracy": {"miou": miou, "macc": miou + 0.05, "mf1": miou + 0.08, "oa": 0.9, "kappa": 0.85,
                     "agreement": 1.0 if name == "torch-fp32" else 0.985},
    }


def _not_run(name: str, status: str, reason: str) -> dict:
    backend, precision = name.split("-")
    return {"name": name, "backend": backend, "precision": precision, "device": "cpu", "status": status,
            "reason": reason, "inputs": "0123456789abcdef"}


def _eval(classes: list[str], seed: int, excluded: list[str], empty: str | None = None) -> dict:
    """The network's own evaluation (mmseg's arithmetic) from a plausible confusion matrix."""
    rng = np.random.default_rng(seed)
    c = len(classes)
    counts = rng.integers(0, 1500, (c, c)) + np.diag(rng.integers(4000, 30000, c))
    if empty:  # a class neither labelled nor predicted: NaN IoU
        i = classes.index(empty)
        counts[i, :] = 0
        counts[:, i] = 0
    return metrics_from_counts(counts, classes, excluded)


def _network(name: str, family: str, engines: list[tuple], classes, excluded, seed: int, speed: float,
             device: str, empty: str | None = None) -> dict:
    rows = [_engine(*e, speed, device) for e in engines]
    rows += [_not_run("openvino-fp32", "failed", "OpenVINO could not compile the model: unsupported op "
                      "GridSample_3; see the log"),
             _not_run("trt-fp16", "skipped", "TensorRT is not installed; run pip install tensorrt")]
    return {"name": name, "family": family, "source": "trained", "status": "ok", "reason": None,
            "params": 12_788_000 + seed * 1_000_000, "gflops": 54.3 + seed, "tile": 512,
            "train_seconds": 812.4 * (seed + 1), "accuracy": _eval(classes, seed, excluded, empty),
            "engines": [{**r, "network": name} for r in rows]}


def make_study(machine: dict, speed: float = 1.0, two_datasets: bool = True) -> dict:
    """A study report in the documented shape: 4 networks (one failed training) x 4 engines each."""
    device = "cuda:0" if machine.get("gpu") else "cpu"
    potsdam = {"name": "potsdam", "path": "data/potsdam", "isprs": True, "split": "test",
               "classes": list(POTSDAM), "excluded_classes": ["clutter"], "networks": []}
    for seed, (name, (family, engines)) in enumerate(NETWORKS.items()):
        potsdam["networks"].append(_network(name, family, engines, POTSDAM, ["clutter"], seed, speed, device,
                                            empty="car" if name == "bisenetv2" else None))
    potsdam["networks"].insert(1, {
        "name": "danet-r50", "family": "attention", "source": "trained", "status": "failed",
        "reason": "CUDA out of memory during training; lower the batch size in [recipe].", "params": None,
        "gflops": None, "tile": None, "train_seconds": None, "accuracy": None, "engines": []})
    datasets = [potsdam]
    if two_datasets:
        loveda = {"name": "loveda_urban", "path": "data/loveda", "isprs": False, "split": "val",
                  "classes": list(LOVEDA), "excluded_classes": [], "networks": []}
        for seed, name in enumerate(("pspnet-r18", "segformer-b0")):
            family, engines = NETWORKS[name]
            loveda["networks"].append(_network(name, family, [(e, m - 0.2, p, s) for e, m, p, s in engines],
                                               LOVEDA, [], seed + 7, speed, device))
        datasets.append(loveda)
    created = f"2026-11-25T11:00:00 {machine['hostname']}"
    report = parse({"kind": "study", "segbench": "0.1.0", "created": created, "machine": machine,
                    "study": {"name": "seed", "out": "studies/seed-out"}, "rule": RULE.text(),
                    "ranking": RULE.to_dict(), "datasets": datasets}, "a test study")
    for dataset in report.datasets:
        for network in dataset.networks:
            rank(network.engines, RULE)  # each network's own bench ranking
    return rank_study(report)


def _rows(report: Study, dataset: str = "potsdam") -> dict:
    """{(machine, network, engine): row} of a dataset."""
    d = next(d for d in report.datasets if d.name == dataset)
    return {(r.machine, n.name, r.name): r for n in d.networks for r in n.engines}


@pytest.fixture
def study():
    return make_study(GPU)


# -- ranking ------------------------------------------------------------------------------------------

def test_ranks_are_across_networks(study):
    assert rank_study(study) is study
    rows = _rows(study)
    ranks = {(n, e): r.study_rank for (_, n, e), r in rows.items() if r.study_rank}
    # qualified rows by scene throughput, across networks (each qualified against its own reference)
    assert ranks == {("bisenetv2", "ort-int8"): 1, ("bisenetv2", "torch-fp32"): 2,
                     ("pspnet-r18", "ort-int8"): 3, ("pspnet-r18", "torch-fp32"): 4,
                     ("segformer-b0", "torch-fp32"): 5}
    # segformer's int8 is fast but loses more than 1% of segformer's own mIoU: not ranked
    assert not rows[(None, "segformer-b0", "ort-int8")].qualified
    assert rows[(None, "pspnet-r18", "trt-fp16")].study_rank is None
    # a network's own bench rank 1 is not the study's
    assert rows[(None, "pspnet-r18", "ort-int8")].rank == 1


def test_pareto_front_by_hand(study):
    # (p50 ms, mIoU): bise int8 (5, .699), bise fp32 (10, .700), seg int8 (15, .800), psp int8 (20, .775),
    # psp fp32 (40, .780), seg fp32 (60, .820): psp's two are dominated by seg int8 (faster and better).
    front = {(n, e) for (_, n, e), r in _rows(study).items() if r.study_pareto}
    assert front == {("bisenetv2", "ort-int8"), ("bisenetv2", "torch-fp32"), ("segformer-b0", "ort-int8"),
                     ("segformer-b0", "torch-fp32")}
    loveda = {(n, e) for (_, n, e), r in _rows(study, "loveda_urban").items() if r.study_pareto}
    assert loveda == {("segformer-b0", "ort-int8"), ("segformer-b0", "torch-fp32")}


# -- tables -------------------------------------------------------------------------------------------

def _md_table(md: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table under the heading that starts with ``heading``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {heading}"))
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return table


def test_markdown_one_row_per_network_and_engine(study):
    md = to_markdown(study)
    header, _, *rows = _md_table(md, "potsdam (test split, 6 classes): engines")
    assert header[:4] == ["network", "engine", "device", "p50 ms"] and "machine" not in header
    pairs = [(r[0], r[1]) for r in rows]
    assert sorted(pairs) == sorted((n, e) for _, n, e in _rows(study))
    assert len(pairs) == len(set(pairs)) == 12
    # family order: CNN context, attention (failed: no engines), transformer, fast CNN
    assert list(dict.fromkeys(p[0] for p in pairs)) == ["pspnet-r18", "segformer-b0", "bisenetv2"]
    row = dict(zip(header, rows[pairs.index(("bisenetv2", "ort-int8"))], strict=True))
    assert row["rank"] == "1" and row["Pareto"] == "*" and row["qualified"] == "yes"
    assert row["p90 ms"] == "5.5 (n=80)" and row["tiles/s"] == "250.0"  # 1000 / (5 ms x 0.8 at batch 4)
    skipped = dict(zip(header, rows[pairs.index(("pspnet-r18", "trt-fp16"))], strict=True))
    assert skipped["rank"] == "skipped" and skipped["p50 ms"] == ""
    assert ("- pspnet-r18 / trt-fp16, segformer-b0 / trt-fp16, bisenetv2 / trt-fp16: skipped: TensorRT is "
            "not installed; run pip install tensorrt") in md  # one note per reason
    assert "- segformer-b0 / ort-int8: not ranked: mIoU 0.8000 < 99% of torch-fp32" in md
    assert "- danet-r50: no engines: the network is failed" in md

    header, _, *nets = _md_table(md, "potsdam (test split, 6 classes): networks")
    assert [r[0] for r in nets] == ["pspnet-r18", "danet-r50", "segformer-b0", "bisenetv2"]
    assert "clutter†" in header and "GFLOPs @512" in header
    failed = dict(zip(header, nets[1], strict=True))
    assert failed["train"] == "failed" and failed["mIoU %"] == ""
    assert "- danet-r50: failed: CUDA out of memory during training" in md
    best = max(n.accuracy.miou for n in study.datasets[0].networks if n.accuracy)
    assert f"**{100 * best:.2f}**" in md


def test_csv_parses_back_to_the_report(study):
    engines = list(csv.DictReader(io.StringIO(to_csv(study, "engines"))))
    assert len(engines) == 12 + 8 and {r["dataset"] for r in engines} == {"potsdam", "loveda_urban"}
    rows = {(r["dataset"], r["network"], r["engine"]): r for r in engines}
    for (_, network, engine), row in _rows(study).items():
        got = rows[("potsdam", network, engine)]
        assert got["status"] == row.status
        if row.status != "ok":
            assert got["p50_ms"] == "" and got["reason"] == row.reason
            continue
        assert float(got["p50_ms"]) == pytest.approx(row.latency.batch1.p50)
        assert float(got["miou_pct"]) == pytest.approx(100 * row.accuracy.miou)
        assert float(got["megapixels_per_s"]) == pytest.approx(row.scene.megapixels_per_s)
        assert float(got["peak_rss_mib"]) == pytest.approx(row.memory.peak_rss_bytes / 2**20)
        assert int(got["latency_n"]) == row.latency.batch1.n
        assert got["study_rank"] == str(row.study_rank or "")
        assert got["qualified"] == ("yes" if row.qualified else "no")
    assert rows[("potsdam", "bisenetv2", "ort-int8")]["km2_per_h"] == ""  # not known: empty, never 0

    networks = list(csv.DictReader(io.StringIO(to_csv(study, "networks"))))
    assert len(networks) == 4 + 2
    by_name = {(r["dataset"], r["network"]): r for r in networks}
    for n in study.datasets[0].networks:
        got = by_name[("potsdam", n.name)]
        if n.accuracy is None:
            assert got["miou_pct"] == "" and got["status"] == "failed" and got["reason"] == n.reason
            continue
        assert float(got["params_m"]) == pytest.approx(n.params / 1e6)
        assert float(got["miou_pct"]) == pytest.approx(100 * n.accuracy.miou)
        for cls, figures in n.accuracy.per_class.items():
            cell = got[f"iou_{cls}_pct"]
            expected = None if figures.iou is None else pytest.approx(100 * figures.iou)
            assert (cell == "") if expected is None else float(cell) == expected
    # each dataset's classes are columns; another dataset's rows leave them empty
    assert by_name[("potsdam", "pspnet-r18")]["iou_road_pct"] == ""
    assert by_name[("loveda_urban", "pspnet-r18")]["iou_road_pct"] != ""


def _check_tabular(tex: str) -> None:
    """A complete booktabs tabular: balanced braces, rules, escaped specials, every row full."""
    body = re.sub(r"\\[{}%&_#$]", "", tex)  # escaped characters are text
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert "_" not in body and "%" not in body and "#" not in body
    lines = tex.strip().splitlines()
    spec = re.match(r"\\begin\{tabular\}\{([lrc]+)\}$", lines[0]).group(1)
    assert lines[1] == r"\toprule" and lines[-2] == r"\bottomrule" and lines[-1] == r"\end{tabular}"
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1 and r"\midrule" in tex
    for line in lines[2:-2]:
        if line == r"\midrule":
            continue
        assert line.endswith(r" \\")
        cells = re.split(r"(?<!\\)&", line[:-3])
        spans = [int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c)) else 1 for c in cells]
        assert sum(spans) == len(spec), line


def test_latex_tables_are_complete_booktabs(study):
    tables = study_tables(study)
    assert [(t.dataset.name, t.kind) for t in tables] == [
        ("potsdam", "networks"), ("potsdam", "engines"), ("loveda_urban", "networks"),
        ("loveda_urban", "engines")]
    for table in tables:
        _check_tabular(to_latex(table))
    nets = to_latex(tables[0])
    assert nets.count(r"\midrule") == 4  # under the header, then one block per family
    blocks = re.findall(r"^\\multicolumn\{\d+\}\{l\}\{\\emph\{([^}]*)\}\} \\\\$", nets, re.M)
    assert blocks == ["CNN context", "attention", "transformer", "fast CNN"]
    assert r"low\_vegetation" in nets and r"mIoU \%" in nets and r"clutter\textsuperscript{\dag}" in nets
    best = max(n.accuracy.miou for n in study.datasets[0].networks if n.accuracy)
    assert rf"\textbf{{{100 * best:.2f}}}" in nets
    assert r"\emph{failed: CUDA out of memory during training}" in nets  # what went wrong, not what to do
    engines = to_latex(tables[1])
    assert r"\emph{skipped: TensorRT is not installed}" in engines
    assert r"km\textsuperscript{2}/h" in engines
    doc = to_latex_document(study)
    assert doc.count(r"\begin{table}") == 4 and r"\label{tab:loveda_urban-engines}" in doc
    body = "\n".join(line for line in doc.splitlines() if not line.startswith("%"))
    assert body.count("{") - body.count(r"\{") == body.count("}") - body.count(r"\}")


def test_pdflatex_compiles_when_installed(study, tmp_path):
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (the structure is checked by the other LaTeX test)")
    packages = "".join(f"\\usepackage{{{p}}}" for p in LATEX_PACKAGES)
    (tmp_path / "t.tex").write_text(f"\\documentclass{{article}}{packages}\\begin{{document}}\n"
                                    + to_latex_document(study) + "\\end{document}\n")
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)
    log = (tmp_path / "t.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, log[log.index("Overfull"):][:200]  # no table past the margin


def test_terminal_tables(study):
    from rich.console import Console

    console = Console(record=True, width=240)
    tables = render_tables(study)
    assert len(tables) == 4
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert "bisenetv2" in text and "not ranked" in text and "danet-r50: failed" in text


# -- files ----------------------------------------------------------------------------------------------

def test_write_study_files_and_plots(study, tmp_path):
    from PIL import Image

    paths = write_study(study, tmp_path)
    names = {p.name for p in paths}
    assert {"study.md", "study-networks.csv", "study-engines.csv", "study.tex", "potsdam-pareto.png",
            "potsdam-iou.png", "loveda_urban-pareto.png", "loveda_urban-iou.png",
            "potsdam-networks.tex", "potsdam-engines.tex"} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary files left
    for name in ("potsdam-pareto.png", "potsdam-iou.png"):
        with Image.open(tmp_path / name) as image:
            width, height = image.size
            assert image.format == "PNG"
        assert 900 < width < 3000 and 400 < height < 2000, (name, width, height)
    import matplotlib.image

    pixels = matplotlib.image.imread(tmp_path / "potsdam-pareto.png")
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and pixels.std() > 0.05  # not blank
    _check_tabular((tmp_path / "potsdam-engines.tex").read_text())


# -- merging ----------------------------------------------------------------------------------------------

def test_merge_of_two_machines_reranks_and_labels_rows():
    gpu, cpu = make_study(GPU), make_study(CPU, speed=0.3)
    before = copy.deepcopy(cpu)
    merged = merge_studies([gpu, cpu])
    assert cpu == before  # inputs untouched
    rows = _rows(merged)
    assert len(rows) == 24
    assert {m for m, _, _ in rows} == {"gpu-box (NVIDIA H200)", "cpu-box (EPYC x2)"}
    ranks = sorted(r.study_rank for r in rows.values() if r.study_rank)
    assert ranks == list(range(1, 11))  # one order across both machines
    assert rows[("gpu-box (NVIDIA H200)", "bisenetv2", "ort-int8")].study_rank == 1
    assert rows[("cpu-box (EPYC x2)", "bisenetv2", "ort-int8")].study_rank == 3  # 2.4 MP/s, after 8 and 5
    assert not any(r.study_pareto for (m, _, _), r in rows.items() if m.startswith("cpu"))
    assert [m.hostname for m in merged.machines] == ["gpu-box", "cpu-box"]
    # the failed network appears once; datasets and networks matched by name
    potsdam = merged.datasets[0]
    assert [n.name for n in potsdam.networks] == ["pspnet-r18", "danet-r50", "segformer-b0",
                                                         "bisenetv2"]
    md = to_markdown(merged)
    header, _, *table = _md_table(md, "potsdam (test split, 6 classes): engines")
    assert header[2] == "machine" and len(table) == 24
    assert "not stated (n=20 < 64)" in md  # the CPU box timed too few calls for its p90


def test_merge_of_merged_keeps_machine_labels():
    saved = parse(json.loads(merge_studies([make_study(GPU), make_study(CPU, 0.25)]).model_dump_json()), "x")
    again = merge_studies([saved, make_study(LAPTOP, 0.5, two_datasets=False)])
    assert {m for m, _, _ in _rows(again)} == \
        {"gpu-box (NVIDIA H200)", "cpu-box (EPYC x2)", "laptop (i7 x8)"}
    assert len(_rows(again, "loveda_urban")) == 16  # the laptop did not run it
    assert [m.hostname for m in again.machines] == ["gpu-box", "cpu-box", "laptop"]
    assert [r.study_rank for r in _rows(again).values()].count(1) == 1


def test_merge_refuses_different_class_sets():
    other = make_study(CPU)
    other.datasets[0].classes[0] = "road"
    with pytest.raises(InputError, match="different classes") as info:
        merge_studies([make_study(GPU), other])
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.count(". ") == 0 and message.endswith(".")
    assert "study from gpu-box (NVIDIA H200)" in message and "'potsdam'" in message


def _bench_report(machine: dict, classes: list[str], architecture: str = "pspnet-r18") -> Report:
    rows = [_engine("torch-fp32", 0.78, 300.0, 0.1, 1.0, "cpu"), _engine("openvino-int8", 0.776, 30.0, 9.0,
                                                                         1.0, "cpu")]
    report = parse({"segbench": "0.1.0", "created": "2026-11-26", "machine": machine, "config": {},
                    "rule": RULE.text(), "ranking": RULE.to_dict(), "engines": rows,
                    "model": {"architecture": architecture, "classes": len(classes), "class_names": classes,
                              "checkpoint_digest": "ab12", "bands": 3, "tile": 512, "params": None,
                              "gflops": None}}, "a test report")
    rank(report.engines, RULE)
    return report


def test_bench_report_joins_the_dataset_of_its_classes():
    merged = merge_studies([make_study(GPU), _bench_report(LAPTOP, POTSDAM)])
    rows = _rows(merged)
    laptop = {e: r for (m, n, e), r in rows.items() if m == "laptop (i7 x8)"}
    assert set(laptop) == {"torch-fp32", "openvino-int8"}
    assert all(r.network == "pspnet-r18" for r in laptop.values())
    assert laptop["openvino-int8"].study_rank == 1  # 9 MP/s beats the GPU's 8
    assert len(_rows(merged, "loveda_urban")) == 8
    # a model no study dataset has: a new network under its catalogue family
    merged = merge_studies([make_study(GPU), _bench_report(LAPTOP, POTSDAM, "stdc1")])
    stdc = next(n for n in merged.datasets[0].networks if n.name == "stdc1")
    assert stdc.family == "fast CNN" and len(stdc.engines) == 2


def test_bench_report_of_other_classes_is_refused():
    with pytest.raises(InputError, match="no dataset of the studies") as info:
        merge_studies([make_study(GPU), _bench_report(LAPTOP, ["a", "b", "c"])])
    assert len(str(info.value).splitlines()) == 1


# -- the command ------------------------------------------------------------------------------------------

def test_cli_report_merges_studies_and_keeps_bench_reports_as_they_were(tmp_path, capsys):
    paths = []
    for name, report in (("gpu", make_study(GPU)), ("cpu", make_study(CPU, 0.25)),
                         ("bench", _bench_report(LAPTOP, POTSDAM))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(report.model_dump_json())
    out = tmp_path / "out"
    assert main(["report", *map(str, paths), "-o", str(out)]) == 0
    merged = json.loads((out / "merged.json").read_text())
    assert merged["kind"] == "study" and len(merged["machines"]) == 3
    assert (out / "study.tex").is_file() and (out / "potsdam-pareto.png").is_file()
    assert "loveda_urban" in capsys.readouterr().out
    # bench reports alone: the bench's own table and files, as before
    assert main(["report", str(paths[2]), "-o", str(tmp_path / "bench")]) == 0
    assert (tmp_path / "bench" / "report.md").is_file() and not (tmp_path / "bench" / "study.md").exists()
    (tmp_path / "bad.json").write_text("{}")
    assert main(["report", str(tmp_path / "bad.json")]) != 0
    assert "neither a segbench study report nor a bench report" in capsys.readouterr().err


def test_the_study_page_has_a_section_per_dataset_and_renders_in_chromium(study, tmp_path):
    import re
    import shutil
    import subprocess

    write_study(study, tmp_path)
    page = (tmp_path / "study.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained
    for dataset in study.datasets:
        assert f"<h2>{dataset.name}</h2>" in page
    networks = sum(len(d.networks) for d in study.datasets)
    engines = sum(len(n.engines or []) for d in study.datasets for n in d.networks)
    assert page.count("<tr>") == len(study.datasets) * 2 + networks + engines  # headers and rows
    assert page.count("<svg") >= 2 * len(study.datasets)  # a heat map and a plot per dataset
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "study.png"
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--window-size=1400,3000", f"--screenshot={shot}", (tmp_path / "study.html").as_uri()]
    done = subprocess.run([chromium, *args], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and not [x for x in done.stderr.splitlines() if "CONSOLE" in x or "Uncaught" in x]
