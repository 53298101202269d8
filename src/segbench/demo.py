"""``segbench demo``: the whole flow on a synthetic scene set, on CPU, in minutes.

synthesize scenes -> train a small network -> export to ONNX (verified) ->
build engines -> segment the held-out scene with each -> rank them in a table.
Everything lands in one folder, named at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from segbench.errors import InputError


@dataclass(frozen=True)
class DemoSize:
    """Sizes of one demo run: the normal one, and a tiny one for the tests."""

    model: str
    lr: float
    train_scenes: int
    scene: int
    test_scene: int
    tile: int
    overlap: int
    iters: int
    batch: int
    calib_tiles: int
    scenario_seconds: float  # each engine's Server search (LoadGen; the tests' quick demo runs none)


# SegFormer-B0 trained from scratch with AdamW needs a few hundred iterations
# to leave its initial plateau (mmseg's lr 6e-5 assumes ImageNet-pretrained
# weights; 1e-3 suits training from scratch); the tests' tiny run uses the
# seed's SGD recipe on FCN-HRNet18s, which learns within a few dozen.
FULL = DemoSize(model="segformer-b0", lr=1e-3, train_scenes=8, scene=512, test_scene=1024,
                tile=256, overlap=64, iters=400, batch=4, calib_tiles=32, scenario_seconds=20.0)
QUICK = DemoSize(model="fcn-hrnet18s", lr=0.01, train_scenes=2, scene=256, test_scene=320,
                 tile=128, overlap=32, iters=60, batch=4, calib_tiles=8, scenario_seconds=3.0)
CPU_ENGINES = ("torch-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8")
#: the engines the demo drives through LoadGen: the deployment candidates (a Server search on every
#: engine would take the demo past 8 minutes on 2 cores)
DEMO_SCENARIO_ENGINES = ("ort-int8", "openvino-int8")


def run_demo(
    out: str | Path,
    iters: int | None = None,
    engines: list[str] | None = None,
    quick: bool = False,
    console: Console | None = None,
) -> dict:
    """Run the demo into ``out`` and return the bench report."""
    from segbench.bench.options import BenchOptions
    from segbench.bench.report import console as make_console
    from segbench.bench.run import BenchConfig, run_bench
    from segbench.engines.registry import available_engines, get_kind
    from segbench.export.onnx import export_model
    from segbench.raster import sample_tiles
    from segbench.train.config import Recipe
    from segbench.train.layout import DatasetInfo
    from segbench.train.runner import train
    from segbench.train.synth import SynthOptions, synthesize_dataset

    console = console or make_console()
    size = QUICK if quick else FULL
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    available = set(available_engines())
    if engines is None:
        engines = [e for e in CPU_ENGINES if e in available]
    for name in engines:
        get_kind(name)  # unknown names fail before any work
    started = time.perf_counter()

    def step(text: str) -> None:
        console.rule(f"[bold]{text}[/bold]  [dim]{time.perf_counter() - started:.0f} s[/dim]")

    step("1/4 synthesizing scenes")
    data = synthesize_dataset(out / "data", SynthOptions(
        train=size.train_scenes, val=1, test=1, size=size.scene, test_size=size.test_scene))
    info = DatasetInfo.load(data).with_stats()
    info.save()
    console.print(f"{size.train_scenes} training scenes of {size.scene}^2, "
                  f"a held-out test scene of {size.test_scene}^2, 0.3 m pixels, EPSG:32633")

    step(f"2/4 training {size.model} on CPU")
    recipe = Recipe(iters=iters or size.iters, batch=size.batch, crop=size.tile, lr=size.lr)
    checkpoint, spec = train(size.model, data, out / "train", recipe)

    step("3/4 exporting to ONNX (verified against PyTorch)")
    val_scenes = [p[0] for p in info.pairs("val")]
    real = sample_tiles(val_scenes, spec, count=2)
    onnx_path, _, agreement = export_model(checkpoint, out / "model" / "model.onnx",
                                           verify_tiles=real)
    console.print(f"ONNX Runtime vs PyTorch: max |logit diff| {agreement.max_abs_diff:.2e}, "
                  f"label agreement {agreement.label_agreement:.4%} on {agreement.tiles} tiles")

    step("4/4 building engines, segmenting the test scene, benchmarking")
    test = info.pairs("test")
    if not test:
        raise InputError("The demo dataset has no test scene.")
    report = run_bench(BenchConfig(
        model=onnx_path,
        engines=engines,
        scenes=[p[0] for p in test],
        labels=[p[1] for p in test],
        calib=[p[0] for p in info.pairs("train")],
        calib_labels=[p[1] for p in info.pairs("train")],  # the int8 target as mIoU on held-out tiles
        out=out / "bench",
        # the demo's sizes; every other option keeps BenchOptions' default (a fixed batch: no sweep)
        options=BenchOptions(calib_tiles=size.calib_tiles, overlap=size.overlap, batch=size.batch,
                             quick=quick, maps=True, scenarios=() if quick else _scenarios(console),
                             scenario_engines=DEMO_SCENARIO_ENGINES, scenario_seconds=size.scenario_seconds),
    ), console=console)
    console.print(f"\n[bold]Demo finished in {time.perf_counter() - started:.0f} s.[/bold] "
                  f"Every output is in [bold]{out}[/bold]: data/, train/, model/, bench/ "
                  "(label GeoTIFFs and disagreement maps per engine, report.json, .md, .csv, .png).\n"
                  f"Open the report in a browser: [bold]{out / 'bench' / 'report.html'}[/bold]")
    return report


def _scenarios(console: Console) -> tuple[str, ...]:
    """LoadGen's Server and Offline scenarios, where the 'loadgen' extra is installed (said if not)."""
    import importlib.util

    if importlib.util.find_spec("mlperf_loadgen") is None:
        console.print("[yellow]Skipping the LoadGen scenarios: mlperf_loadgen is not installed "
                      "(pip install 'segbench[loadgen]').[/yellow]")
        return ()
    return ("server", "offline")


