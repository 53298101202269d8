"""The tiler's progress bar: windows done, MP/s, ETA and the process's memory high-water mark."""

from __future__ import annotations

from segbench.peak import peak_rss_bytes
from segbench.progress import progress_bar
from segbench.raster import SceneInfo


class Progress:
    """A rich bar over a scene's windows; does nothing when not ``enabled``."""

    def __init__(self, total: int, info: SceneInfo, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        self.mp_per_window = info.width * info.height / 1e6 / max(total, 1)
        self.bar = progress_bar(info.path.name.replace("[", r"\["), "{task.fields[rate]}",
                                "{task.fields[mem]}")
        self.bar.start()
        self.task = self.bar.add_task("segment", total=total, rate="", mem="")

    def update(self, done: int) -> None:
        """``done`` windows written; the memory shown is the kernel's high-water mark, not a sample."""
        if self.bar is None:
            return
        speed = self.bar.tasks[0].speed
        rate = f"{speed * self.mp_per_window:.2f} MP/s" if speed else ""
        self.bar.update(self.task, completed=done, rate=rate, mem=f"peak {peak_rss_bytes() / 2**20:.0f} MiB")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
