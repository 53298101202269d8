"""``segbench bench``: every engine through the tiler over labelled scenes, measured and ranked.

Each engine is built (or reused from the build cache), then measured in a
fresh child process so that engines never share a memory high-water mark:
a latency micro-benchmark on real tiles at batch 1 and at the tiler's batch,
then whole scenes through the tiler, scored against the labels with one
streaming confusion matrix, and against the reference engine's labels. The
report is rewritten after each engine, so an interrupted bench keeps what it
finished.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from segbench.bench.disagreement import AGREE_COLOUR, map_categories
from segbench.bench.energy import EnergyMeter
from segbench.bench.int8 import int8_setup
from segbench.bench.labels import check_labels
from segbench.bench.latency import P90_MIN_SAMPLES, time_callable
from segbench.bench.loadgen_results import ScenarioResult
from segbench.bench.memory import PeakMemory, describe, gpu_memory, run_in_child
from segbench.bench.metrics import AgreementCounter, ConfusionMatrix
from segbench.bench.model import (
    Accuracy,
    BatchChoice,
    Cost,
    Disagreement,
    EngineRow,
    GpuMemory,
    Latency,
    LatencyStats,
    Memory,
    ModelInfo,
    Report,
    Scaling,
    SceneRun,
    Stages,
)
from segbench.bench.options import BenchOptions
from segbench.bench.report import REPORT_SUFFIXES, load_report, provenance, rank_report, write_all, write_json
from segbench.bench.report import console as make_console
from segbench.bench.tables import render_table
from segbench.errors import InputError, SegbenchError
from segbench.export.qualify import chosen_line, precision_label
from segbench.files import atomic_output, sha256_bytes
from segbench.geo import style_labels
from segbench.raster import LABEL_NODATA, label_targets, open_raster, sample_tiles, scene_info
from segbench.signals import raise_if_pending
from segbench.spec import ModelSpec
from segbench.tiler import auto_batch
from segbench.tiler.fit import PixelsWarning, check_crs, check_gsd, check_pixels
from segbench.tiler.windows import stride_for

#: the Server scenario's p99 bound, when not given: this many times the first engine's batch-1 p50
SERVER_BOUND_FACTOR = 10
#: LoadGen's minimum duration and query count of a scenario run in quick benches (tests)
QUICK_DURATION_MS = 500
QUICK_QUERIES = 32


@dataclass(frozen=True)
class BenchConfig:
    """What to measure (the model, its engines, the scenes) and how (:class:`BenchOptions`)."""

    model: Path
    engines: list[str]
    scenes: list[Path]
    labels: list[Path] = field(default_factory=list)
    calib: list[Path] = field(default_factory=list)
    calib_labels: list[Path] = field(default_factory=list)  # the int8 target as mIoU on held-out tiles
    out: Path = Path("segbench-bench")
    isprs: bool = False  # mean F1 / mIoU without clutter, OA over all
    resume: bool = False  # keep the engines an earlier run of this report measured on the same inputs
    workers: int | None = None  # also run the scenes in chunks on 1 and on this many Dask workers
    options: BenchOptions = BenchOptions()

    @classmethod
    def flat(cls, **given) -> BenchConfig:
        """A config from its inputs and options side by side (``reference=..., batch=2``)."""
        options = {k: given.pop(k) for k in list(given) if k in BenchOptions.names()}
        return cls(**given, options=BenchOptions(**options))

    def to_dict(self) -> dict:
        """Flat, as the report's ``config``: the inputs and every option (the int8 target as a ratio)."""
        plain = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                 for k, v in asdict(self).items() if k != "options"}
        return {**plain, **asdict(self.options), "int8_target": self.options.int8_ratio}


def run_bench(config: BenchConfig, console: Console | None = None, show_table: bool = True,
              on_engine: Callable[[EngineRow], None] | None = None) -> Report:
    """Build, measure and rank every engine of ``config``; returns the report.

    ``on_engine`` is called with each engine's row as it is done (a study's
    progress); ``show_table`` prints the ranked table at the end.
    """
    run = BenchRun(config, console)
    rows: list[EngineRow] = []
    reference_labels: list[str] | None = None
    for name in run.order:  # the reference first, so the others can be compared with its labels
        raise_if_pending()
        row = run.kept(name) or run.measure(name, reference_labels)
        if name == config.options.reference and row.ok:
            reference_labels = row.outputs
        rows.append(row)
        run.write(rows)
        if on_engine is not None:
            on_engine(row)
    return run.finish(rows, show_table)