DEMO_STUDY = Path(__file__).resolve().parents[2] / "studies" / "demo.toml"


def run_demo_study(out: str | Path, quick: bool = False, console: Console | None = None,
                   workers: int | None = None) -> dict:
    """The demo study (``studies/demo.toml``) on synthetic scenes made in ``out/data``.

    ``quick`` shrinks it for the tests: two networks, two engines, a few iterations. ``workers``
    runs its cells on a local Dask cluster of that many processes.
    """
    import dataclasses

    from segbench.bench.report import console as make_console
    from segbench.study.run import run_study
    from segbench.study.studyfile import load_study
    from segbench.train.synth import SynthOptions, synthesize_dataset

    console = console or make_console()
    if not DEMO_STUDY.is_file():
        raise InputError(f"The demo study {DEMO_STUDY} is missing; run the demo from a segbench checkout.")
    study = load_study(DEMO_STUDY)
    out = Path(out).resolve()
    data = out / "data"
    if not (data / "dataset.json").is_file():
        console.rule("[bold]synthesizing scenes[/bold]")
        synthesize_dataset(data, SynthOptions(train=2 if quick else 4, val=1, test=1, size=256,
                                              test_size=256 if quick else 512))
    dataset = dataclasses.replace(study.datasets[0], path=data)
    study = dataclasses.replace(study, out=out / "study", datasets=(dataset,))
    if quick:
        study = dataclasses.replace(
            study, networks=study.networks[:2], engines=study.engines[:2],
            recipe=dataclasses.replace(study.recipe, iters=4))
    started = time.perf_counter()
    report = run_study(study, console=console, workers=workers)
    console.print(f"\n[bold]Demo study finished in {time.perf_counter() - started:.0f} s.[/bold] "
                  f"Everything is in [bold]{out}[/bold].")
    return report
