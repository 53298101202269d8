"""How the bench measures: one options object for ``segbench bench``'s flags and a study's ``[bench]``.

The CLI reads its flags into :class:`BenchOptions` by field name, the study file
its ``[bench]`` table (:mod:`segbench.study.studyfile`), and a bench run
(:class:`segbench.bench.run.BenchConfig`) carries it beside its inputs (model,
engines, scenes, labels, calibration scenes, output folder).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from segbench.bench.rank import RankRule


@dataclass(frozen=True)
class BenchOptions:
    overlap: int | None = None  # window overlap in pixels (None: the tiler's default)
    blend: str = "cosine"
    batch: int | str = 4  # or "auto": each engine's fastest, measured (segbench.engines.batchsize)
    reference: str = "torch-fp32"
    min_ratio: float = 0.99  # an engine qualifies at this share of the reference's mIoU (MLPerf)
    max_latency_ms: float | None = None
    max_memory_mb: float | None = None
    calib_tiles: int = 32
    calib_method: str = "minmax"
    int8_target: float | bool | None = None  # what int8 keeps of its float mIoU (None: min_ratio;
    # False: plain int8, no search)
    explain: bool = False  # rank each int8 engine's layers by the damage they do
    maps: bool = False  # where each engine differs from the reference, as rasters beside its labels
    quick: bool = False  # fewer latency iterations (tests, the demo)

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
                        int(self.max_memory_mb * 2**20) if self.max_memory_mb else None)
