"""One client per study folder: a lock file that holds on shared storage, kept alive by a heartbeat.

A study run on a cluster writes into a folder every worker shares (NFS,
Lustre, a bind mount), so a second client may be on another host, where its
PID means nothing. The lock is a file made with ``O_CREAT | O_EXCL`` (atomic
on local disks and on NFS v3 and later) that names its holder; a thread of the
holder touches it every :data:`HEARTBEAT_S`. The same lock guards each model cell's
folder on the workers (a task Dask re-runs while the first still trains, after
its client went, waits for it). A lock whose heartbeat stopped
for :data:`STALE_S` (its client was killed with no chance to clean up), or
whose holder is a dead process of this host, is taken over; a live one is one
sentence. The lock is removed when the run ends, however it ends.

Why not flufl.lock, which is NFS-safe too: its lock is a hard link with a
lifetime the holder must refresh, the same idea, but it cannot say who holds
the lock (host, PID, since when) in the one sentence a second client gets, nor
take over at once from a dead process of this host; those are the few lines
kept here (psutil answers whether that process lives).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from segbench.errors import InputError

LOCK_NAME = ".segbench-study.lock"
HEARTBEAT_S = 10.0
#: a heartbeat older than this: its client is gone (a dozen heartbeats, for storage that caches times)
STALE_S = 120.0


class StudyBusyError(InputError):
    """Another client is running this study folder."""


@contextlib.contextmanager
def study_lock(folder: str | os.PathLike[str], heartbeat_s: float = HEARTBEAT_S,
               stale_s: float = STALE_S, name: str = LOCK_NAME, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the lock ``folder/name`` while the block runs; :class:`StudyBusyError` if another holds
    it (after waiting up to ``wait_s`` for it to be released or to go stale)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": os.urandom(8).hex()}
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _acquire(path, holder, stale_s)
            break
        except StudyBusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(1.0, heartbeat_s))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, holder["token"], stop, heartbeat_s),
                            name="segbench-study-lock", daemon=True)
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        beat.join()
        if _holder(path).get("token") == holder["token"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _acquire(path: Path, holder: dict, stale_s: float) -> None:
    for _ in range(3):  # a stale lock is moved aside and the exclusive create tried again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _holder(path)
            if not _stale(path, other, stale_s):
                raise StudyBusyError(
                    f"Another segbench study runs on {path.parent} (host {other.get('host', '?')}, "
                    f"process {other.get('pid', '?')}, since {other.get('since', '?')}); wait for it "
                    f"to end, or remove {path} if that process is gone.") from None
            aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{holder['token']}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)  # atomic: of two clients taking it over, one moves it
                aside.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
        return
    raise StudyBusyError(f"Could not take the lock {path}: other clients keep taking it.")


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written, or gone


def _stale(path: Path, holder: dict, stale_s: float) -> bool:
    """The holder's heartbeat stopped, or the holder is a process of this host that is gone."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > stale_s:
        return True
    same_host = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
    return same_host and not psutil.pid_exists(holder["pid"])


def _heartbeat(path: Path, token: str, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        if _holder(path).get("token") != token:
            return  # taken over (this client was thought gone): nothing of ours to keep alive
        with contextlib.suppress(OSError):
            os.utime(path)
