"""Small file helpers shared by every writer: atomic outputs and content digests."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from segbench.errors import OutputError


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` is left as it
    was, so an interrupted run never leaves a truncated file under the final
    name. OS errors while writing become one-sentence :class:`OutputError`.
    """
    dest = Path(dest)
    tmp = temporary_path(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as exc:
        remove_quietly(tmp)
        raise OutputError(describe_os_error(exc, dest)) from exc
    except BaseException:
        remove_quietly(tmp)
        raise


def temporary_path(dest: str | os.PathLike[str]) -> Path:
    """The temporary name ``dest`` is written under before its rename (``.name.part-<pid>.ext``: the
    suffix kept for GDAL's drivers), once its folder is checked and stale ones are removed."""
    dest = Path(dest)
    parent = check_output_folder(dest)
    remove_stale_temporaries(dest)
    return parent / f".{dest.stem}.part-{os.getpid()}{dest.suffix}"


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; rename it onto ``dest`` when complete.

    ``dest`` must not exist or be an empty folder (a dataset is never
    overwritten). Missing parent folders are created only on success, so a
    refused or interrupted run leaves nothing behind: the temporary folder
    lives in the nearest existing ancestor and is removed on any exception.
    """
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputError(f"Output folder {dest} already exists and is not empty; "
                          "choose another with -o or remove it first.")
    anchor = next(p for p in dest.parents if p.is_dir())
    if not os.access(anchor, os.W_OK):
        raise OutputError(f"Output folder {anchor} is not writable; choose another with -o.")
    remove_stale_temporaries(anchor / dest.name)
    tmp = anchor / f".{dest.name}.part-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(describe_os_error(exc, dest)) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def new_folders(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Make ``folder`` (and missing folders above it) for a writer; on any exception remove again
    those this made, where nothing was left in them, so a failed command leaves no empty folder."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for made in missing:  # the deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def write_text(dest: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``dest`` through a temporary file renamed when complete."""
    with atomic_output(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def check_output_folder(dest: str | os.PathLike[str]) -> Path:
    """The folder that will hold ``dest``; one-sentence errors when it is missing or read-only (or
    ``dest`` is a folder, or lies under a file): :func:`check_output` of any file."""
    return check_output(dest, artifact=True)


#: the suffix of an artifact's spec sidecar (:func:`segbench.spec.sidecar_path`): a file with one
#: beside it is a model or an engine
ARTIFACT_SIDECAR = ".spec.json"


def check_output(dest: str | os.PathLike[str], *, folder: bool = False, create: bool = False,
                 artifact: bool = False, option: str = "-o", advice: str | None = None) -> Path:
    """Before any work, one sentence when ``dest`` cannot be written: the one check of every path
    segbench writes; returns the folder that holds ``dest`` (which may not exist yet with ``create``).

    ``folder``: ``dest`` is a folder written into (else a file), so an existing file there is
    refused, as a folder is where a file goes. A file anywhere above ``dest`` is refused; the
    folder above it must exist unless ``create`` (the writer makes missing folders, then the
    nearest existing one must be writable). A file that is a model or an engine (its spec
    beside it) is never replaced by another kind of output (``artifact``: the output is one).
    ``option`` names the option that gave ``dest``, for what to do; ``advice`` replaces what to do
    where the file or folder there is of the wrong kind.
    """
    dest = Path(dest)
    kind = "a folder" if folder else "a file"
    advice = advice or (f"give a folder with {option}" if folder else f"give a file name with {option}")
    for above in dest.parents:
        if above.exists() or above.is_symlink():
            if not above.is_dir():
                raise OutputError(f"Output {dest} cannot be written: {above} is a file, not a folder; "
                                  f"choose another {option}.")
            break
    if dest.is_dir() and not folder:
        raise OutputError(f"Output {dest} is a folder where {kind} is needed; {advice}.")
    if dest.exists() and not dest.is_dir() and folder:
        raise OutputError(f"Output {dest} is a file where {kind} is needed; {advice}.")
    spec = dest.with_name(dest.name + ARTIFACT_SIDECAR)
    if not artifact and not folder and dest.is_file() and spec.exists():
        raise OutputError(f"Output {dest} is a model or engine (its spec is beside it); choose another "
                          f"{option}.")
    parent = dest.parent
    if not parent.is_dir() and not create:
        raise OutputError(f"Output folder {parent} does not exist; create it first.")
    anchor = next((p for p in (parent, *parent.parents) if p.is_dir()), Path("."))
    if not os.access(anchor, os.W_OK):
        raise OutputError(f"Output folder {anchor} is not writable; choose another {option}.")
    return parent


def remove_stale_temporaries(dest: str | os.PathLike[str]) -> None:
    """Remove temporary files of ``dest`` left by writers that were killed (SIGKILL, power loss).

    Writers name them ``.<dest name or stem>.<part|stage>-<pid>...`` beside ``dest``
    and remove them themselves unless the process dies; a file whose process no
    longer runs is such a leftover. Files of running processes are left alone.
    """
    dest = Path(dest)
    names = "|".join(re.escape(n) for n in {dest.name, dest.stem})
    pattern = re.compile(rf"\.(?:{names})\.(?:part|stage)-(\d+)")
    with contextlib.suppress(OSError):
        for entry in os.scandir(dest.parent):
            match = pattern.match(entry.name)
            if match and not process_exists(int(match.group(1))):
                remove_quietly(Path(entry.path))


def process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def describe_os_error(exc: OSError, dest: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"No space left on the device while writing {dest}; free some space and retry."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Permission denied while writing {dest}; choose a writable output folder."
    return f"Could not write {dest}: {exc.strerror or exc}."


def remove_quietly(path: Path) -> None:
    """Remove a file, or a temporary folder and what it holds; nothing if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()
