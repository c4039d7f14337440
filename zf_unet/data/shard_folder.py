"""Where ``write_shards`` writes: shard and work-folder names, local and ``tf.io.gfile`` paths,
and the output rule for a shard folder (:mod:`zf_unet.outputs`): the set is written into a
locked hidden work folder beside ``--out`` and renamed into place when complete; a folder is
replaced only when every entry in it is one ``pack`` writes."""
from __future__ import annotations

import os
import posixpath
import re
import shutil
from pathlib import Path
from typing import Any, Sequence


from zf_unet.data.shard_format import INDEX_NAME
from zf_unet.errors import OutputExistsError
from zf_unet.io_utils import new_locked_dir, remove_abandoned_dirs, unlock
from zf_unet.outputs import MARKER, check_not_input, claim_folder, is_local, mark_folder
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("TFRecord shards")

#: Hidden work folders beside the output: ``.zf_unet_pack-new-NAME-*`` (the set being written)
#: and ``.zf_unet_pack-old-NAME-*`` (the set being replaced).
TMP_PREFIX = ".zf_unet_pack-"


def local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, name: str) -> str:
    return os.path.join(base, name) if is_local(base) else posixpath.join(base, name)


def parent_of(path: str) -> str:
    path = path.rstrip("/") or path
    if is_local(path):
        return os.path.dirname(path) or "."
    return posixpath.dirname(path)


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.tfrecord"


def owned_name(name: str) -> bool:
    """A file name ``write_shards`` writes (a shard, the index or the output marker)."""
    return name in (INDEX_NAME, MARKER) or re.fullmatch(
        r"shard-\d{5}-of-\d{5}\.tfrecord", name) is not None


def prepare_out_dir(out_dir: str, overwrite: bool, inputs: Sequence[Any]) -> bool:
    """Check ``out_dir`` by the output rule (:func:`zf_unet.outputs.claim_folder`): never an
    input or a folder holding one, an existing non-empty folder only with ``overwrite`` and
    only if ``write_shards`` made it. Leftovers of killed runs beside it are removed first.
    Returns ``True`` when it exists (it is then replaced)."""
    check_not_input(out_dir, [i for i in inputs if i is not None], whole_folder=True)
    if not is_local(out_dir):
        if not tf.io.gfile.exists(out_dir):
            return False
        if not tf.io.gfile.isdir(out_dir):
            raise OutputExistsError(f"{out_dir}: exists and is not a folder; choose another "
                                    "--out")
        entries = [n.rstrip("/") for n in tf.io.gfile.listdir(out_dir)]
        if entries and not overwrite:
            raise OutputExistsError(f"{out_dir}: exists and is not empty; choose another --out "
                                    "or pass overwrite=True (--overwrite) to replace it")
        foreign = [n for n in entries if not owned_name(n)]
        if foreign:
            raise OutputExistsError(f"{out_dir}: holds files zf-unet did not write "
                                    f"({', '.join(foreign[:3])}); a folder of yours is never "
                                    "replaced, even with --overwrite: choose another folder")
        return True
    local = Path(local_path(out_dir))
    parent, base = local.parent, local.name
    if parent.is_dir():
        def put_back(holder: Path) -> None:  # killed between moving the old set out and the new in
            if not local.exists() and (holder / "old").is_dir():
                os.replace(holder / "old", local)

        remove_abandoned_dirs(parent, f"{TMP_PREFIX}old-{base}-", salvage=put_back)
        remove_abandoned_dirs(parent, f"{TMP_PREFIX}new-{base}-")
    return claim_folder(local, overwrite=overwrite, command="pack", replace=True,
                        owned=owned_name, create=False)


def make_tmp_dir(out_dir: str) -> tuple[str, int | None]:
    """A new hidden work folder beside ``out_dir`` and its lock (local paths)."""
    parent = parent_of(out_dir)
    if is_local(parent):
        Path(local_path(parent)).mkdir(parents=True, exist_ok=True)
        base = Path(local_path(out_dir)).name
        work, lock = new_locked_dir(local_path(parent), f"{TMP_PREFIX}new-{base}-")
        return str(work), lock
    import secrets

    tmp = posixpath.join(parent, f"{TMP_PREFIX}new-{posixpath.basename(out_dir.rstrip('/'))}-"
                                 f"{secrets.token_hex(4)}")
    tf.io.gfile.makedirs(tmp)
    return tmp, None


def move_into_place(tmp_dir: str, out_dir: str, exists: bool) -> None:
    """Rename the finished ``tmp_dir`` to ``out_dir`` (replacing it when ``exists``)."""
    if is_local(out_dir):
        src, dst = local_path(tmp_dir), local_path(out_dir).rstrip("/") or local_path(out_dir)
        mark_folder(src, "pack")
        if exists:
            parent = os.path.dirname(dst) or "."
            trash, lock = new_locked_dir(parent, f"{TMP_PREFIX}old-{os.path.basename(dst)}-")
            try:
                os.replace(dst, trash / "old")
                os.replace(src, dst)
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                unlock(lock)
        else:
            os.replace(src, dst)
        return
    if exists:  # the index goes first, so no reader sees a half-replaced set
        old_index = join(out_dir, INDEX_NAME)
        if tf.io.gfile.exists(old_index):
            tf.io.gfile.remove(old_index)
        tf.io.gfile.rmtree(out_dir)
    tf.io.gfile.makedirs(out_dir)
    names = sorted(tf.io.gfile.listdir(tmp_dir))
    for name in [n for n in names if n != INDEX_NAME] + [INDEX_NAME]:
        tf.io.gfile.rename(join(tmp_dir, name), join(out_dir, name), overwrite=True)
    tf.io.gfile.rmtree(tmp_dir)