class BenchRun:
    """One bench in named steps: the checks (at creation), an engine's row kept from an earlier run
    or measured, the report of the rows so far, and its renderings at the end.

    A study on a Dask cluster measures each engine as its own task
    (:func:`measure_engine_task`), the reference first, and gathers the rows
    into the same report as :func:`run_bench` writes.
    """

    def __init__(self, config: BenchConfig, console: Console | None = None, checked: bool = False) -> None:
        """``checked``: the labels and the scenes' pixels were checked (and said) where the bench
        started; a task measuring one engine of it does not read them all again."""
        from segbench.engines.registry import get_kind

        self.config = config
        self.console = console or make_console()
        self.spec = ModelSpec.load(config.model)
        self.kinds = {name: get_kind(name) for name in config.engines}
        _check_scenes(config, self.spec)
        if config.options.scenarios:  # before any work: LoadGen missing is exit 3 with the install line
            from segbench.bench.scenarios import loadgen

            loadgen()
        _refuse_replacing_inputs(config, [k.name for k in self.kinds.values()])
        if not checked:
            self._check_inputs()
        self.rule = config.options.rule()
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.inputs = _inputs_key(config)
        self.previous = _previous_rows(self.out / "report.json") if config.resume else {}
        reference = config.options.reference
        self.order = sorted((k.name for k in self.kinds.values()), key=lambda n: n != reference)
        self._int8: tuple | None = None
        self._header: Report | None = None
        self._library = None  # the scenarios' sample library, read for the first engine that needs it
        self._bound_ms: float | None = None  # the Server p99 bound of every engine of the run

    def _check_inputs(self) -> None:
        """Ids outside the classes said, labels with no pixel to score refused; each scene's CRS,
        ground sample distance and pixels said once here (each engine's child stays quiet)."""
        check_labels(self.config.labels, self.spec)
        for scene in self.config.scenes:
            with open_raster(scene) as ds:
                info = scene_info(ds)
                check_crs(info)
                check_gsd(info, self.spec)
                check_pixels(ds, info, self.spec)

    def kept(self, name: str) -> EngineRow | None:
        """``name``'s row from an earlier run on the same inputs, if its labels are still there."""
        row = self.previous.get(name)
        if not _reusable(row, self.inputs):
            return None
        self.console.print(f"[green]{name}[/green]: kept from the earlier run: {_summary(row)}")
        return row

    def measure(self, name: str, reference_labels: list[str] | None) -> EngineRow:
        """Build ``name`` and measure it in a fresh process; a failure is a failed row."""
        from segbench.engines.registry import availability

        kind, console = self.kinds[name], self.console
        row = EngineRow(name=name, backend=kind.backend, precision=kind.precision, device=kind.device,
                        inputs=self.inputs)
        if (reason := availability(name)) is not None:
            console.print(f"[yellow]{name}: skipped: {reason}[/yellow]")
            return row.model_copy(update={"status": "skipped", "reason": reason})
        try:
            return row.model_copy(update=self._measure(name, reference_labels))
        except Exception as exc:  # noqa: BLE001  (one engine's failure is one failed row)
            row = row.model_copy(update={"status": "failed", "reason": describe(exc),
                                         "log": str(_error_log(self.out, name, exc))})
            console.print(f"[red]{name}: failed: {row.reason} (log: {row.log})[/red]")
        return row

    def _measure(self, name: str, reference_labels: list[str] | None) -> dict:
        """The measured fields of ``name``'s row (typed values, by field name)."""
        from segbench.engines.registry import build

        config, console, out, row = self.config, self.console, self.out, {}
        options = config.options
        calibration, int8 = self._calibration(self.kinds[name])
        notes: list[str] = []

        def note(line: str) -> None:
            notes.append(line)
            console.print(f"{name}: {line}")

        with console.status(f"building {name}"):
            artifact = build(config.model, name, out / "engines", calibration, options.calib_method,
                             int8=int8, note=note)
        built = ModelSpec.load(artifact)
        row.update(artifact=str(artifact), artifact_bytes=built.build.artifact_bytes,
                   build_seconds=built.build.build_seconds)
        if search := built.build.options.get("int8"):
            row["int8"] = search
            row["precision_label"] = precision_label(built.build.options)
            if not notes:  # a variant searched earlier: its record, as its search printed it
                for line in filter(None, (search.get("criterion"), chosen_line(search))):
                    console.print(f"{name}: {line}")
        elif "float32_nodes" in built.build.options:  # an fp16 graph: what stayed float32, and why
            kept = ("float32_nodes", "overflow_check", "sensitivity")
            row["fp16"] = {k: built.build.options[k] for k in kept if k in built.build.options}
        batch = options.batch
        if batch == "auto":  # in its own process: the sweep's engines stay out of the peak
            with console.status(f"choosing {name}'s batch size"):
                choice = run_in_child(auto_batch, str(artifact), [str(s) for s in config.scenes],
                                      options.overlap)
            row["batch_choice"] = BatchChoice(**choice.to_dict())
            batch = choice.batch
            console.print(f"{name}: {choice.describe()}")
        job = _Job(artifact=str(artifact), scenes=[str(s) for s in config.scenes],
                   labels=[str(p) for p in config.labels], reference_labels=reference_labels,
                   out_dir=str(out / name), overlap=options.overlap, blend=options.blend, batch=batch,
                   isprs=config.isprs, quick=options.quick, maps=options.maps)
        with console.status(f"measuring {name} (in a fresh process)"):
            row.update(run_in_child(measure_engine, job))
        if config.workers:
            with console.status(f"scaling {name} on 1 and {config.workers} Dask workers"):
                row["scaling"] = measure_scaling(artifact, config, batch, out / name)
            console.print(f"{name}: {_scaling_summary(row['scaling'])}")
        if options.scenarios and (not options.scenario_engines or name in options.scenario_engines):
            row["scenarios"] = self._scenarios(name, artifact, batch, row["latency"].batch1.p50)
        row["cost"] = self._cost(row["scene"], row.pop("energy"), row.get("scenarios") or [])
        console.print(f"[green]{name}[/green]: {_summary(EngineRow(name=name, **row))}")
        if row["latency"].noisy:
            console.print(f"[yellow]{name}: latency varies by more than 10% between runs (coefficient "
                          "of variation); the machine may be busy.[/yellow]")
        return row

    def _scenarios(self, name: str, artifact: Path, batch: int, p50_ms: float) -> list[ScenarioResult]:
        """LoadGen's scenarios of ``name`` (each in a child process), on the bench's windows."""
        from segbench.bench.samples import sample_library
        from segbench.bench.scenarios import run_scenarios

        options, console = self.config.options, self.console
        if self._library is None:
            self._library = sample_library(self.config.scenes, self.spec, options.overlap, self.config.labels)
        if self._bound_ms is None:  # one bound for every engine: given, or 10x the first one's tile
            self._bound_ms = options.server_latency_ms or SERVER_BOUND_FACTOR * p50_ms
        settings = [_settings(scenario, options, batch, self._bound_ms) for scenario in options.scenarios]
        with console.status(f"{name}: LoadGen {', '.join(options.scenarios)} (in a fresh process each)"):
            results = run_scenarios(artifact, self._library.tiles, self.out, settings, self._library.targets)
        for found in results:
            console.print(f"{name}: {_scenario_summary(found)}")
        return results

    def _cost(self, scene: SceneRun, energy, scenarios: list[ScenarioResult]) -> Cost:
        """What a scene costs with the engine: km^2 per hour (whole scenes; Offline x each window's new
        area), US dollars per 1,000 km^2 at ``--price-per-hour``, energy per km^2 where measured."""
        options = self.config.options
        # the scenes' area, from what the measuring child already read (no scene opened again)
        area = scene.km2_per_h * scene.seconds / 3600 if scene.km2_per_h else None
        offline = next((s.figure for s in scenarios if s.scenario == "offline" and s.valid), None)
        pixel_m2 = area * 1e6 / (scene.megapixels * 1e6) if area and scene.megapixels else None
        stride = stride_for(self.spec.tile, options.overlap, default=self.spec.stride)
        km2_h = scene.km2_per_h
        return Cost(
            km2_per_h=km2_h,
            offline_km2_per_h=offline * stride**2 * pixel_m2 * 3600 / 1e6 if offline and pixel_m2 else None,
            usd_per_1000_km2=(options.price_per_hour / km2_h * 1000
                              if options.price_per_hour is not None and km2_h else None),
            joules_per_km2=energy.joules / area if energy.joules is not None and area else None,
            energy_source=energy.source, energy_note=energy.note)

    def _calibration(self, kind) -> tuple:
        """The calibration tiles and int8 request, made once for the first engine that needs them
        (int8 graphs, and fp16's overflow check)."""
        config = self.config
        if kind.graph not in ("int8", "fp16") or not config.calib:
            return None, None
        if self._int8 is None:
            options = config.options
            self._int8 = int8_setup(self.spec, config.calib, config.calib_labels, options.calib_tiles,
                                    options.int8_ratio, options.explain, _excluded(config, self.spec),
                                    options.int8_method)
            int8_engines = any(k.graph == "int8" for k in self.kinds.values())
            if int8_engines and options.int8_ratio is not None and not config.calib_labels:
                self.console.print("int8: no labels for the calibration scenes (--calib-labels): the int8 "
                                   "criterion scores the int8 labels against the float graph's")
        return self._int8

    def report(self, rows: list[EngineRow]) -> Report:
        """The ranked report of ``rows`` (in :attr:`order`)."""
        if self._header is None:  # the machine, versions, options and model, described once
            spec, config = self.spec, self.config
            options = spec.build.options if spec.build else {}
            model = ModelInfo(architecture=spec.architecture, classes=spec.num_classes,
                              class_names=list(spec.classes), palette=[list(c) for c in spec.palette],
                              checkpoint_digest=spec.checkpoint_digest, bands=spec.num_bands,
                              tile=spec.tile, params=options.get("params"), gflops=options.get("gflops"))
            self._header = Report(**provenance(), config=config.to_dict(), rule=self.rule.text(),
                                  ranking=self.rule.to_model(), model=model)
        report = self._header.model_copy(deep=True, update={"engines": [r.model_copy() for r in rows]})
        return rank_report(report)

    def write(self, rows: list[EngineRow]) -> Report:
        """``report.json`` of the rows so far (rewritten after each engine: an interrupted bench keeps
        what it finished)."""
        report = self.report(rows)
        write_json(report, self.out / "report.json")
        return report

    def finish(self, rows: list[EngineRow], show_table: bool = True) -> Report:
        """The report and its renderings (table, page); the table printed when ``show_table``."""
        report = self.write(rows)
        paths = write_all(report, self.out)
        if show_table:
            self.console.print(render_table(report))
            self.console.print(f"Report: {', '.join(str(p) for p in paths)}")
        return report


