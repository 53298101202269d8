"""The bench's and the study's reports as one typed model; every table, page and merge renders it.

``report.json`` and ``study.json`` are these objects as JSON. The bench and
the study produce them; ranking, the tables (terminal, Markdown, CSV, LaTeX),
the pages and ``segbench report``'s merging read them by attribute, never by
string path. A new metric is one field here and one
:class:`segbench.bench.columns.Column`.

Files carry a ``format`` version (:data:`FORMAT`). Files without one are the
first format, written before the model existed: they are read and upgraded
(:func:`upgrade`); a file of a later format is refused in one sentence. The
JSON Schemas shipped in ``segbench/schemas`` are generated from these classes
(:func:`json_schemas`; a test keeps them equal).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segbench.bench.loadgen_results import ScenarioResult
from segbench.errors import InputError

#: the report format this segbench writes; 1 is the unversioned format of before
FORMAT = 2

Status = Literal["ok", "skipped", "failed", "pending"]


class Record(BaseModel):
    """A part of a report: known fields only (a misspelt or foreign field is an error, not data)."""

    model_config = ConfigDict(extra="forbid")


# -- an engine's figures ---------------------------------------------------------------------------

class LatencyStats(Record):
    """Per-call latency in ms (:class:`segbench.bench.latency.LatencyStats`); tails None below their
    minimum sample count."""

    n: int
    mean: float
    std: float
    p50: float
    p90: float | None = None
    p99: float | None = None
    min: float
    max: float
    cv: float = 0.0


class Latency(Record):
    """Repeated calls on real tiles: at batch 1 and at the tiler's batch."""

    config: str | None = Field(None, description="how the engine was compiled to run, e.g. 'LATENCY'")
    batch1: LatencyStats
    batch: int
    at_batch: LatencyStats | None = Field(None, description="calls of `batch` tiles")
    per_tile_ms_at_batch: float | None = None
    noisy: bool = False


class Stages(Record):
    """Seconds each tiler stage spent over the scenes (they overlap in time)."""

    read: float = 0.0
    infer: float = 0.0
    blend: float = 0.0
    write: float = 0.0
    idle: float = 0.0


class SceneRun(Record):
    """Whole scenes through the tiler."""

    config: str | None = Field(None, description="how the engine ran scenes, e.g. 'THROUGHPUT, 2 requests'")
    seconds: float
    megapixels: float
    megapixels_per_s: float | None = None
    km2_per_h: float | None = None
    windows: int = 0
    skipped_windows: int = 0
    stages: Stages = Field(default_factory=Stages)
    outputs: list[str] = Field(default_factory=list, description="the label rasters written")


class GpuMemory(Record):
    device: str
    allocated_bytes: int
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    device_total_bytes: int


class Memory(Record):
    """The memory an engine's measuring process took (:mod:`segbench.bench.memory`)."""

    peak_rss_bytes: int | None = Field(None, description="the measuring process's peak resident set")
    children_peak_rss_bytes: int | None = Field(None, description="its child processes' peak, if any")
    gpu: GpuMemory | None = None
    engine_device_bytes: int | None = Field(None, description="what the engine holds on its device")


class ClassFigures(Record):
    """One class's figures as mmseg's IoUMetric computes them; None where undefined."""

    iou: float | None = Field(None, description="intersection over union")
    acc: float | None = Field(None, description="accuracy: the share of the class's pixels found")
    precision: float | None = None
    recall: float | None = Field(None, description="equal to acc, under its other name")
    f1: float | None = None
    pixels: int = Field(0, description="the class's labelled pixels")


class Accuracy(Record):
    """mmseg's metrics over whole scenes (None where undefined), and agreement with the reference."""

    miou: float | None = Field(None, description="mean IoU over the classes (the ranking's figure)")
    macc: float | None = None
    mf1: float | None = Field(None, description="mean F1 (the ISPRS papers' figure)")
    mprecision: float | None = None
    mrecall: float | None = None
    oa: float | None = Field(None, description="overall accuracy over every class (mmseg's aAcc)")
    kappa: float | None = Field(None, description="Cohen's kappa")
    pixels: int | None = Field(None, description="the labelled pixels scored")
    excluded_classes: list[str] = Field(default_factory=list)
    per_class: dict[str, ClassFigures] = Field(default_factory=dict)
    agreement: float | None = None
    confusion: list[list[int]] | None = None


