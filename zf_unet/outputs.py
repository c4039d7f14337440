"""The one output rule: every command and public function that writes files claims its outputs
here first, before anything is written.

* An output is never an input, nor inside an input folder; a folder that may be replaced as a
  whole must not hold an input either.
* An existing output is refused (:class:`~zf_unet.errors.OutputExistsError`) unless
  ``overwrite`` is given.
* ``overwrite`` replaces only what zf_unet wrote: a folder that zf_unet creates carries the
  marker file :data:`MARKER`; a folder without it is the user's and is never deleted — only
  the named outputs inside it are replaced.
* Writes are atomic (:mod:`zf_unet.io_utils`), and the temporary files a killed writer left
  next to an output are removed when the output is claimed again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from zf_unet.errors import DataError, OutputExistsError
from zf_unet.io_utils import remove_stale_temporaries

#: Marker file in every output folder zf_unet creates (JSON: the command that made it).
MARKER = ".zf_unet-output.json"

PathLike = str | os.PathLike


def _resolved(path: PathLike) -> Path:
    return Path(path).resolve()


def is_local(path: PathLike) -> bool:
    """False for URLs such as ``gs://bucket/x`` (``file://`` paths are local)."""
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _contains(folder: Path | str, path: Path | str) -> bool:
    if isinstance(folder, str):  # URLs: compared as normalised text
        return path == folder or path.startswith(folder + "/")
    return folder == path or folder in path.parents


def _key(path: PathLike) -> Path | str:
    """A local path resolved, or a URL without its trailing ``/``."""
    text = str(path)
    if is_local(text):
        return _resolved(text.removeprefix("file://"))
    return text.rstrip("/")


def check_not_input(path: PathLike, inputs: Iterable[PathLike], flag: str = "--out", *,
                    whole_folder: bool = False) -> None:
    """Refuse an output ``path`` that is one of ``inputs`` or lies inside an input folder;
    with ``whole_folder`` (the folder may be replaced as a whole) also one that holds an
    input. Raises :class:`DataError` naming ``flag``, the path and the input."""
    target = _key(path)
    for given in inputs:
        if given is None or not isinstance(given, (str, os.PathLike)):
            continue
        src = _key(given)
        if type(src) is not type(target):  # a URL and a local path never overlap
            continue
        if target == src:
            raise DataError(f"{flag} {path}: is an input of this command ({given}); expected "
                            "an output path that is not an input")
        inside = _contains(src, target) and (not isinstance(src, Path) or src.is_dir())
        if inside:
            raise DataError(f"{flag} {path}: lies inside the input folder {given}; expected "
                            "an output outside the inputs (a later read would take the outputs "
                            "for data)")
        if whole_folder and _contains(target, src):
            raise DataError(f"{flag} {path}: holds the input {given}, and this output folder "
                            "is replaced as a whole; expected a folder that holds no input")


def claim_files(paths: Sequence[PathLike], *, inputs: Iterable[PathLike] = (),
                overwrite: bool = False, flag: str = "--out") -> list[Path]:
    """Check the output files ``paths`` before anything is written and return them as paths.

    Refused: an output that is an input or inside an input folder, a path that is a folder,
    and, unless ``overwrite``, an existing file (one :class:`OutputExistsError` naming them
    all). The temporary files a killed atomic write left beside each output are removed.
    """
    inputs = list(inputs)
    out = [Path(p) for p in paths]
    for p in out:
        check_not_input(p, inputs, flag)
        if p.is_dir():
            raise DataError(f"{flag} {p}: is a folder; expected a file path")
    existing = [p for p in out if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:4])
        more = f" and {len(existing) - 4} more" if len(existing) > 4 else ""
        raise OutputExistsError(f"{flag} {shown}{more}: exists already; zf-unet replaces a "
                                "file only when asked: pass --overwrite (overwrite=True) or "
                                f"choose another {flag}")
    for p in out:
        if p.parent.is_dir():
            remove_stale_temporaries(p.parent, [p.name])
    return out


def claim_file(path: PathLike, *, inputs: Iterable[PathLike] = (), overwrite: bool = False,
               flag: str = "--out") -> Path:
    """:func:`claim_files` for one file."""
    return claim_files([path], inputs=inputs, overwrite=overwrite, flag=flag)[0]


def foreign_entries(folder: PathLike, owned: Callable[[str], bool], command: str) -> list[str]:
    """The entries of ``folder`` that ``command`` did not write: those ``owned`` rejects, or
    all of them when the folder's :data:`MARKER` says another command made it."""
    d = Path(folder)
    names = sorted(p.name for p in d.iterdir() if p.name != MARKER)
    try:
        maker = json.loads((d / MARKER).read_text(encoding="utf-8")).get("command", command)
    except (OSError, ValueError, AttributeError):
        maker = command  # no marker (written before markers existed) or unreadable
    if maker != command:
        return names
    return [n for n in names if not owned(n)]


def mark_folder(folder: PathLike, command: str) -> None:
    """Write :data:`MARKER` into ``folder`` (created by ``command``)."""
    path = Path(folder) / MARKER
    if not path.exists():
        path.write_text(json.dumps({"written_by": "zf_unet", "command": command}) + "\n",
                        encoding="utf-8")


def claim_folder(path: PathLike, *, inputs: Iterable[PathLike] = (), overwrite: bool = False,
                 flag: str = "--out", command: str = "zf_unet", replace: bool = False,
                 owned: Callable[[str], bool] | None = None, create: bool = True) -> bool:
    """Check an output folder before anything is written; returns True if it exists.

    ``replace=False``: outputs are written *into* the folder (each file then goes through
    :func:`claim_files`); any existing folder is fine, and a new one is created with
    :data:`MARKER` (unless ``create`` is False).
    ``replace=True``: the folder is the output and may be replaced as a whole (``pack``): an
    existing non-empty folder needs ``overwrite``, and even then it is replaced only when
    every entry is one ``command`` writes (``owned``): a folder holding anything else (see
    :func:`foreign_entries`) is never deleted.
    """
    p = Path(path) if is_local(path) else path
    check_not_input(p, inputs, flag, whole_folder=replace)
    if not is_local(p):
        return False
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"{flag} {p}: exists and is not a folder; expected a folder "
                                "(choose another path)")
    if not p.exists():
        if create:
            p.mkdir(parents=True)
            mark_folder(p, command)
        return False
    if replace:
        entries = sorted(e.name for e in p.iterdir())
        if entries and not overwrite:
            raise OutputExistsError(f"{flag} {p}: exists and is not empty; choose another "
                                    "folder or pass --overwrite (overwrite=True) to replace "
                                    "what zf-unet wrote there")
        foreign = foreign_entries(p, owned or (lambda name: False), command) if entries else []
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise OutputExistsError(f"{flag} {p}: holds files zf-unet did not write "
                                    f"({', '.join(foreign[:3])}{more}); a folder of yours is "
                                    "never replaced, even with --overwrite: choose another "
                                    "folder")
    return True
