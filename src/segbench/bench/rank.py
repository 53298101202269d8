"""Which engines are practical: qualify against the reference, rank by throughput, mark the Pareto front."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from segbench.bench.model import EngineRow, Provenance, Ranking


@dataclass(frozen=True)
class RankRule:
    """An engine qualifies when its mIoU is at least ``ratio`` x the reference's
    (the MLPerf rule) and it fits the optional latency and memory budgets."""

    reference: str = "torch-fp32"
    ratio: float = 0.99
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None
    by: str = "throughput"  # or "server": Server QPS under the p99 bound (LoadGen)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_report(cls, report: Provenance) -> RankRule:
        """The rule a report was ranked by: its ``ranking``, else read from its bench configuration."""
        if report.ranking is not None:
            return cls(**report.ranking.model_dump())
        config = getattr(report, "config", None)  # a bench report's settings; a study has none
        if config is None:
            return cls()
        memory_mb = config.max_memory_mb
        return cls(config.reference or cls.reference, config.min_ratio or cls.ratio,
                   config.max_latency_ms, int(memory_mb * 2**20) if memory_mb else None)

    def to_model(self) -> Ranking:
        return Ranking(**asdict(self))

    def text(self) -> str:
        parts = [f"An engine qualifies when its mIoU is at least {self.ratio:.0%} of "
                 f"{self.reference}'s (the MLPerf rule)"]
        if self.max_latency_ms is not None:
            parts.append(f"its p50 tile latency is at most {self.max_latency_ms:g} ms")
        if self.max_memory_bytes is not None:
            parts.append(f"its peak memory is at most {self.max_memory_bytes / 2**20:.0f} MiB")
        order = ("Server QPS under the p99 bound (LoadGen)" if self.by == "server"
                 else "scene throughput (MP/s)")
        return (", ".join(parts) + f". Qualified engines are ranked by {order}; "
                "* marks the Pareto front of p50 latency against mIoU.")


def rank(rows: list[EngineRow], rule: RankRule) -> list[EngineRow]:
    """Annotate engine rows (in place) with ``qualified``, ``rank``, ``pareto`` and ``rank_reason``."""
    ok = [r for r in rows if r.ok]
    ref = next((r for r in ok if r.name == rule.reference), None)
    ref_miou = ref.miou if ref else None
    for r in rows:
        r.qualified, r.rank, r.pareto, r.rank_reason = False, None, False, None
        if not r.ok:
            r.rank_reason = r.reason or r.status
            continue
        r.rank_reason = _unqualified(r, rule, ref_miou)
        if r.rank_reason is None:
            r.qualified = True
            if ref_miou is None or r.miou is None:
                r.rank_reason = "no accuracy to compare: qualified on budgets only"
    for i, r in throughput_order(ok, rule.by):
        r.rank = i
    for r in pareto_front(ok):
        r.pareto = True
    return rows


def throughput_order(rows: list[EngineRow], by: str = "throughput") -> list[tuple[int, EngineRow]]:
    """The qualified rows, fastest first, numbered from 1: by scene throughput, or (``by="server"``)
    by Server QPS under the bound, rows without one last in scene throughput's order."""
    def speed(r: EngineRow) -> tuple[float, float]:
        return (-(r.server_qps or 0.0) if by == "server" else 0.0, -(r.megapixels_per_s or 0.0))

    return list(enumerate(sorted((r for r in rows if r.qualified), key=speed), 1))


def _unqualified(row: EngineRow, rule: RankRule, ref_miou: float | None) -> str | None:
    """Why ``row`` does not qualify under ``rule``; None when it does."""
    miou, latency, memory = row.miou, row.p50_ms, row.peak_rss_bytes
    if ref_miou is not None and miou is not None and miou < rule.ratio * ref_miou:
        return f"mIoU {miou:.4f} < {rule.ratio:.0%} of {rule.reference}"
    if rule.max_latency_ms is not None and (latency is None or latency > rule.max_latency_ms):
        return "over the latency budget"
    if rule.max_memory_bytes is not None and (memory is None or memory > rule.max_memory_bytes):
        return "over the memory budget"
    return None


def pareto_front(rows: list[EngineRow]) -> list[EngineRow]:
    """Rows not dominated in (p50 latency lower, mIoU higher); rows lacking either are left out."""
    pts = [(r, r.p50_ms, r.miou) for r in rows]
    pts = [(r, lat, miou) for r, lat, miou in pts if lat is not None and miou is not None]
    front = []
    for r, lat, miou in pts:
        dominated = any(
            (lat2 <= lat and miou2 >= miou) and (lat2 < lat or miou2 > miou)
            for _, lat2, miou2 in pts
        )
        if not dominated:
            front.append(r)
    return front