class Seam(Record):
    """The pixels within ``band_px`` of a window border (the seams) against elsewhere."""

    band_px: int
    pixels_in_band: int
    differ_in_band: float | None = Field(None, description="share differing from the reference in the band")
    differ_elsewhere: float | None = None
    error_in_band: float | None = Field(None, description="share wrong against the labels in the band")
    error_elsewhere: float | None = None


class Disagreement(Record):
    """Where an engine's labels differ from the reference's (:mod:`segbench.bench.disagreement`)."""

    pixels: int
    differ: int
    share: float | None = None
    confusion: list[list[int]] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)
    seam: Seam | None = None
    maps: list[str] = Field(default_factory=list)


class BatchChoice(Record):
    """``--batch auto``'s sweep (:class:`segbench.engines.batchsize.BatchChoice`)."""

    batch: int
    tiles_per_s: dict[str, float] = Field(default_factory=dict)
    reused: bool = False
    seconds: float = 0.0
    stopped: str | None = None


class Scaling(Record):
    """The scenes in chunks on 1 and on ``workers`` Dask workers."""

    workers: int
    megapixels_per_s: dict[str, float | None]
    efficiency: float | None = None


class Cost(Record):
    """What a scene costs with this engine: area per hour, money per area, energy per area."""

    km2_per_h: float | None = Field(None, description="whole scenes, overlap included as the tiler runs")
    offline_km2_per_h: float | None = Field(None, description="Offline tiles/s x each window's new area")
    usd_per_1000_km2: float | None = Field(None, description="at --price-per-hour, from km2_per_h")
    joules_per_km2: float | None = None
    energy_source: str | None = Field(None, description="what measured the energy (RAPL, NVML)")
    energy_note: str | None = Field(None, description="why energy is not measured here")


class EngineRow(Record):
    """One engine of one bench: what it is, what it measured, how it ranks."""

    name: str
    backend: str | None = None
    precision: str | None = None
    device: str | None = None
    status: Status = "ok"
    reason: str | None = None
    inputs: str | None = Field(None, description="digest of everything the row depends on")
    log: str | None = None
    artifact: str | None = None
    artifact_bytes: int | None = None
    build_seconds: float | None = None
    precision_label: str | None = Field(None, description="what ran, e.g. 'int8 (2 fp32)'")
    int8: dict[str, Any] | None = Field(None, description="the int8 search's record (the spec's)")
    fp16: dict[str, Any] | None = Field(None, description="what an fp16 graph kept in float32")
    inference_precision: str | None = Field(None, description="what the runtime says really ran")
    batch_choice: BatchChoice | None = Field(None, description="--batch auto's sweep")
    latency: Latency | None = None
    scene: SceneRun | None = Field(None, description="whole scenes through the tiler")
    memory: Memory | None = None
    accuracy: Accuracy | None = Field(None, description="against the labels, or the reference's labels")
    disagreement: Disagreement | None = None
    scaling: Scaling | None = Field(None, description="the scenes in chunks on Dask workers")
    scenarios: list[ScenarioResult] = Field(default_factory=list, description="LoadGen's scenarios")
    cost: Cost | None = None
    # the ranking (segbench.bench.rank)
    qualified: bool = False
    rank: int | None = None
    pareto: bool = False
    rank_reason: str | None = None
    # where the row came from, in merged reports and studies
    machine: str | None = None
    model: str | None = Field(None, description="the model's architecture, in merged reports")
    network: str | None = Field(None, description="the study's network the row belongs to")
    family: str | None = Field(None, description="the network's family, in a study's tables")
    study_rank: int | None = None
    study_pareto: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def miou(self) -> float | None:
        return self.accuracy.miou if self.accuracy else None

    @property
    def p50_ms(self) -> float | None:
        """p50 latency of one tile at batch 1."""
        return self.latency.batch1.p50 if self.latency else None

    @property
    def megapixels_per_s(self) -> float | None:
        return self.scene.megapixels_per_s if self.scene else None

    @property
    def peak_rss_bytes(self) -> int | None:
        return self.memory.peak_rss_bytes if self.memory else None

    @property
    def outputs(self) -> list[str]:
        return self.scene.outputs if self.scene else []

    def scenario(self, name: str) -> ScenarioResult | None:
        """The row's result in LoadGen scenario ``name`` ("server", "offline", ...), if it ran."""
        return next((s for s in self.scenarios if s.scenario == name), None)

    @property
    def server_qps(self) -> float | None:
        """The highest Server QPS LoadGen found VALID under the p99 bound."""
        found = self.scenario("server")
        return found.figure if found and found.valid else None

    @property
    def label(self) -> str:
        """The engine's name, with its machine in a merged report."""
        return self.name + (f" [{self.machine}]" if self.machine else "")


