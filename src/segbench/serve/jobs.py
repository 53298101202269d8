"""Scene jobs: a scene segmented by :func:`segbench.workflow.segment_scenes` in a worker thread.

Each job is a folder ``<jobs>/<id>/`` holding ``state.json`` (written atomically: a temporary
file renamed), so several server processes can share the job folder. Outputs are written to
``work/`` and the folder is renamed to ``out/`` when the run is complete; a cancelled,
failed or interrupted job leaves nothing under ``out/``. ``cancel`` (a file) asks the job's
runner, in whichever process it runs, to stop at its next progress step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from segbench.errors import UsageError, first_line

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled", "interrupted")
LABELS = "labels.tif"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h or d (``90``, ``30m``, ``7d``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise UsageError(f"--keep-jobs takes a duration such as 3600, 30m, 12h or 7d, not {text!r}.")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class JobStore:
    """Job folders and their states on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path | None:
        """The job's folder, or None for an id that is not a job's (never a path outside the folder)."""
        if not JOB_ID.match(job_id):
            return None
        folder = self.folder / job_id
        return folder if (folder / "state.json").is_file() else None

    def read(self, job_id: str) -> dict | None:
        folder = self.path(job_id)
        if folder is None:
            return None
        try:
            return json.loads((folder / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def write(self, state: dict) -> None:
        folder = self.folder / state["id"]
        tmp = folder / f".state.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, folder / "state.json")

    def update(self, job_id: str, **fields) -> dict | None:
        state = self.read(job_id)
        if state is not None:
            state.update(fields, updated=time.time())
            self.write(state)
        return state

    def create(self, scene: str) -> dict:
        job_id = uuid.uuid4().hex
        (self.folder / job_id).mkdir()
        now = time.time()
        state = {"id": job_id, "scene": scene, "status": "queued", "done": 0, "total": 0, "error": None,
                 "created": now, "updated": now, "finished": None, "host": socket.gethostname(),
                 "pid": os.getpid()}
        self.write(state)
        return state

    def states(self) -> list[dict]:
        found = []
        for folder in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            state = self.read(folder.name)
            if state is not None:
                found.append(state)
        return found

    def finished_labels(self, scene: str) -> Path | None:
        """The label COG of the latest finished job of ``scene`` (a resolved path), or None."""
        done = [s for s in self.states() if s["status"] == "done" and s["scene"] == scene]
        for state in sorted(done, key=lambda s: s.get("finished") or 0, reverse=True):
            path = self.folder / state["id"] / "out" / LABELS
            if path.is_file():
                return path
        return None

    def remove(self, job_id: str) -> None:
        folder = self.path(job_id)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def reap(self) -> int:
        """Mark interrupted the jobs left queued or running by a server process of this host that
        is gone (killed, crashed); how many."""
        host, reaped = socket.gethostname(), 0
        for state in self.states():
            if state["status"] in ACTIVE and state.get("host") == host and not _alive(state.get("pid")):
                self.update(state["id"], status="interrupted", finished=time.time(),
                            error="the server process running the job is gone")
                reaped += 1
        return reaped

    def expire(self, keep_s: float) -> int:
        """Remove finished jobs older than ``keep_s`` seconds; how many."""
        now, removed = time.time(), 0
        for state in self.states():
            if state["status"] in FINAL and now - (state.get("finished") or now) > keep_s:
                self.remove(state["id"])
                removed += 1
        return removed


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


class JobRunner:
    """Runs jobs one at a time in a worker thread of this process, through ``segment_scenes``."""

    def __init__(self, store: JobStore, engine: Path, options) -> None:
        self.store, self.engine, self.options = store, Path(engine), options
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segbench-job")
        self._stopping = threading.Event()
        self._running: set[str] = set()

    def submit(self, state: dict) -> None:
        self._pool.submit(self._run, state["id"], state["scene"])

    def _cancelled(self, job_id: str) -> bool:
        folder = self.store.folder / job_id
        return self._stopping.is_set() or (folder / "cancel").exists() or not folder.exists()

    def _run(self, job_id: str, scene: str) -> None:
        from segbench.workflow import Cancelled, Hooks, SegmentOptions, segment_scenes

        folder = self.store.folder / job_id
        if self._cancelled(job_id):
            self._finish(job_id, "interrupted" if self._stopping.is_set() else "cancelled", None)
            return
        self._running.add(job_id)
        self.store.update(job_id, status="running", pid=os.getpid())
        work = folder / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        last = [0.0]

        def progress(p) -> None:
            if time.monotonic() - last[0] > 0.5 or p.done == p.total:
                last[0] = time.monotonic()
                self.store.update(job_id, done=p.done, total=p.total)

        hooks = Hooks(progress=progress, cancelled=lambda: self._cancelled(job_id))
        try:
            segment_scenes([scene], self.engine, work / LABELS, SegmentOptions(**self.options), hooks=hooks)
            os.replace(work, folder / "out")
            self._finish(job_id, "done", None)
        except Cancelled:
            self._finish(job_id, "interrupted" if self._stopping.is_set() else "cancelled", None)
        except Exception as exc:  # noqa: BLE001  (a job's failure is its state, in one sentence)
            self._finish(job_id, "failed", first_line(exc))
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._running.discard(job_id)

    def _finish(self, job_id: str, status: str, error: str | None) -> None:
        if (self.store.folder / job_id).exists():
            self.store.update(job_id, status=status, error=error, finished=time.time())

    def stop(self) -> None:
        """Ask the running job to stop at its next step (safe in a signal handler)."""
        self._stopping.set()

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Stop: the running job stops at its next step and, with every queued one, is marked
        interrupted; nothing is left under a final name."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        for state in self.store.states():
            if state["status"] in ACTIVE and state.get("pid") == os.getpid():
                self._finish(state["id"], "interrupted", "the server stopped before the job finished")
