"""What a LoadGen scenario run is given and what it gives back (:mod:`segbench.bench.scenarios` runs
them): its settings and seeds, the Server search's points, and the result. The bench's report
holds these objects as they are (:class:`segbench.bench.model.EngineRow`'s ``scenarios``),
validated and serialised by pydantic, so each field is defined once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pydantic import ConfigDict

from segbench.argfields import SCENARIO_NAMES
from segbench.errors import UsageError

SCENARIOS = SCENARIO_NAMES
#: queries LoadGen's early stopping needs for a p99 claim with no query over the bound
P99_MIN_QUERIES = 662
#: the seeds of every run (LoadGen's defaults are 0; these are recorded with each result)
SEEDS = {"qsl_rng_seed": 3066443479025735752, "sample_index_rng_seed": 10688027786191513374,
         "schedule_rng_seed": 14962580496170815977}
#: the dataclasses below, in a report: no field they do not name
STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ScenarioSettings:
    """One scenario's LoadGen settings, the batcher's, and how the engine is loaded.

    ``latency_bound_ms`` (server): the p99 bound; None: 10x the engine's batch-1
    median measured before the run. ``target_qps`` (server): one point at that
    QPS instead of a search; ``search_seconds``: the search's budget.
    ``capacity_qps``: where the search starts from (an Offline figure; None:
    measured). ``engine_mode``/``engine_batch``: how the engine is loaded
    (OpenVINO's throughput mode keeps several requests in flight, each of
    ``engine_batch`` tiles). ``workers``: the batcher's threads calling the engine
    (None: as many as the engine runs at once, its ``inflight``). ``stall_s``: a
    run whose answers stop coming for that long (or for ten full batches of the
    engine, if longer) fails (a batcher that drops requests), instead of hanging.
    ``on_device``: the samples kept on the engine's device and batched there
    (:class:`~segbench.batcher.DeviceBatcher`; engines with device tensors); None:
    where the engine is off the CPU, as the tiler decides.
    """

    __pydantic_config__ = STRICT

    scenario: str
    min_duration_ms: int = 10_000
    min_query_count: int = 100
    max_batch: int | None = None
    max_queue_ms: float = 2.0
    engine_mode: str = "latency"
    engine_batch: int | None = None
    workers: int | None = None
    on_device: bool | None = None
    threads: int | None = None
    samples_per_query: int = 8
    latency_bound_ms: float | None = None
    target_qps: float | None = None
    search_seconds: float = 120.0
    capacity_qps: float | None = None
    verify: bool = True
    stall_s: float = 30.0
    qsl_rng_seed: int = SEEDS["qsl_rng_seed"]
    sample_index_rng_seed: int = SEEDS["sample_index_rng_seed"]
    schedule_rng_seed: int = SEEDS["schedule_rng_seed"]

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise UsageError(f"Unknown scenario {self.scenario!r}; choose from {', '.join(SCENARIOS)}.")
        if self.latency_bound_ms is not None and not self.latency_bound_ms > 0:
            raise UsageError(f"The latency bound must be positive, not {self.latency_bound_ms} ms.")
        if self.search_seconds <= 0 or self.min_duration_ms < 0 or self.min_query_count < 1:
            raise UsageError("Scenario durations, budgets and query counts must be positive.")

    @classmethod
    def default(cls, scenario: str, **changes: Any) -> ScenarioSettings:
        """The defaults of ``scenario``: Server and Offline load the engine for throughput (OpenVINO:
        several one-tile requests in flight, a batch spread over them; measured with
        benchmarks/bench_scenarios.py, OpenVINO's latency mode fed varying batch sizes kept up with
        less than half the Server QPS); Server asks for enough queries for a p99 claim."""
        base: dict[str, Any] = {"max_queue_ms": 0.0}  # one query at a time: nothing to wait for
        if scenario in ("server", "offline", "accuracy"):
            base = {"engine_mode": "throughput", "engine_batch": 1}
        if scenario in ("server", "multi-stream"):
            base["min_query_count"] = P99_MIN_QUERIES
        if scenario == "server":
            base["min_duration_ms"] = 2_000
        return cls(scenario, **{**base, **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ServerPoint:
    """One Server run of a search: the offered QPS and what LoadGen measured there."""

    __pydantic_config__ = STRICT

    target_qps: float
    completed_qps: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    valid: bool
    queries: int
    mean_batch: float
    log_dir: str
    probe: bool = False  # a short run that only guided the search (never VALID)
    overlatency: int | None = None  # queries over the bound (LoadGen's early stopping counts them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerPoint:
        return cls(**data)


@dataclass(frozen=True)
class ScenarioResult:
    """One engine's result in one scenario, read from LoadGen's logs in ``log_dir``.

    ``figure`` is the scenario's headline in ``unit``: SingleStream p90 and
    MultiStream p99 in ms, Server's highest valid target QPS, Offline samples/s,
    AccuracyOnly the share of pixels equal to the engine run directly. ``figure``
    is None where no figure stands (``note`` says why: "no QPS meets p99 <= X ms").
    ``p50_ms``..``p99_ms`` are LoadGen's per-query latency percentiles (Offline:
    its one query's); ``samples`` the tiles the batcher ran, ``batch_histogram``
    the batch sizes it formed (Server: at the point reported).
    ``confusion`` (accuracy): ``ConfusionMatrix.counts`` from the accuracy log;
    ``direct_confusion``: the same tiles scored from the engine run directly.
    """

    __pydantic_config__ = STRICT

    engine: str
    scenario: str
    valid: bool
    figure: float | None
    unit: str
    settings: ScenarioSettings
    log_dir: str
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    target_qps: float | None = None
    latency_bound_ms: float | None = None
    queries: int = 0
    samples: int = 0
    batch_histogram: dict[int, int] = field(default_factory=dict)
    max_queue_depth: int = 0
    points: tuple[ServerPoint, ...] = ()
    confusion: tuple[tuple[int, ...], ...] | None = None
    direct_confusion: tuple[tuple[int, ...], ...] | None = None
    mismatched_tiles: tuple[int, ...] = ()
    note: str | None = None

    @property
    def mean_batch(self) -> float:
        n = sum(self.batch_histogram.values())
        return sum(k * v for k, v in self.batch_histogram.items()) / n if n else 0.0

    @property
    def accuracy_ok(self) -> bool:
        """AccuracyOnly: every tile answered once, scored the same as the engine run directly."""
        return self.valid and self.confusion is not None and self.confusion == self.direct_confusion

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = self.settings.to_dict()
        data["batch_histogram"] = {str(k): v for k, v in sorted(self.batch_histogram.items())}
        data["points"] = [p.to_dict() for p in self.points]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        data = dict(data)
        data["settings"] = ScenarioSettings.from_dict(data["settings"])
        data["batch_histogram"] = {int(k): int(v) for k, v in data.get("batch_histogram", {}).items()}
        data["points"] = tuple(ServerPoint.from_dict(p) for p in data.get("points", ()))
        for key in ("confusion", "direct_confusion"):
            if data.get(key) is not None:
                data[key] = tuple(tuple(int(x) for x in row) for row in data[key])
        data["mismatched_tiles"] = tuple(data.get("mismatched_tiles", ()))
        return cls(**data)
