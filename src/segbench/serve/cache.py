"""Rendered tiles on disk, keyed by their ETag (scene identity, engine digest, tiling, tile), within
a bound: the oldest files are removed once the folder holds more than ``max_bytes``. Files are
written under a temporary name and renamed, so several server processes may share the folder."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

KEY = re.compile(r"^[0-9a-f]{24}$")


class TileCache:
    """``get(etag)`` / ``put(etag, png)``; counts hits and misses for the metrics."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self._lock = threading.Lock()
        self._bytes = sum(f.stat().st_size for f in self.folder.glob("*.png"))

    def _path(self, etag: str) -> Path | None:
        key = etag.strip('"')
        return self.folder / f"{key}.png" if KEY.match(key) else None

    def get(self, etag: str) -> bytes | None:
        path = self._path(etag)
        try:
            data = path.read_bytes() if path is not None else None
        except OSError:
            data = None
        with self._lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        return data

    def put(self, etag: str, png: bytes) -> None:
        path = self._path(etag)
        if path is None or len(png) > self.max_bytes:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(png)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            self._bytes += len(png)
            over = self._bytes > self.max_bytes
        if over:
            self.evict()

    def evict(self) -> None:
        """Remove the oldest tiles until the folder holds at most 80 % of the bound."""
        files = []
        for f in self.folder.glob("*.png"):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in files)
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= 0.8 * self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
        with self._lock:
            self._bytes = total