def measure_engine_task(config: BenchConfig, name: str, reference: EngineRow | None) -> EngineRow:
    """One engine's row, measured where this runs (a Dask worker), compared with the ``reference``
    engine's row when it is given and ok; quiet, its failure a failed row."""
    labels = reference.outputs if reference and reference.ok else None
    return BenchRun(config, Console(quiet=True), checked=True).measure(name, labels)


def _inputs_key(config: BenchConfig) -> str:
    """What an engine's row depends on: the model file, scenes, labels, calibration and every option."""
    from segbench.files import sha256_file

    def stamp(paths) -> list:
        return [(str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]

    fields = config.to_dict()
    for key in ("out", "engines", "resume"):
        fields.pop(key)
    fields.update(model=sha256_file(config.model), scenes=stamp(config.scenes),
                  labels=stamp(config.labels), calib=stamp(config.calib),
                  calib_labels=stamp(config.calib_labels))
    return sha256_bytes(json.dumps(fields, sort_keys=True).encode())[:16]


def _previous_rows(path: Path) -> dict[str, EngineRow]:
    """The engine rows of an earlier report at ``path``, by engine name (none if it is unreadable)."""
    try:
        return {r.name: r for r in load_report(path).engines}
    except (SegbenchError, OSError):
        return {}


def _reusable(row: EngineRow | None, inputs: str) -> bool:
    """An earlier row measured on the same inputs, whose label rasters are still there."""
    return bool(row and row.ok and row.inputs == inputs and all(Path(p).is_file() for p in row.outputs))


def _excluded(config: BenchConfig, spec: ModelSpec) -> tuple[str, ...]:
    """Classes left out of the mean IoU: clutter under the ISPRS convention."""
    return ("clutter",) if config.isprs and "clutter" in spec.classes else ()


def _error_log(out: Path, name: str, exc: Exception) -> Path:
    """Write the full traceback of an engine's failure (the measuring child's, when it failed there)."""
    path = out / f"{name}.error.log"
    details = getattr(exc, "details", "") or "".join(traceback.format_exception(exc))
    with atomic_output(path) as tmp:
        tmp.write_text(f"{name}: {describe(exc)}\n\n{details}")
    return path


def _settings(scenario: str, options: BenchOptions, batch: int, bound_ms: float):
    """LoadGen's settings of one scenario of the bench: the batcher up to the engine's batch, the
    Server search under the run's one bound; the other scenarios run at most a third of the Server
    budget (``--scenario-seconds``) beyond their queries. Quick benches (the tests) run 0.5 s and 32
    queries per scenario and Server point: too few for LoadGen to call a Server point VALID, which
    the row then says instead of claiming a figure."""
    from segbench.bench.scenarios import ScenarioSettings

    if options.quick:
        changes = {"min_duration_ms": QUICK_DURATION_MS, "min_query_count": QUICK_QUERIES}
    elif scenario != "server":
        default = ScenarioSettings.default(scenario).min_duration_ms
        changes = {"min_duration_ms": int(min(default, 1000 * options.scenario_seconds / 3))}
    else:
        changes = {}
    return ScenarioSettings.default(scenario, max_batch=batch, max_queue_ms=options.max_queue_ms,
                                    search_seconds=options.scenario_seconds,
                                    latency_bound_ms=bound_ms if scenario == "server" else None, **changes)


def _scenario_summary(found: ScenarioResult) -> str:
    """One line on a scenario's result: its figure, or why it has none."""
    where = f" (logs: {found.log_dir})"
    if found.valid and found.figure is not None:
        extra = (f", p99 {found.p99_ms:.0f} ms, mean batch {found.mean_batch:.1f}"
                 if found.scenario == "server" and found.p99_ms is not None else "")
        return f"{found.scenario} {found.figure:.1f} {found.unit}{extra}{where}"
    return f"{found.scenario}: {found.note or 'INVALID (too few queries for a figure)'}{where}"


def _summary(row: EngineRow) -> str:
    parts = [f"mIoU {100 * row.miou:.2f}%"] if row.miou is not None else []
    parts.append(f"p50 {row.p50_ms:.1f} ms")
    parts.append(f"{row.megapixels_per_s:.2f} MP/s")
    return ", ".join(parts)


def measure_scaling(artifact: Path, config: BenchConfig, batch: int, folder: Path) -> Scaling:
    """The scenes in chunks on a LocalCluster of 1 and of ``config.workers`` workers (one thread
    each, the cores shared): MP/s at each and the efficiency, ``rate(N) / (N * rate(1))``."""
    from segbench.cluster import dask_client, segment_on_cluster

    megapixels = {}
    rates = {}
    for n in sorted({1, config.workers}):
        with dask_client(workers=n) as client:
            results = segment_on_cluster(client, config.scenes, artifact, folder / f"workers-{n}",
                                         overlap=config.options.overlap, blend=config.options.blend,
                                         batch=batch, progress=False)
        seconds = sum(r.seconds for r in results)
        megapixels[n] = sum(r.megapixels for r in results)
        rates[n] = megapixels[n] / seconds if seconds else None
        shutil.rmtree(folder / f"workers-{n}", ignore_errors=True)  # the labels were measured, not kept
    n = config.workers
    efficiency = rates[n] / (n * rates[1]) if rates[1] and rates[n] else None
    return Scaling(workers=n, megapixels_per_s={str(k): v for k, v in rates.items()}, efficiency=efficiency)


def _scaling_summary(scaling: Scaling) -> str:
    rates, n = scaling.megapixels_per_s, scaling.workers
    return (f"{rates['1']:.2f} MP/s on 1 Dask worker, {rates[str(n)]:.2f} on {n} "
            f"(efficiency {100 * (scaling.efficiency or 0):.0f}%)")


def _refuse_replacing_inputs(config: BenchConfig, engines: list[str]) -> None:
    """Before any work: everything the bench writes in its folder (the report and its renderings, the
    engines' logs, the folders of built engines and of each engine's labels) can be written there
    (:func:`segbench.files.check_output`) and replaces no input."""
    from segbench.files import check_output
    from segbench.protect import Inputs

    out = Path(config.out)
    files = [*(out / f"report{s}" for s in REPORT_SUFFIXES), *(out / f"{name}.error.log" for name in engines)]
    inputs = Inputs().add_artifact(config.model)
    for raster in (*config.scenes, *config.labels, *config.calib, *config.calib_labels):
        inputs.add_raster(raster)
    inputs.refuse([out, *files])
    for folder in ("engines", *engines):
        inputs.refuse_folder(out / folder)
    check_output(out, folder=True, create=True)
    for path in files:
        check_output(path, create=True)
    for folder in ("engines", *engines):
        check_output(out / folder, folder=True, create=True)


def _check_scenes(config: BenchConfig, spec: ModelSpec) -> None:
    """Scenes exist, have the model's bands, and each label raster lies on its scene's grid."""
    if not config.scenes:
        raise InputError("Give at least one scene to benchmark on.")
    if config.labels and len(config.labels) != len(config.scenes):
        raise InputError(f"Give one label raster per scene ({len(config.scenes)} scenes, "
                         f"{len(config.labels)} label rasters).")
    from segbench.raster import check_bands

    for i, scene in enumerate(config.scenes):
        with open_raster(scene) as ds:
            info = scene_info(ds)
        check_bands(info, spec)
        if config.labels:
            with open_raster(config.labels[i]) as lb:
                if (lb.width, lb.height) != (info.width, info.height) or \
                        lb.transform != info.transform or lb.crs != info.crs:
                    raise InputError(
                        f"Label raster {config.labels[i]} does not align with scene {scene} "
                        "(size, transform or CRS differ)."
                    )


@dataclass(frozen=True)
class _Job:
    artifact: str
    scenes: list[str]
    labels: list[str]
    reference_labels: list[str] | None
    out_dir: str
    overlap: int | None
    blend: str
    batch: int
    isprs: bool
    quick: bool
    maps: bool = False  # write where it differs from the reference beside its labels


def measure_engine(job: _Job) -> dict:
    """Run in a child process: latency micro-benchmark, whole scenes, accuracy, memory."""
    from segbench.engines.registry import load
    from segbench.tiler import segment

    warnings.filterwarnings("ignore", category=PixelsWarning)  # the parent said it once per scene

    with PeakMemory() as mem:
        engine = load(job.artifact)
        spec = engine.spec
        tiles = sample_tiles(job.scenes[:1], spec, count=job.batch, seed=1)
        if job.quick:
            iters = iters1 = dict(warmup=1, min_iters=3, min_seconds=0.2)
        else:  # batch 1 runs enough calls for its p90 (in the table) to be stated
            iters = dict(warmup=3, min_iters=10, min_seconds=2.0)
            iters1 = {**iters, "min_iters": P90_MIN_SAMPLES}
        one = tiles[:1].copy()
        batch1 = time_callable(lambda: engine.infer(one), **iters1)
        batchb = time_callable(lambda: engine.infer(tiles), **iters)
        latency_config = engine.config
        engine = _for_scenes(engine, job.artifact, job.batch)
        os.makedirs(job.out_dir, exist_ok=True)
        results = []
        with EnergyMeter() as meter:
            for scene in job.scenes:
                dest = Path(job.out_dir) / f"{Path(scene).stem}.labels.tif"
                results.append(segment(scene, engine, dest, overlap=job.overlap, blend=job.blend,
                                       batch=job.batch))
                style_labels(dest, spec.classes, spec.palette)
        gpu = gpu_memory()
        device_memory = engine.device_memory_bytes
        inference_precision = engine.inference_precision
        scene_config = engine.config
        engine.close()
    accuracy = _score(job, spec, [r.output for r in results])
    differ = _disagreement(job, spec, [r.output for r in results])
    seconds = sum(r.seconds for r in results)
    megapixels = sum(r.megapixels for r in results)
    area = _area_km2(job.scenes)
    stages = Stages(**{k: sum(getattr(r.stages, k) for r in results) for k in Stages.model_fields})
    at_batch = LatencyStats(**batchb.to_dict())
    return {
        "latency": Latency(config=latency_config, batch1=LatencyStats(**batch1.to_dict()), batch=job.batch,
                           at_batch=at_batch, per_tile_ms_at_batch=batchb.p50 / job.batch,
                           noisy=batch1.noisy or batchb.noisy),
        "scene": SceneRun(config=scene_config, seconds=seconds, megapixels=megapixels,
                          megapixels_per_s=megapixels / seconds if seconds else None,
                          km2_per_h=area / seconds * 3600 if area and seconds else None,
                          windows=sum(r.windows for r in results),
                          skipped_windows=sum(r.skipped for r in results), stages=stages,
                          outputs=[r.output for r in results]),
        "memory": Memory(peak_rss_bytes=mem.peak_rss_bytes,
                         children_peak_rss_bytes=mem.children_peak_rss_bytes or None,
                         gpu=GpuMemory(**gpu) if gpu else None, engine_device_bytes=device_memory),
        "accuracy": accuracy,
        "inference_precision": inference_precision or None,
        "disagreement": differ,
        "energy": meter.energy,  # the scenes' (the parent turns it into the row's cost)
    }


def _disagreement(job: _Job, spec: ModelSpec, outputs: list[str]) -> Disagreement | None:
    """Where this engine's labels differ from the reference's (maps with ``job.maps``), the
    confusion and the seam band (:mod:`segbench.bench.disagreement`); the reference itself gets its
    seam band against the ground truth (None without labels)."""
    reference = job.reference_labels
    if not reference and not job.labels:
        return None
    from segbench.bench.disagreement import Disagreement as Counter
    from segbench.bench.disagreement import compare_scene
    from segbench.tiler import stride_for

    found = Counter(spec.classes)
    step = stride_for(spec.tile, job.overlap, default=spec.stride)
    for i, mine in enumerate(outputs):
        truth = job.labels[i] if job.labels else None
        theirs = reference[i] if reference else mine  # the reference against itself: the seams only
        compare_scene(found, mine, theirs, spec, spec.tile, step, truth,
                      write_map=job.maps and bool(reference))
    if job.maps:
        for path in found.maps:
            style_labels(path, map_categories(spec.classes), [AGREE_COLOUR, *spec.palette])
    return Disagreement(**found.to_dict())


def _for_scenes(engine, artifact: Path, batch: int):
    """The engine to run whole scenes with: reloaded in throughput mode where that compiles differently.

    The latency figures come from the engine as loaded (one call at a time);
    the latency engine is closed first, so the two are never loaded at once.
    """
    from segbench.engines.registry import load

    if not type(engine).tuned_for(batch):
        return engine
    engine.close()
    return load(artifact, mode="throughput", batch=batch)


def _score(job: _Job, spec: ModelSpec, outputs: list[str]) -> Accuracy | None:
    """Metrics over whole stitched scenes (with labels) and agreement with the reference's labels
    (with or without labels); None when there is neither."""
    if not job.labels and not job.reference_labels:
        return None
    cm = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    agree = AgreementCounter()
    for i, pred_path in enumerate(outputs):
        label_path = job.labels[i] if job.labels else None
        ref_path = job.reference_labels[i] if job.reference_labels else None
        with open_raster(pred_path) as pred:
            lab = open_raster(label_path) if label_path else None
            ref = open_raster(ref_path) if ref_path else None
            try:
                for _, window in pred.block_windows(1):
                    p = pred.read(1, window=window)
                    valid = p != LABEL_NODATA
                    if lab is not None:
                        cm.update(p, label_targets(lab.read(1, window=window), lab.nodata, valid,
                                                   spec.ignore_index, spec.reduce_zero_label))
                    if ref is not None:
                        agree.update(p, ref.read(1, window=window), valid)
            finally:
                for ds in (lab, ref):
                    if ds is not None:
                        ds.close()
    if not job.labels:
        return Accuracy(agreement=agree.value)
    exclude = ("clutter",) if job.isprs and "clutter" in spec.classes else ()  # as _excluded
    return Accuracy(**cm.metrics(spec.classes, exclude), agreement=agree.value,
                    confusion=cm.counts.tolist())


def _area_km2(scenes: list[str]) -> float | None:
    total = 0.0
    for scene in scenes:
        with open_raster(scene) as ds:
            info = scene_info(ds)
        if info.pixel_area_m2 is None:
            return None
        total += info.pixel_area_m2 * info.width * info.height / 1e6
    return total
