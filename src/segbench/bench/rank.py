"""Which engines are practical: qualify against the reference, rank by throughput, mark the Pareto front."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class RankRule:
    """An engine qualifies when its mIoU is at least ``ratio`` x the reference's
    (the MLPerf rule) and it fits the optional latency and memory budgets."""

    reference: str = "torch-fp32"
    ratio: float = 0.99
    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_report(cls, report: dict) -> RankRule:
        """The rule a report was ranked by: its ``ranking``, else read from its bench configuration."""
        if report.get("ranking"):
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in report["ranking"].items() if k in names})
        config = report.get("config") or {}
        memory_mb = config.get("max_memory_mb")
        return cls(config.get("reference", cls.reference), config.get("min_ratio", cls.ratio),
                   config.get("max_latency_ms"), int(memory_mb * 2**20) if memory_mb else None)

    def text(self) -> str:
        parts = [f"An engine qualifies when its mIoU is at least {self.ratio:.0%} of "
                 f"{self.reference}'s (the MLPerf rule)"]
        if self.max_latency_ms is not None:
            parts.append(f"its p50 tile latency is at most {self.max_latency_ms:g} ms")
        if self.max_memory_bytes is not None:
            parts.append(f"its peak memory is at most {self.max_memory_bytes / 2**20:.0f} MiB")
        return (", ".join(parts) + ". Qualified engines are ranked by scene throughput (MP/s); "
                "* marks the Pareto front of p50 latency against mIoU.")


def _get(row: dict, *path):
    for key in path:
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row


def rank(rows: list[dict], rule: RankRule) -> list[dict]:
    """Annotate engine rows (in place) with ``qualified``, ``rank``, ``pareto`` and ``rank_reason``."""
    ok = [r for r in rows if r.get("status") == "ok"]
    ref = next((r for r in ok if r["name"] == rule.reference), None)
    ref_miou = _get(ref, "accuracy", "miou") if ref else None
    for r in rows:
        r["qualified"], r["rank"], r["pareto"], r["rank_reason"] = False, None, False, None
        if r.get("status") != "ok":
            r["rank_reason"] = r.get("reason") or r.get("status")
            continue
        miou = _get(r, "accuracy", "miou")
        latency = _get(r, "latency", "batch1", "p50")
        memory = _get(r, "memory", "peak_rss_bytes")
        if ref_miou is not None and miou is not None and miou < rule.ratio * ref_miou:
            r["rank_reason"] = f"mIoU {miou:.4f} < {rule.ratio:.0%} of {rule.reference}"
        elif rule.max_latency_ms is not None and (latency is None or latency > rule.max_latency_ms):
            r["rank_reason"] = "over the latency budget"
        elif rule.max_memory_bytes is not None and (memory is None or memory > rule.max_memory_bytes):
            r["rank_reason"] = "over the memory budget"
        else:
            r["qualified"] = True
            if ref_miou is None or miou is None:
                r["rank_reason"] = "no accuracy to compare: qualified on budgets only"
    qualified = sorted((r for r in ok if r["qualified"]),
                       key=lambda r: -(_get(r, "scene", "megapixels_per_s") or 0.0))
    for i, r in enumerate(qualified, 1):
        r["rank"] = i
    for r in pareto_front(ok):
        r["pareto"] = True
    return rows


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows not dominated in (p50 latency lower, mIoU higher); rows lacking either are left out."""
    pts = [(r, _get(r, "latency", "batch1", "p50"), _get(r, "accuracy", "miou")) for r in rows]
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
