"""The tiler's progress bar: windows (or chunks) done, MP/s, ETA and the memory high-water mark."""

from __future__ import annotations

from segbench.peak import peak_rss_bytes
from segbench.progress import progress_bar


class Progress:
    """A rich bar over ``total`` units of work (a scene's windows, a job's chunks) covering
    ``megapixels``; does nothing when not ``enabled``."""

    def __init__(self, total: int, name: str, megapixels: float, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        self.mp_per_unit = megapixels / max(total, 1)
        self.bar = progress_bar(name.replace("[", r"\["), "{task.fields[rate]}", "{task.fields[mem]}")
        self.bar.start()
        self.task = self.bar.add_task("segment", total=total, rate="", mem="")

    def update(self, done: int) -> None:
        """``done`` units finished; the memory shown is the kernel's high-water mark, not a sample."""
        if self.bar is None:
            return
        speed = self.bar.tasks[0].speed
        rate = f"{speed * self.mp_per_unit:.2f} MP/s" if speed else ""
        self.bar.update(self.task, completed=done, rate=rate, mem=f"peak {peak_rss_bytes() / 2**20:.0f} MiB")

    def close(self) -> None:
        """Take the bar off the terminal (repeatable)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
