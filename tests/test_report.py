"""Reports from several machines merge into one ranking; reports of different models do not merge."""

import json

import pytest

from segbench.bench.figures import plot
from segbench.bench.model import Report, parse
from segbench.bench.rank import RankRule
from segbench.bench.report import merge_reports, rank_report
from segbench.bench.tables import table_rows, to_csv, to_markdown
from segbench.errors import SegbenchError

MODEL = {"architecture": "segformer-b0", "classes": 6, "bands": 3, "tile": 512,
         "class_names": ["impervious", "building", "low vegetation", "tree", "car", "clutter"],
         "params": None, "gflops": None}


def _row(name, miou, p50, mps, device="cpu"):
    gpu = {"peak_allocated_bytes": 3 * 2**30, "device": "NVIDIA H200", "allocated_bytes": 0,
           "peak_reserved_bytes": 3 * 2**30, "device_used_bytes": 4 * 2**30,
           "device_total_bytes": 141 * 2**30} if device == "cuda" else None
    return {"name": name, "status": "ok", "device": device, "precision": name.rsplit("-", 1)[1],
            "accuracy": {"miou": miou, "oa": 0.9, "agreement": None},
            "latency": {"batch1": stats(p50), "batch": 1},
            "scene": {"megapixels_per_s": mps, "seconds": 1.0, "megapixels": mps},
            "memory": {"peak_rss_bytes": 2**29, "gpu": gpu},
            "artifact_bytes": 2**20}


def stats(p50: float, n: int = 80) -> dict:
    """Latency figures of ``n`` calls around ``p50`` ms."""
    return {"n": n, "p50": p50, "p90": p50 * 1.1, "mean": p50, "std": 0.0, "min": p50, "max": p50 * 1.2}


def _report(machine: dict, rows: list[dict], model: dict = MODEL, reference: str = "torch-fp32") -> Report:
    """A report as run_bench leaves it: rows ranked on their own machine."""
    rule = RankRule(reference)
    report = Report.model_validate({"machine": machine, "model": dict(model), "engines": rows,
                                    "config": {"reference": reference},
                                    "ranking": rule.to_model().model_dump(), "created": machine["hostname"]})
    return rank_report(report)


@pytest.fixture
def cpu_box():
    return _report({"hostname": "cpu-box", "cpu": "EPYC", "cores": 2, "gpu": None}, [
        _row("torch-fp32", 0.80, 70.0, 0.7), _row("ort-fp32", 0.80, 28.0, 1.0),
        _row("openvino-int8", 0.795, 14.0, 2.2),
        {"name": "trt-fp16", "status": "skipped", "reason": "TensorRT is not installed"}])


@pytest.fixture
def gpu_box():
    return _report({"hostname": "gpu-box", "cpu": "Xeon", "cores": 16, "gpu": {"name": "NVIDIA H200"}}, [
        _row("torch-fp32", 0.80, 9.0, 12.0, "cuda"), _row("torch-fp16", 0.799, 5.0, 20.0, "cuda"),
        _row("ort-int8", 0.70, 30.0, 0.5)])


def test_each_report_alone_has_its_own_rank_one(cpu_box, gpu_box):
    assert [r.name for r in cpu_box.engines if r.rank == 1] == ["openvino-int8"]
    assert [r.name for r in gpu_box.engines if r.rank == 1] == ["torch-fp16"]


def test_merged_reports_are_ranked_once(cpu_box, gpu_box):
    merged = merge_reports([cpu_box, gpu_box])
    rows = {(r.machine, r.name): r for r in merged.engines}
    assert len(rows) == 7
    ranks = sorted(r.rank for r in merged.engines if r.rank is not None)
    assert ranks == list(range(1, len(ranks) + 1))  # one order: a single rank 1
    assert rows[("gpu-box (NVIDIA H200)", "torch-fp16")].rank == 1
    assert rows[("cpu-box (EPYC x2)", "openvino-int8")].rank == 3
    assert not rows[("gpu-box (NVIDIA H200)", "ort-int8")].qualified
    # One Pareto front of latency against mIoU: the CPU rows are dominated by the GPU's.
    front = {key for key, r in rows.items() if r.pareto}
    assert front == {("gpu-box (NVIDIA H200)", "torch-fp16"), ("gpu-box (NVIDIA H200)", "torch-fp32")}
    assert all(r.model == "segformer-b0" for r in merged.engines)
    assert merged.model.class_names == MODEL["class_names"]
    # the inputs keep their own ranking
    assert [r.name for r in cpu_box.engines if r.rank == 1] == ["openvino-int8"]


