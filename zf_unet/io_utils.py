"""Atomic file writes: nothing a user already has is left half-written."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


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


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


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
    import re

    base = Path(base)
    if not base.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{8}")
    return sorted(p for p in base.iterdir() if pattern.fullmatch(p.name) and p.is_dir())
