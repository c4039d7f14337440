"""Pretrained weights (``zf_unet.pretrained(name)``): a manifest per model, sha256-checked,
loaded without custom_objects.

Layout of a weights folder (``weights/`` in the repository, or ``$ZF_UNET_WEIGHTS``)::

    weights/<name>/manifest.json   # name, architecture, normalisation, training config, data,
                                   # metrics, file, sha256, url (optional)
    weights/<name>/<file>.keras

``zf_unet.pretrained(name)`` (= ``load_pretrained``) finds the manifest, fetches the file from ``url`` into the cache if
it is not on disk (downloads go to a temporary file, are checked against ``sha256`` and only
then renamed into place), verifies the checksum and loads the model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from zf_unet.errors import DataError
from zf_unet.models.loading import PRETRAINED_PREFIX, checked_model, load_model_file

MANIFEST = "manifest.json"

__all__ = ["MANIFEST", "cache_dir", "fetch", "is_pretrained", "list_pretrained", "load_model",
           "load_pretrained", "sha256_of", "weights_dirs", "write_manifest"]


def weights_dirs() -> list[Path]:
    """Where manifests are searched: ``$ZF_UNET_WEIGHTS``, the repository's ``weights/``, and
    the download cache (``$ZF_UNET_CACHE/weights`` or ``~/.cache/zf_unet/weights``)."""
    dirs = []
    if os.environ.get("ZF_UNET_WEIGHTS"):
        dirs.append(Path(os.environ["ZF_UNET_WEIGHTS"]).expanduser())
    dirs.append(Path(__file__).resolve().parent.parent / "weights")
    dirs.append(cache_dir())
    return dirs


def cache_dir() -> Path:
    base = os.environ.get("ZF_UNET_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "zf_unet") / "weights"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_pretrained() -> dict[str, dict]:
    """``{name: manifest}`` of every model found in :func:`weights_dirs`."""
    found: dict[str, dict] = {}
    for d in weights_dirs():
        if not d.is_dir():
            continue
        for m in sorted(d.glob(f"*/{MANIFEST}")):
            manifest = _read_manifest(m)
            manifest["_dir"] = str(m.parent)
            found.setdefault(manifest["name"], manifest)
    return found


def _read_manifest(path: Path) -> dict:
    """A manifest as a dict, checked for the keys the loader needs."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the weights manifest ({type(exc).__name__}: "
                        f"{exc}); expected a JSON object") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: the weights manifest holds {type(manifest).__name__}; "
                        "expected a JSON object")
    missing = [k for k in ("name", "file", "sha256") if not isinstance(manifest.get(k), str)]
    if missing:
        raise DataError(f"{path}: the weights manifest lacks {missing}; expected string "
                        "fields name, file and sha256")
    return manifest


def fetch(url: str, dest: str | Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, keeping it only if its sha256 matches."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
        except (OSError, ValueError) as exc:  # URLError, timeouts, unknown URL types
            raise DataError(f"{url}: download failed ({type(exc).__name__}: {exc}); "
                            f"{dest} was not written") from None
        got = sha256_of(tmp)
        if got != sha256:
            raise DataError(f"{url}: downloaded file has sha256 {got}, expected {sha256}; "
                            "not saved")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def load_pretrained(name: str, *, url: str | None = None) -> Any:
    """Load pretrained model ``name`` (see :func:`list_pretrained`) as a ``keras.Model``.

    Raises:
        DataError: unknown name, a missing file without a URL, or a checksum mismatch.
    """
    import keras

    available = list_pretrained()
    if name not in available:
        raise DataError(f"pretrained model {name!r} not found; available: "
                        f"{sorted(available) or 'none'} (searched {[str(d) for d in weights_dirs()]})")
    manifest = available[name]
    path = Path(manifest["_dir"]) / manifest["file"]
    if not path.exists():
        source = url or manifest.get("url")
        if not source:
            raise DataError(f"{path}: weights file missing and the manifest has no url")
        path = fetch(source, cache_dir() / name / manifest["file"], manifest["sha256"])
    got = sha256_of(path)
    if got != manifest["sha256"]:
        raise DataError(f"{path}: sha256 {got} does not match the manifest's "
                        f"{manifest['sha256']} (corrupt or replaced file); expected the "
                        "file the manifest describes: delete it to download it again")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - a file that matches its checksum but not Keras
        raise DataError(f"{path}: cannot load as a Keras model ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:200]})") from None


def load_model(source: Any, *, image_model: bool = True) -> Any:
    """The ``keras.Model`` of a model argument: a ``.keras`` file
    (:func:`zf_unet.models.load_model_file`) or ``"pretrained:NAME"`` (:func:`load_pretrained`,
    sha256-checked), compile-free.

    Args:
        source: a path, or ``"pretrained:NAME"`` for a model of :func:`list_pretrained`.
        image_model: also check that it is an image / volume model that
            :func:`zf_unet.predict_tiled` can use.

    Raises:
        DataError: naming ``source``: a missing or unreadable file, an unknown pretrained
            name, a checksum mismatch, or (``image_model``) not an image model.
    """
    text = str(source)
    if not text.startswith(PRETRAINED_PREFIX):
        return load_model_file(source, image_model=image_model)
    model = load_pretrained(text[len(PRETRAINED_PREFIX):])
    return checked_model(model, text, image_model=image_model)


def is_pretrained(source: Any) -> bool:
    """Whether a model argument names a pretrained model (``"pretrained:NAME"``), not a file."""
    return isinstance(source, str) and source.startswith(PRETRAINED_PREFIX)


def write_manifest(model_path: str | Path, folder: str | Path, *, overwrite: bool = False,
                   **fields: Any) -> Path:
    """Copy ``model_path`` (compile-free) into ``folder`` and write its manifest; existing
    files there are replaced only with ``overwrite=True`` (:mod:`zf_unet.outputs`)."""
    import keras

    from zf_unet.io_utils import save_model_atomic, write_json_atomic
    from zf_unet.outputs import claim_files

    folder = Path(folder)
    claim_files([folder / "model.keras", folder / MANIFEST], inputs=[model_path],
                overwrite=overwrite)
    model = keras.saving.load_model(model_path, compile=False)
    target = save_model_atomic(model, folder / "model.keras")
    manifest = {**fields, "file": target.name, "sha256": sha256_of(target),
                "parameters": int(model.count_params()),
                "bytes": target.stat().st_size}
    return write_json_atomic(manifest, folder / MANIFEST)