def test_merging_a_merged_report_keeps_every_machine(cpu_box, gpu_box):
    laptop = _report({"hostname": "laptop", "cpu": "i7", "cores": 8, "gpu": None},
                     [_row("torch-fp32", 0.80, 40.0, 1.5), _row("openvino-int8", 0.796, 8.0, 3.0)])
    # as read back from merged.json
    saved = parse(json.loads(merge_reports([cpu_box, gpu_box]).model_dump_json()), "merged.json")
    again = merge_reports([saved, laptop])
    assert {r.machine for r in again.engines} == \
        {"cpu-box (EPYC x2)", "gpu-box (NVIDIA H200)", "laptop (i7 x8)"}
    assert [m.hostname for m in again.machines] == ["cpu-box", "gpu-box", "laptop"]
    assert [r.rank for r in again.engines].count(1) == 1
    assert sum(r.pareto for r in again.engines) == 2


@pytest.mark.parametrize("change", [{"architecture": "deeplabv3plus-r18"},
                                    {"class_names": ["a", "b", "c", "d", "e", "f"]},
                                    {"classes": 7}])
def test_reports_of_different_models_do_not_merge(cpu_box, change):
    other = _report({"hostname": "other", "cpu": "x", "cores": 1, "gpu": None},
                    [_row("torch-fp32", 0.6, 50.0, 1.0)], {**MODEL, **change})
    with pytest.raises(SegbenchError, match="different model") as info:
        merge_reports([cpu_box, other])
    assert len(str(info.value).splitlines()) == 1


def test_renderings_of_a_merged_report(cpu_box, gpu_box, tmp_path):
    merged = merge_reports([cpu_box, gpu_box])
    md = to_markdown(merged)
    header = md.splitlines()[2]
    assert "machine" in header
    assert "| torch-fp16 | gpu-box (NVIDIA H200) | cuda | fp16 | 79.90 |" in md
    gpu_column = header.split("|").index(" GPU MiB ")  # shown: some engine ran on a GPU
    torch_fp16 = next(line for line in md.splitlines() if line.startswith("| torch-fp16 "))
    assert torch_fp16.split("|")[gpu_column].strip() == "3072"
    assert "GPU MiB" not in to_markdown(cpu_box)
    assert "trt-fp16: skipped: TensorRT is not installed" in md
    lines = to_csv(merged).splitlines()
    assert lines[0].startswith("engine,machine,device,precision,mIoU %") and len(lines) == 8
    assert sum(line.endswith(",1*") or line.endswith(",1") for line in lines) == 1
    png = plot(merged, tmp_path / "merged.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_engines_show_what_their_search_did(cpu_box):
    from segbench.export.qualify import precision_label

    record = {"format": "qop-u8", "format_description": "QOperator, uint8 asymmetric activations",
              "runtime": "onnxruntime", "formats": {"qop-u8": {}, "qdq-u8": {}}, "quantized_layers": 78,
              "float_layers": [{"name": "conv_a", "op": "Conv"}, {"name": "matmul_b", "op": "MatMul"}],
              "smoothing": None, "plain": {"agreement": 0.97, "miou": 0.6, "p50_ms": 13.0},
              "final": {"agreement": 0.995, "miou": 0.63, "p50_ms": 14.0}, "reference": {"miou": 0.632},
              "target": {"ratio": 0.99, "max_float": 0.1, "metric": "miou", "held_out_tiles": 16},
              "met": True, "unchecked": None, "tried": 5, "search_seconds": 41.0}
    row = {**_row("ort-int8", 0.62, 14.0, 2.0), "int8": record,
           "precision_label": precision_label({"int8": record})}
    report = cpu_box.model_copy(update={"engines": [*cpu_box.engines, Report.model_validate(
        {"engines": [row]}).engines[0]]})
    header, rows = table_rows(report)
    assert rows[-1][header.index("precision")] == "int8 (2 fp32)"
    md = to_markdown(report)
    line = next(x for x in md.splitlines() if x.startswith("- ort-int8: format qop-u8"))
    assert "2 of 80 layers kept in float: conv_a (Conv), matmul_b (MatMul)" in line
    assert "target 99.0% of the float mIoU on 16 held-out tiles: met" in line and "41.0 s" in line