# -- a bench report --------------------------------------------------------------------------------

class Gpu(Record):
    name: str
    cuda: str | None = None
    driver: str | None = None
    memory_bytes: int | None = None


class Machine(Record):
    """What ran the bench: CPU, cores, memory, GPU, library versions."""

    hostname: str = "?"
    cpu: str | None = Field(None, description="the CPU's model name")
    cores: int | None = None
    memory_bytes: int | None = Field(None, description="the machine's memory")
    platform: str | None = None
    python: str | None = Field(None, description="the Python version")
    gpu: Gpu | None = None
    libraries: dict[str, str] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short label: its GPU if any, else its CPU, and the host name."""
        what = self.gpu.name if self.gpu else f"{self.cpu or 'CPU'} x{self.cores or '?'}"
        return f"{self.hostname} ({what})"


class Ranking(Record):
    """The rule rows were ranked by (:class:`segbench.bench.rank.RankRule`)."""

    reference: str = "torch-fp32"
    ratio: float = 0.99
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None
    by: Literal["throughput", "server"] = "throughput"


class ModelInfo(Record):
    """The model every engine of a report was built from."""

    architecture: str
    classes: int | None = None
    class_names: list[str] = Field(default_factory=list)
    palette: list[list[int]] | None = None
    checkpoint_digest: str | None = None
    bands: int | None = None
    tile: int | None = None
    params: int | None = None
    gflops: float | None = None

    @property
    def line(self) -> str:
        """The model in one line: architecture, bands, tile, parameters and GFLOPs."""
        cost = f", {self.params / 1e6:.2f} M params" if self.params else ""
        cost += f", {self.gflops:.1f} GFLOPs/tile" if self.gflops else ""
        return f"{self.architecture} ({self.bands} bands, {self.tile}x{self.tile} tiles{cost})"


class Provenance(Record):
    """Which segbench wrote a report, when, on which machine (or, merged, which machines)."""

    format: int = FORMAT
    segbench: str | None = None
    created: str | None = None
    machine: Machine | None = None
    machines: list[Machine] | None = None
    merged_from: list[str | None] | None = None
    rule: str = ""
    ranking: Ranking | None = None

    @property
    def merged(self) -> bool:
        return self.machine is None

    @property
    def all_machines(self) -> list[Machine]:
        return self.machines or ([self.machine] if self.machine else [])

    def describe(self, kind: str) -> str:
        """The report in words, for messages: its machine, or how many machines it merges."""
        if self.machine is not None:
            return f"{kind} from {self.machine.label}"
        return f"merged {kind} of {len(self.machines or [])} machines"


class BenchSettings(Record):
    """The bench's inputs and options, flat (:meth:`segbench.bench.run.BenchConfig.to_dict`): the ones
    renderers read are typed, the rest kept as given."""

    model_config = ConfigDict(extra="allow")

    scenes: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    reference: str | None = None
    min_ratio: float | None = None
    max_latency_ms: float | None = None
    max_memory_mb: float | None = None


class Report(Provenance):
    """``report.json``: one model's engines measured (on one machine, or merged from several)."""

    config: BenchSettings = Field(default_factory=BenchSettings)
    model: ModelInfo | None = None
    engines: list[EngineRow] = Field(default_factory=list)

    @property
    def ok_rows(self) -> list[EngineRow]:
        return [r for r in self.engines if r.ok]

    @property
    def has_machines(self) -> bool:
        return any(r.machine for r in self.engines)

    def label(self) -> str:
        return self.describe("report")


# -- a study ---------------------------------------------------------------------------------------

