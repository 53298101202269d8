"""How the bench measures: one options object for ``segbench bench``'s flags and a study's ``[bench]``.

Each option is defined once, here (the tiling ones in
:class:`segbench.tiler.options.TilingOptions`): its default, its type and its
help. The CLI's options are generated from these fields
(:func:`segbench.argfields.add_options`), the study file fills its ``[bench]``
table into the same object (:mod:`segbench.study.studyfile`, where a study
turns :data:`STUDY_DEFAULTS` on), and a bench run
(:class:`segbench.bench.run.BenchConfig`) carries it beside its inputs (model,
engines, scenes, labels, calibration scenes, output folder).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from segbench.argfields import bounded, names, option, positive, ratio_or_off, scenario_names
from segbench.bench.rank import RankRule
from segbench.export.qualify import DEFAULT_INT8_METHOD, INT8_METHODS
from segbench.export.quantize import CALIBRATION_METHODS
from segbench.tiler.options import TilingOptions

INT8 = "int8 engines"  # the argument group of the int8 options (bench and build)
SCENARIOS = "production scenarios (MLPerf LoadGen)"


@dataclass(frozen=True)
class BenchOptions(TilingOptions):
    reference: str = option("torch-fp32", help="reference engine")
    min_ratio: float = option(0.99, help="qualify at this fraction of the reference's mIoU (MLPerf's)")
    max_latency_ms: float | None = option(None, help="latency budget per tile")
    max_memory_mb: float | None = option(None, help="peak memory budget")
    calib_tiles: int = option(32, parse=positive, group=INT8, help="calibration tiles")
    calib_method: str = option("minmax", choices=CALIBRATION_METHODS, group=INT8,
                               help="how int8 calibration sets the activations' ranges")
    # None: min_ratio; False: plain int8, no search
    int8_target: float | bool | None = option(
        None, parse=ratio_or_off, metavar="RATIO|off", group=INT8, default_help="the --min-ratio",
        help="what an int8 engine keeps of its float graph on held-out calibration scenes, as the "
             "ranking's rule does: that share of its mIoU against --calib-labels, else of the mIoU of its "
             "labels scored against the float graph's (with a margin for the held-out sample); layers go "
             "back to float until it does; 'off': plain int8")
    int8_method: str = option(
        DEFAULT_INT8_METHOD, choices=INT8_METHODS, group=INT8,
        help="how openvino-int8's graph is found: segbench's search, NNCF's quantize_with_accuracy_control "
             "under the same criterion on the same held-out tiles, or both (the better kept, the record says "
             "which and why); the other int8 engines always use the search")
    explain: bool = option(False, group=INT8,
                           help="rank the quantized layers of each int8 engine by the damage they do and "
                                "report the worst (kept in its spec and the bench report)")
    maps: bool = option(False, help="write where each engine's labels differ from the reference's, beside "
                                    "its labels (<scene>.disagreement.tif, styled for QGIS)")
    scenarios: tuple[str, ...] = option(
        (), parse=scenario_names, metavar="NAME[,NAME]", group=SCENARIOS,
        default_help="none: latency and whole scenes only",
        help="MLPerf scenarios LoadGen runs each engine in: single-stream, multi-stream, server, offline, "
             "accuracy (logs in <out>/<engine>/loadgen/<scenario>/)")
    scenario_engines: tuple[str, ...] = option(
        (), parse=names, metavar="ENGINE[,ENGINE]", group=SCENARIOS, default_help="every engine",
        help="run the scenarios for these engines only (each Server search takes minutes on a slow one)")
    server_latency_ms: float | None = option(
        None, parse=bounded(0.1, 60_000.0), group=SCENARIOS, default_help="10x the first engine's p50",
        help="the Server scenario's p99 bound, one for every engine of the run (ms)")
    scenario_seconds: float = option(60.0, parse=bounded(1.0, 3600.0), group=SCENARIOS,
                                     help="the time budget of each engine's Server QPS search (s)")
    max_queue_ms: float = option(2.0, parse=bounded(0.0, 1000.0), group=SCENARIOS,
                                 help="the longest a request waits in the dynamic batcher for others (ms)")
    rank_by: str = option("throughput", choices=("throughput", "server"),
                          help="rank qualified engines by whole-scene MP/s, or by Server QPS under the bound")
    price_per_hour: float | None = option(None, parse=bounded(0.0, 1e6), metavar="USD",
                                          help="the machine's price per hour: the table gains $/1000 km²")
    quick: bool = False  # fewer latency iterations (tests, the demo); not on the command line

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @property
    def int8_ratio(self) -> float | None:
        """The int8 target as a ratio, or None for plain int8 (no search)."""
        if self.int8_target is False:
            return None
        return self.min_ratio if self.int8_target in (None, True) else float(self.int8_target)

    def rule(self) -> RankRule:
        """The ranking rule these options give."""
        return RankRule(self.reference, self.min_ratio, self.max_latency_ms,
                        int(self.max_memory_mb * 2**20) if self.max_memory_mb else None, self.rank_by)


#: what a study's ``[bench]`` turns on where the command line does not: a study's tables link each
#: engine's disagreement maps
STUDY_DEFAULTS = {"maps": True}
