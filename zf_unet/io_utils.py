"""Atomic file writes: nothing a user already has is left half-written."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

try:  # folder locks (POSIX); elsewhere abandoned work folders are recognised by age
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces ``path`` atomically.

    The temporary name keeps ``path``'s suffix (Keras checks ``.keras`` / ``.weights.h5``).
    On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # let the writer create it (some writers refuse to overwrite)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_model_atomic(model: Any, path: str | Path) -> Path:
    """``model.save(path)`` through a temporary file, so a crash never leaves a broken file."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)


def copy_file_atomic(src: str | Path, path: str | Path) -> Path:
    """A copy of the file ``src`` at ``path``, through a temporary file (``path`` is either
    its old content or the whole copy, never half of it)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)
    return Path(path)


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / Inf float replaced by ``None`` (JSON has no NaN: a file with
    ``NaN`` in it is not valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """``obj`` as valid JSON (NaN / Inf written as ``null``), atomically."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


def remove_stale_temporaries(folder: str | Path, names: list[str]) -> None:
    """Delete the temporary files :func:`atomic_path` leaves when a process is killed
    mid-write (``.best.XXXXXXXX.keras`` for ``best.keras``) for the outputs ``names`` in
    ``folder`` (the names :func:`atomic_path` gives them, exactly)."""
    folder = Path(folder)
    for name in names:
        for f in folder.glob(f".{glob_escape(Path(name).stem)}.*"):
            if is_temporary_of(f.name, name) and f.is_file():
                f.unlink()


def is_temporary_of(name: str, output: str) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_path` makes for ``output``
    (``.STEM.XXXXXXXX.SUFFIXES``, as ``tempfile.mkstemp`` names them)."""
    path = Path(output)
    stem, suffix = path.stem, "".join(path.suffixes)
    return re.fullmatch(rf"\.{re.escape(stem)}\.[A-Za-z0-9_]{{8}}{re.escape(suffix)}",
                        name) is not None


def glob_escape(text: str) -> str:
    """``text`` with the glob characters ``*?[`` escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def savefig_atomic(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def make_hidden_dir(base: str | Path, prefix: str) -> Path:
    """A new empty folder ``base/<prefix><8 hex digits>`` (``prefix`` starts with ``.``).

    Used to build something next to its final place and rename it there when complete.
    Unlike ``tempfile.mkdtemp`` (mode 0700) it gets the usual permissions (0777 minus the
    umask), which the folder keeps after a rename, so a server running as another user can
    read it.
    """
    import secrets

    base = Path(base)
    while True:
        path = base / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # pragma: no cover - 1 in 4 billion
            continue


def hidden_dirs(base: str | Path, prefix: str) -> list[Path]:
    """The folders :func:`make_hidden_dir` made in ``base`` with ``prefix`` (exact pattern:
    the prefix and 8 hex digits), e.g. to clean up after an interrupted process."""
    base = Path(base)
    if not base.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{8}")
    return sorted(p for p in base.iterdir() if pattern.fullmatch(p.name) and p.is_dir())


def lock_folder(path: str | Path, wait: bool) -> int | None:
    """An exclusive ``flock`` on the folder ``path``, held by the returned descriptor until
    :func:`unlock` (the kernel drops it when the process dies, even by ``kill -9``); ``None``
    where folder locks do not work. Raises ``BlockingIOError`` if another process holds it
    and ``wait`` is False."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # e.g. NFS emulating flock with write locks: no locks on folders
        os.close(fd)
        return None
    return fd


def unlock(fd: int | None) -> None:
    """Release a lock of :func:`lock_folder`."""
    if fd is not None:
        os.close(fd)


def new_locked_dir(base: str | Path, prefix: str) -> tuple[Path, int | None]:
    """``make_hidden_dir(base, prefix)``, locked (:func:`lock_folder`) for as long as the
    caller keeps the returned descriptor. The base folder's lock makes creating and locking
    one step for :func:`remove_abandoned_dirs`."""
    guard = lock_folder(base, wait=True)
    try:
        work = make_hidden_dir(base, prefix)
        return work, lock_folder(work, wait=False)
    finally:
        unlock(guard)


#: Where folder locks do not work (Windows, some network file systems), a work folder is
#: only taken for abandoned once it has not changed for this long (seconds).
ABANDONED_AFTER_S = 3600.0


def mtime(path: Path) -> float:
    """``path``'s modification time, 0 when it is gone."""
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def remove_abandoned_dirs(base: str | Path, prefix: str | re.Pattern,
                          salvage: Any = None) -> list[Path]:
    """Delete the work folders ``base/<prefix>XXXXXXXX`` of :func:`new_locked_dir` (or the
    folders whose names a compiled ``prefix`` pattern matches in full) that no running
    process holds (a process killed with SIGKILL leaves its folder behind; its lock is gone;
    where locks do not work, those unchanged for ``ABANDONED_AFTER_S``), newest first.
    ``salvage(folder)``, if given, is called first (e.g. to move back what the killed process
    was replacing). Returns the folders deleted."""
    base = Path(base)
    if not base.is_dir():
        return []
    pattern = prefix if isinstance(prefix, re.Pattern) else re.compile(
        re.escape(prefix) + r"[0-9a-f]{8}")
    removed = []
    guard = lock_folder(base, wait=True)
    try:
        found = [p for p in base.iterdir()
                 if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
        for work in sorted(found, key=mtime, reverse=True):
            try:
                lock = lock_folder(work, wait=False)
            except (BlockingIOError, FileNotFoundError):
                continue  # a running process's folder (or gone)
            try:
                if lock is None and time.time() - mtime(work) < ABANDONED_AFTER_S:
                    continue
                if salvage is not None:
                    salvage(work)
                shutil.rmtree(work, ignore_errors=True)
                removed.append(work)
            finally:
                unlock(lock)
    finally:
        unlock(guard)
    return removed