class Network(Record):
    """One network of a study's dataset: its cost, its own evaluation and its engines' rows."""

    name: str
    family: str | None = Field(None, description="the catalogue's family: CNN context, transformer...")
    source: str | None = Field(None, description="trained, imported, or a bench report merged in")
    status: Status = "ok"
    reason: str | None = None
    params: int | None = None
    gflops: float | None = Field(None, description="per tile of the network's tile size")
    tile: int | None = None
    train_seconds: float | None = None
    accuracy: Accuracy | None = Field(None, description="its own evaluation on the scored split")
    engines: list[EngineRow] = Field(default_factory=list)
    engines_reason: str | None = Field(None, description="why the network has no engine rows")
    bench_seconds: float | None = Field(None, description="what its bench took ('study --plan')")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Dataset(Record):
    name: str
    path: str | None = None
    isprs: bool = False
    split: str | None = None
    classes: list[str] = Field(default_factory=list)
    excluded_classes: list[str] = Field(default_factory=list)
    networks: list[Network] = Field(default_factory=list)

    def engine_rows(self) -> list[EngineRow]:
        """Every engine row of every network of the dataset."""
        return [r for n in self.networks for r in n.engines]


class Study(Provenance):
    """``study.json``: networks x datasets x engines."""

    kind: Literal["study"] = "study"
    study: dict[str, Any] | None = Field(None, description="the study file, as read")
    datasets: list[Dataset] = Field(default_factory=list)

    @property
    def has_machines(self) -> bool:
        return any(r.machine for d in self.datasets for r in d.engine_rows())

    def label(self) -> str:
        return self.describe("study")


# -- reading and writing ---------------------------------------------------------------------------

def upgrade(data: dict) -> dict:
    """A first-format (unversioned) report or study as the current format: the latency at the
    tiler's batch was keyed ``batch<N>``; everything else is as it was."""
    data = dict(data)
    rows = data.get("engines") or []
    rows += [r for d in data.get("datasets") or [] for n in d.get("networks") or []
             for r in n.get("engines") or []]
    for row in rows:
        latency = row.get("latency")
        if isinstance(latency, dict) and "at_batch" not in latency:
            latency["at_batch"] = latency.pop(f"batch{latency.get('batch')}", None)
    data["format"] = FORMAT
    return data


def parse(data: object, source: str | os.PathLike[str]) -> Report | Study:
    """``data`` (as read from JSON) as a report or a study; one sentence when it is neither."""
    if not isinstance(data, dict) or ("engines" not in data and data.get("kind") != "study"):
        raise InputError(f"{source} is neither a segbench study report nor a bench report.")
    version = data.get("format", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise InputError(f"{source} is a report of format {version!r}, which this segbench (formats 1 to "
                         f"{FORMAT}) cannot read; read it with the segbench that wrote it, or a newer one.")
    if version < FORMAT:
        data = upgrade(json.loads(json.dumps(data)))
    kind = Study if data.get("kind") == "study" else Report
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{source} is not a valid segbench {'study' if kind is Study else 'report'} "
                         f"({where}: {first['msg']}).") from None


def read(path: str | os.PathLike[str]) -> Report | Study:
    """The report or study in ``path``; one sentence when it is missing, not JSON or not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"Report {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"Report {path} is not valid JSON ({exc}).") from None
    return parse(data, path)


def to_json(report: Report | Study) -> str:
    return report.model_dump_json(indent=2, exclude_none=False) + "\n"


#: where the JSON Schemas ship, inside the package
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def json_schemas() -> dict[str, str]:
    """The JSON Schemas of ``report.json`` and ``study.json`` as text, by file name."""
    def text(kind: type[BaseModel], title: str) -> str:
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **kind.model_json_schema()}
        schema["title"] = title
        return json.dumps(schema, indent=2, sort_keys=True) + "\n"

    return {"report.schema.json": text(Report, "segbench report.json"),
            "study.schema.json": text(Study, "segbench study.json")}


def write_schemas(folder: Path = SCHEMAS) -> list[Path]:
    """Write :func:`json_schemas` into ``folder`` (the shipped ones by default; a test keeps them
    equal to the model: run this after changing it)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in json_schemas().items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths
