"""The run folder of :func:`zf_unet.train`: whether ``out_dir`` may be trained into (and
resumed with this config), whether its backup can be restored, finishing a ``fresh=True``
start that was killed, and the error (and ``summary.json``) of a run that diverged.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from zf_unet.callbacks import backup_source, completed_epochs, keep_user_files
from zf_unet.config import Config
from zf_unet.errors import ConfigError, TrainingFailedError
from zf_unet.io_utils import hidden_dirs, write_json_atomic
from zf_unet.models import load_weights_file

__all__ = ["RESUMABLE_KEYS", "check_backup", "check_run_folder", "config_differences",
           "diverged", "recover_fresh_swap"]

#: Config keys that may change when a run is resumed; every other key must match the run's
#: ``config.toml`` (``train.epochs`` extends or shortens the run; with the cosine schedule the
#: learning rate then follows the new length).
RESUMABLE_KEYS = ("train.epochs", "train.early_stopping_patience", "train.tensorboard",
                  "train.collapse_warning", "train.strategy", "train.steps_per_execution",
                  "data.cache", "data.skip_bad_files")


def config_differences(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every key where the configs differ."""
    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old.to_dict()), flat(new.to_dict())
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_run_folder(run: Path, cfg: Config, *, fresh: bool) -> None:
    """Refuse an ``out_dir`` that training must not write into, before anything is written.

    * a file, or a folder that holds files but no ``config.toml`` (not a run folder: its
      files are the user's, so neither resuming nor ``fresh`` may touch them);
    * a run folder (resumed unless ``fresh``) whose ``config.toml`` cannot be read or differs
      from ``cfg`` in any key but :data:`RESUMABLE_KEYS`.
    """
    if run.exists() and not run.is_dir():
        raise ConfigError(f"{run}: exists and is not a folder; expected a run folder")
    if not run.is_dir():
        return
    saved = run / "config.toml"
    if not saved.is_file():
        visible = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
        if visible:
            more = f" and {len(visible) - 1} more" if len(visible) > 1 else ""
            raise ConfigError(f"{run}: exists and is not a zf-unet run folder (no config.toml; "
                              f"it holds {visible[0]}{more}); expected a new or empty folder "
                              "or a run folder: use another --out")
        return
    if fresh:
        return
    try:
        old = Config.from_toml(saved)
    except ConfigError as exc:
        raise ConfigError(f"{saved}: the run's config cannot be read ({exc}); start over with "
                          "--fresh (fresh=True) or use another --out") from None
    diffs = [d for d in config_differences(old, cfg) if d[0] not in RESUMABLE_KEYS]
    if diffs:
        shown = "; ".join(f"{k} = {a!r} in the run, {b!r} now" for k, a, b in diffs[:4])
        more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise ConfigError(f"{run}: this run folder belongs to another config ({shown}{more}); "
                          "a run resumes only with the config it started with (except "
                          f"{', '.join(RESUMABLE_KEYS)}): start over with --fresh "
                          "(fresh=True) or use another --out")


def check_backup(model: keras.Model, backup_dir: str | Path) -> None:
    """Check that the backup of an interrupted run can be restored into ``model`` (the
    weights, the optimizer state and the epoch count); raise a :class:`ConfigError` naming
    the damaged file otherwise. Reads only (a half-committed backup is read where it is)."""
    d = Path(backup_dir)
    src = backup_source(d)
    weights = src / "latest.weights.h5"
    if not weights.exists():
        return
    remedy = (f"delete {d} to restart the run from epoch 0 (best.keras and last.keras are "
              "kept), or start over with --fresh (fresh=True)")
    completed_epochs(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_weights_file(model, weights)
    except Exception as exc:  # noqa: BLE001 - any failure means the backup cannot be used
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{weights}: cannot restore the run's backup ({type(exc).__name__}: "
                          f"{first}); expected the weights of this run's model: {remedy}") from None
    opt = src / "optimizer.npz"
    if opt.exists():
        try:
            with np.load(opt) as saved:
                for key in saved.files:
                    saved[key]
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{opt}: cannot restore the run's optimizer state "
                              f"({type(exc).__name__}); {remedy}") from None


def recover_fresh_swap(run: str | Path) -> None:
    """Finish what a killed ``fresh=True`` start left beside ``run``: a hidden
    ``.NAME.fresh-*`` folder (a new run that never replaced the old one) is deleted; a
    ``.NAME.old-*`` folder holds the old run while it is being replaced: it is put back if
    ``run`` is missing (killed between the two renames), else deleted."""
    run = Path(run)
    for holder in hidden_dirs(run.parent, f".{run.name}.old-"):
        kept = holder / "run"
        if not run.exists() and kept.is_dir():
            os.rename(kept, run)
        else:  # the new run is in place: the user's files of the old one move over
            keep_user_files(kept, run)
        shutil.rmtree(holder, ignore_errors=True)
    for stale in hidden_dirs(run.parent, f".{run.name}.fresh-"):
        shutil.rmtree(stale, ignore_errors=True)


def diverged(exc: TrainingFailedError, run: Path, write: bool,
             policy: str) -> TrainingFailedError:
    """The error for a run stopped by a NaN / Inf loss, naming the epoch and what the run
    folder keeps; with ``write``, ``summary.json`` records the failure (valid JSON)."""
    try:
        best = json.loads((run / "best.json").read_text())
        int(best["epoch"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or unreadable
        best = None
    if write:
        write_json_atomic({"status": "failed", "error": str(exc), "precision": policy,
                           "best": best}, run / "summary.json")
    if not write:
        kept = f"{run} was left as it was (the new run never replaced it)"
    elif best is not None and (run / "best.keras").is_file():
        kept = (f"{run / 'best.keras'} holds epoch {int(best['epoch']) + 1} (the best "
                "finite one) and last.keras the last finite epoch")
    else:
        kept = f"no finite checkpoint was saved in {run}"
    remedy = ("lower optimizer.learning_rate, or train in float32 (train.precision)"
              if "16" in policy else "lower optimizer.learning_rate")
    return TrainingFailedError(f"training failed: {exc}; {kept}; {remedy}")
