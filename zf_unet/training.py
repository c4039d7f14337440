"""Training that scales: ``zf_unet.train(config)`` / ``zf-unet train``.

``model.fit`` with a best checkpoint, resumable backups, early stopping, LR schedules, CSV and
TensorBoard logs, NaN guard and training curves; float32 / bfloat16 / float16 precision; the
default, Mirrored, MultiWorkerMirrored (``TF_CONFIG``) or TPU ``tf.distribute`` strategy.
Every file is written atomically, so a run killed at any moment leaves no half-written model
and resumes where it stopped.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from zf_unet import losses as zl
from zf_unet import metrics as zm
from zf_unet.config import Config, resolve_monitor
from zf_unet.data.augment import Augment
from zf_unet.data.pipeline import make_datasets, median_frequency_weights
from zf_unet.data.synthetic import make_synthetic
from zf_unet.errors import ConfigError
from zf_unet.io_utils import (atomic_path, hidden_dirs, make_hidden_dir, save_model_atomic,
                              write_json_atomic)
from zf_unet.models import build_unet, build_unet_plus_plus, repeat_targets
import zf_unet.optimizers  # noqa: F401,E402 - registers FusedAdam for keras load_model
from zf_unet.precision import resolve_precision

__all__ = ["AtomicBackupAndRestore", "BestModelCheckpoint", "CollapseWarning", "TimeBudget",
           "make_strategy", "recover_backup", "train"]

logger = logging.getLogger("zf_unet")
# Library practice: no output through logging's last-resort handler (CollapseWarning prints
# its line itself); applications that configure logging still get every record.
logger.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- strategies


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs), ``multiworker`` (``TF_CONFIG``
    from the environment) or ``tpu`` (Colab / Cloud TPU resolver)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("strategy 'multiworker' needs the TF_CONFIG environment variable "
                              "(cluster spec and this worker's task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"strategy must be default | mirrored | multiworker | tpu, got {name!r}")


def _is_chief() -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if not kind:
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return kind == "chief" or (not has_chief and kind == "worker" and index == 0)


# --------------------------------------------------------------------------- callbacks


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole model (``.keras``) when ``monitor`` improves, atomically; also keeps
    ``last.keras`` after every epoch. Non-chief workers write nothing."""

    def __init__(self, best_path: str | Path, last_path: str | Path | None, monitor: str,
                 mode: str = "max", write: bool = True):
        super().__init__()
        self.best_path, self.last_path = Path(best_path), last_path and Path(last_path)
        self.monitor, self.mode, self.write = monitor, mode, write
        self.best = -np.inf if mode == "max" else np.inf
        self.best_epoch = -1
        state = self.best_path.with_suffix(".json")
        if state.exists():  # resumed run: keep the best score seen before the interruption
            saved = json.loads(state.read_text())
            self.best, self.best_epoch = saved["best"], saved["epoch"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise ConfigError(f"monitor {self.monitor!r} is not among the logged metrics "
                              f"{sorted(logs)}; set train.monitor to one of them")
        value = float(logs[self.monitor])
        better = value > self.best if self.mode == "max" else value < self.best
        if not self.write:
            return
        if better and np.isfinite(value):
            self.best, self.best_epoch = value, epoch
            save_model_atomic(self.model, self.best_path)
            write_json_atomic({"best": value, "epoch": epoch, "monitor": self.monitor},
                              self.best_path.with_suffix(".json"))
        if self.last_path is not None:
            save_model_atomic(self.model, self.last_path)


_PENDING, _COMMITTED = ".pending", ".committed"


def recover_backup(backup_dir: str | Path) -> None:
    """Finish or drop a backup that a kill interrupted (see :class:`AtomicBackupAndRestore`).

    A ``.committed`` folder is a complete backup whose files were being moved into place:
    the move is finished. A ``.pending`` folder is an incomplete backup: it is deleted, and
    the previous backup stays in force.
    """
    d = Path(backup_dir)
    committed, pending = d / _COMMITTED, d / _PENDING
    if committed.is_dir():
        for f in sorted(committed.iterdir()):
            os.replace(f, d / f.name)
        committed.rmdir()
    if pending.exists():
        shutil.rmtree(pending, ignore_errors=True)


def _completed_epochs(backup_dir: str | Path) -> int:
    """Epochs completed according to the backup (0 without one)."""
    meta = Path(backup_dir) / "training_metadata.json"
    if not meta.exists():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{meta}: unreadable backup metadata ({exc}); delete the run's "
                          "backup/ folder to restart from epoch 0, or use --fresh") from None


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backups are committed as a whole, and which also backs up
    the optimizer state (moments, iteration count, so LR schedules continue where they were).

    A backup is three files: ``latest.weights.h5``, ``optimizer.npz`` and
    ``training_metadata.json`` (the number of completed epochs). They are written into
    ``backup/.pending/``; renaming that folder to ``.committed`` is the commit point; then the
    files are moved into ``backup/``. A kill at any moment leaves either the previous backup or
    the new one (completed by :func:`recover_backup` on the next start), never weights of one
    epoch with the epoch count or optimizer state of another.
    """

    def __init__(self, backup_dir: str | Path, write: bool = True):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False,
                         double_checkpoint=False)
        self.write = write
        self._optimizer_path = Path(backup_dir) / "optimizer.npz"

    def _save_model(self) -> None:
        if not self.write:
            return
        d = Path(self.backup_dir)
        d.mkdir(parents=True, exist_ok=True)
        recover_backup(d)
        pending = d / _PENDING
        pending.mkdir()
        self.model.save_weights(str(pending / Path(self._weights_path).name))
        opt = self.model.optimizer
        with open(pending / self._optimizer_path.name, "wb") as fh:
            np.savez(fh, *[np.asarray(v) for v in opt.variables])
        (pending / Path(self._training_metadata_path).name).write_text(
            json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        for f in pending.iterdir():  # on disk before the commit point
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(pending, d / _COMMITTED)  # the commit point
        recover_backup(d)  # move the files into place

    def _load_model(self) -> None:
        recover_backup(self.backup_dir)
        super()._load_model()
        if os.path.exists(self._weights_path) and self._optimizer_path.exists():
            opt = self.model.optimizer
            if not opt.built:
                opt.build(self.model.trainable_variables)
            with np.load(self._optimizer_path) as saved:
                values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            if len(values) == len(opt.variables):
                for var, value in zip(opt.variables, values):
                    var.assign(value)


class CollapseWarning(keras.callbacks.Callback):
    """Warn when a model's predictions collapse to one class while the truth is mixed.

    At the end of every epoch the model predicts up to ``max_batches`` batches of ``data``
    (``(x, y)`` or ``(x, y, weight)`` batches: a ``tf.data.Dataset``, a list of batches, or
    one ``(x, y)`` tuple of arrays). If one class takes more than ``1 - fraction`` of the
    predicted pixels (e.g. the predicted foreground stays below 0.5 % or above 99.5 %) while
    that class covers less than ``1 - fraction`` of the true pixels, it logs a warning on the
    ``"zf_unet"`` logger and prints the same line, after ``patience`` such epochs in a row.

    Binary models (one output channel) predict class 1 where ``p > threshold``; others the
    argmax. For several outputs (deep supervision) the last one is checked. Every measurement
    is kept in ``self.history`` (``epoch``, ``predicted``, ``truth`` class shares,
    ``collapsed``) and every warning in ``self.warnings``. Target pixels equal to
    ``ignore_index`` are left out of both counts.
    """

    def __init__(self, data: Any, *, fraction: float = 0.005, threshold: float = 0.5,
                 max_batches: int = 8, patience: int = 1, label: str = "validation",
                 ignore_index: int | None = None):
        super().__init__()
        if not 0.0 < fraction < 0.5:
            raise ValueError(f"fraction must be in (0, 0.5), got {fraction!r}")
        if int(max_batches) < 1 or int(patience) < 1:
            raise ValueError("max_batches and patience must be >= 1")
        self.data, self.fraction, self.threshold = data, float(fraction), float(threshold)
        self.max_batches, self.patience, self.label = int(max_batches), int(patience), label
        self.ignore_index = ignore_index
        self.history: list[dict] = []
        self.warnings: list[str] = []
        self._streak = 0

    def _batches(self) -> Any:
        data = self.data
        if isinstance(data, tuple) and len(data) in (2, 3) and not isinstance(
                data[0], (tuple, list)):
            return [data]
        if isinstance(data, tf.data.Dataset):
            return data.take(self.max_batches)
        return data

    @staticmethod
    def _last(t: Any) -> Any:
        if isinstance(t, dict):
            return list(t.values())[-1]
        if isinstance(t, (list, tuple)):
            return t[-1]
        return t

    def measure(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(predicted, truth)`` pixel counts per class over the checked batches."""
        pred_counts: np.ndarray | None = None
        true_counts: np.ndarray | None = None
        for i, batch in enumerate(self._batches()):
            if i >= self.max_batches:
                break
            x, y = batch[0], self._last(batch[1])
            pred = np.asarray(self._last(self.model.predict_on_batch(x)), np.float32)
            y = np.asarray(y)
            k = pred.shape[-1]
            if y.shape[1:3] != pred.shape[1:3]:  # padding="valid": centre-crop the truth
                dy, dx = (y.shape[1] - pred.shape[1]) // 2, (y.shape[2] - pred.shape[2]) // 2
                y = y[:, dy:dy + pred.shape[1], dx:dx + pred.shape[2]]
            if k == 1:
                p_cls = (pred[..., 0] > self.threshold).astype(np.int64)
                t_cls = (y[..., 0] > 0.5).astype(np.int64)
            else:
                p_cls = np.argmax(pred, axis=-1)
                t_cls = np.argmax(y, axis=-1) if y.shape[-1] == k and k > 1 else \
                    np.rint(y[..., 0]).astype(np.int64)
            n = max(k, 2)
            keep = np.ones(p_cls.shape, bool)
            if self.ignore_index is not None and y.shape[-1] == 1:
                keep = np.rint(y[..., 0]) != self.ignore_index  # void pixels count for nothing
            pc = np.bincount(p_cls[keep].ravel(), minlength=n)[:n]
            tc = np.bincount(np.clip(t_cls[keep].ravel(), 0, n - 1), minlength=n)[:n]
            pred_counts = pc if pred_counts is None else pred_counts + pc
            true_counts = tc if true_counts is None else true_counts + tc
        if pred_counts is None or true_counts is None:
            return None
        return pred_counts, true_counts

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        counts = self.measure()
        if counts is None:
            return
        pred = counts[0] / max(1, counts[0].sum())
        truth = counts[1] / max(1, counts[1].sum())
        top = int(np.argmax(pred))
        collapsed = bool(pred[top] > 1.0 - self.fraction and truth[top] < 1.0 - self.fraction)
        self.history.append({"epoch": epoch, "predicted": pred.tolist(),
                             "truth": truth.tolist(), "collapsed": collapsed})
        self._streak = self._streak + 1 if collapsed else 0
        if collapsed and self._streak >= self.patience:
            msg = (f"CollapseWarning: epoch {epoch + 1}: predictions collapsed to one class: "
                   f"{100 * pred[top]:.2f} % of {self.label} pixels are predicted as class "
                   f"{top}, but the truth has {100 * truth[top]:.2f} % class {top} "
                   f"({self._streak} epoch(s) in a row). Check the mask convention "
                   "(zf-unet check-data), the class balance, the loss and the learning rate.")
            self.warnings.append(msg)
            logger.warning(msg)
            print(msg, flush=True)


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after ``max_minutes`` of wall
    time since ``fit`` began (``train.max_minutes``; the epoch in progress is finished, so its
    checkpoint and backup are written). ``self.stopped_epoch`` is that epoch, or -1."""

    def __init__(self, max_minutes: float):
        super().__init__()
        if not max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {max_minutes!r}")
        self.max_seconds = 60.0 * float(max_minutes)
        self.stopped_epoch = -1
        self._start = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if time.perf_counter() - self._start >= self.max_seconds:
            self.stopped_epoch = epoch
            self.model.stop_training = True


class _CurvesAtEnd(keras.callbacks.Callback):
    def __init__(self, csv_path: Path, png_path: Path, write: bool):
        super().__init__()
        self.csv_path, self.png_path, self.write = csv_path, png_path, write

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.write and self.csv_path.exists():
            from zf_unet.plots import save_training_curves

            save_training_curves(read_csv_log(self.csv_path), self.png_path)


def read_csv_log(path: str | Path) -> dict[str, list[float]]:
    """``CSVLogger`` file -> ``{metric: [value per epoch]}`` (last entry wins per epoch; "NA"
    and other non-numbers become NaN)."""
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows[int(row["epoch"])] = row
    history: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for k, v in rows[epoch].items():
            if k == "epoch" or v in ("", None):
                continue
            try:  # Keras's CSVLogger writes "NA" for a metric missing from an epoch
                value = float(v)
            except ValueError:
                value = float("nan")
            history.setdefault(k, []).append(value)
    return history


def repair_csv_log(path: str | Path, next_epoch: int) -> None:
    """Make ``log.csv`` hold exactly one row per completed epoch ``0 .. next_epoch - 1``.

    A run killed after logging an epoch but before its backup re-runs that epoch; a kill in
    the middle of a write leaves half a line. Rows of epochs ``>= next_epoch`` and broken
    lines are dropped (for a repeated epoch the last row is kept) and the file is replaced
    atomically, so the resumed run appends each epoch once.
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        text = fh.read()  # line endings kept as written (CSVLogger: \r\n)
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):
        path.unlink()  # no complete header: the first row never finished
        return
    columns = len(next(csv.reader([lines[0]])))
    rows: dict[int, str] = {}
    for line in lines[1:]:
        if not line.endswith("\n"):
            continue
        fields = next(csv.reader([line]), [])
        try:
            epoch = int(fields[0])
        except (IndexError, ValueError):
            continue
        if len(fields) == columns and 0 <= epoch < next_epoch:
            rows[epoch] = line
    repaired = lines[0] + "".join(rows[e] for e in sorted(rows))
    if repaired != text:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(repaired)


def _remove_stale_temporaries(folder: Path, names: list[str]) -> None:
    """Delete the temporary files ``atomic_path`` leaves when a process is killed mid-write
    (``.best.XXXXXXXX.keras`` for ``best.keras``)."""
    for name in names:
        stem, suffix = name.split(".", 1)
        pattern = re.compile(rf"^\.{re.escape(stem)}\.[A-Za-z0-9_]{{8}}\.{re.escape(suffix)}$")
        for f in folder.glob(f".{stem}.*"):
            if pattern.match(f.name) and f.is_file():
                f.unlink()


# --------------------------------------------------------------------------- run folder

#: Config keys that may change when a run is resumed; every other key must match the run's
#: ``config.toml`` (``train.epochs`` extends or shortens the run; with the cosine schedule the
#: learning rate then follows the new length).
RESUMABLE_KEYS = ("train.epochs", "train.early_stopping_patience", "train.tensorboard",
                  "train.collapse_warning", "train.strategy", "train.steps_per_execution")


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
    src = d / _COMMITTED if (d / _COMMITTED).is_dir() else d
    weights = src / "latest.weights.h5"
    if not weights.exists():
        return
    remedy = (f"delete {d} to restart the run from epoch 0 (best.keras and last.keras are "
              "kept), or start over with --fresh (fresh=True)")
    _completed_epochs(src)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(weights)
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


def _hidden_sibling(run: Path, kind: str) -> Path:
    run.parent.mkdir(parents=True, exist_ok=True)
    return make_hidden_dir(run.parent, f".{run.name}.{kind}-")


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
        shutil.rmtree(holder, ignore_errors=True)
    for stale in hidden_dirs(run.parent, f".{run.name}.fresh-"):
        shutil.rmtree(stale, ignore_errors=True)


def _relocate(obj: Any, old: Path, new: Path) -> None:
    """Point every path attribute of ``obj`` (str or Path) inside ``old`` to ``new``."""
    prefix = str(old)
    for name, value in list(vars(obj).items()):
        if isinstance(value, (str, Path)):
            text = str(value)
            if text == prefix or text.startswith(prefix + os.sep):
                moved = str(new) + text[len(prefix):]
                setattr(obj, name, Path(moved) if isinstance(value, Path) else moved)


class _ReplaceOldRun(keras.callbacks.Callback):
    """``fresh=True`` on an existing run: the new run trains in the hidden sibling
    ``staging``; at the end of its first epoch (after the checkpoint and backup callbacks)
    ``staging`` replaces ``target``, and the callbacks' paths follow it.

    The old run is renamed into a hidden holder, ``staging`` is renamed to ``target``, then
    the holder is deleted; :func:`recover_fresh_swap` completes or undoes a kill in between.
    Open files (the CSV log, TensorBoard's event files) move with their folder (POSIX).
    """

    def __init__(self, staging: Path, target: Path, callbacks: list):
        super().__init__()
        self.staging, self.target, self.callbacks = staging, target, callbacks
        self.done = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.done:
            self.replace()

    def replace(self) -> None:
        holder = _hidden_sibling(self.target, "old")
        if self.target.exists():
            os.rename(self.target, holder / "run")
        os.rename(self.staging, self.target)
        self.done = True
        shutil.rmtree(holder, ignore_errors=True)
        staging, target = self.staging, self.target
        for cb in self.callbacks:
            if cb is not self:
                _relocate(cb, staging, target)


# --------------------------------------------------------------------------- pieces


def resolve_loss_name(name: str, num_classes: int) -> str:
    """``"auto"`` -> ``bce_dice`` (one class) or ``ce_dice`` (several); else ``name``."""
    if name != "auto":
        return name
    return "bce_dice" if num_classes == 1 else "ce_dice"


def make_loss(cfg: Config, num_classes: int | None = None,
              class_weights: list[float] | None = None) -> keras.losses.Loss:
    """The loss ``cfg.loss`` names, through the registry :func:`zf_unet.losses.get`, with the
    data's ignore value and ``class_weights`` (resolved: a list or None; see
    :func:`resolve_class_weights`)."""
    k = cfg.data.num_classes if num_classes is None else num_classes
    lc = cfg.loss
    name = resolve_loss_name(lc.name, k)
    ignore = cfg.data.ignore_index if cfg.data.ignore_index >= 0 else None
    params: dict[str, dict[str, Any]] = {
        "bce_dice": dict(bce_weight=lc.bce_weight, dice_weight=lc.dice_weight,
                         class_weights=class_weights),
        "ce_dice": dict(ce_weight=lc.bce_weight, dice_weight=lc.dice_weight,
                        include_background=lc.include_background, class_weights=class_weights),
        "dice": dict(include_background=lc.include_background),
        "jaccard": dict(include_background=lc.include_background),
        "ce": dict(class_weights=class_weights),
        "weighted_ce": dict(class_weights=class_weights),
        "focal": dict(gamma=lc.focal_gamma, class_weights=class_weights),
        "tversky": dict(alpha=lc.tversky_alpha, beta=lc.tversky_beta,
                        include_background=lc.include_background),
    }
    if name in ("dice", "jaccard", "tversky") and class_weights is not None:
        raise ConfigError(f"loss.class_weights applies to the cross-entropy losses (bce_dice, "
                          f"ce_dice, ce, focal), not to loss.name = {name!r}")
    return zl.get(name, ignore_index=ignore, **params[name])


def resolve_class_weights(cfg: Config, class_pixels: np.ndarray | None = None,
                          class_image_pixels: np.ndarray | None = None) -> list[float] | None:
    """``loss.class_weights`` as a list or None: ``"auto"`` is median-frequency balancing
    (:func:`zf_unet.data.median_frequency_weights`) of the training masks' counts."""
    w = cfg.loss.class_weights
    if w == "none":
        return None
    if w == "auto":
        if class_pixels is None or class_image_pixels is None:
            raise ConfigError("loss.class_weights = 'auto' needs the training masks' class counts")
        return [round(float(v), 6) for v in median_frequency_weights(class_pixels,
                                                                        class_image_pixels)]
    return [float(v) for v in w]


def make_model(cfg: Config, channels: int, sync_batch_norm: bool = False,
               num_classes: int | None = None, normalization: Any = None) -> keras.Model:
    """The U-Net or U-Net++ that ``cfg.model`` describes, for ``channels`` input channels and
    ``num_classes`` outputs (default ``cfg.data.num_classes``; when that is 0, "infer from
    the masks", and no ``num_classes`` is given: 1, a binary model), with ``normalization``
    (``(mean, std)`` or None, see :func:`resolve_normalization`) as its first layer."""
    m = cfg.model
    common = dict(num_classes=num_classes or cfg.data.num_classes or 1, depth=m.depth,
                  filters=m.filters, batch_norm=m.batch_norm, dropout=m.dropout,
                  upsampling=m.upsampling, sync_batch_norm=sync_batch_norm,
                  input_normalization=normalization)
    if m.architecture == "unet_plus_plus":
        if m.padding != "same":
            raise ConfigError("model.padding must be 'same' for unet_plus_plus")
        return build_unet_plus_plus((None, None, channels), deep_supervision=m.deep_supervision,
                                    **common)
    return build_unet((None, None, channels), padding=m.padding, **common)


def _metrics(num_classes: int, ignore_index: int | None = None) -> list:
    """Dice and IoU of the foreground (all classes for K > 1); for binary models also the mean
    Dice of both classes (``dice_mean``), which an all-foreground guess cannot game when the
    foreground dominates (ISBI: ~78 % cell interior); for several classes the mean IoU
    (``miou``) and the IoU of every class (``iou_<c>``). Pixels equal to ``ignore_index`` are
    left out of all of them."""
    out = [zm.DiceCoefficient(num_classes=num_classes, ignore_index=ignore_index),
           zm.IoU(num_classes=num_classes, ignore_index=ignore_index)]
    if num_classes == 1:
        out.append(zm.DiceCoefficient(target_class_ids=[0, 1], name="dice_mean",
                                      ignore_index=ignore_index))
    else:
        out.append(zm.MeanIoU(num_classes, ignore_index=ignore_index, name="miou"))
        out += [zm.ClassIoU(c, num_classes, ignore_index=ignore_index)
                for c in range(num_classes)]
    return out


def make_optimizer(cfg: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    o = cfg.optimizer
    lr: Any = o.learning_rate
    if o.schedule == "cosine":
        total = max(1, steps_per_epoch * cfg.train.epochs)
        lr = keras.optimizers.schedules.CosineDecay(
            o.learning_rate, decay_steps=total, alpha=min(1.0, o.min_learning_rate / o.learning_rate))
    if o.name == "adam":
        from zf_unet.optimizers import FusedAdam

        return FusedAdam(lr)  # keras.optimizers.Adam's arithmetic, one fused kernel per variable
    if o.name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=o.weight_decay or 1e-4)
    return keras.optimizers.SGD(lr, momentum=o.momentum, weight_decay=o.weight_decay or None)


def make_data(cfg: Config, seed: int) -> tuple[tf.data.Dataset, tf.data.Dataset | None, Any]:
    """``(train_ds, val_ds, info)`` for ``cfg.data``: ``info`` is the training data's
    :class:`zf_unet.data.DataInfo` (classes, class counts, channel mean/std)."""
    d = cfg.data
    a = d.augment
    augment = None
    if a.enabled:
        augment = Augment(elastic=a.elastic, elastic_grid=a.elastic_grid, elastic_std=a.elastic_std,
                          interpolation=a.interpolation, flips=a.flips, rotate90=a.rotate90,
                          rotation_degrees=a.rotation_degrees, gray_values=a.gray_values,
                          brightness=a.brightness, contrast=a.contrast, gamma=a.gamma)
    source: Any = d.source
    if source == "synthetic":
        source = make_synthetic(d.synthetic_n, d.synthetic_size, seed=seed)
    if d.num_classes == 0:
        num_classes: Any = "auto"
    else:
        num_classes = d.num_classes if d.num_classes > 1 or d.class_values else None
    train_ds, val_ds, info = make_datasets(
        source, patch_size=d.patch_size or None, batch_size=d.batch_size,
        val_fraction=d.val_fraction, val_indices=d.val_indices or None, seed=seed,
        augment=augment, border_weights=d.border_weights, w0=d.w0, sigma=d.sigma,
        num_classes=num_classes, class_values=d.class_values or None,
        ignore_index=d.ignore_index if d.ignore_index >= 0 else None,
        val_source=d.val_source or None, samples_per_epoch=d.samples_per_epoch or None,
        with_info=True)
    return train_ds, val_ds, info


def resolve_normalization(cfg: Config, info: Any) -> tuple[list[float], list[float]] | None:
    """``model.input_normalization`` as ``(mean, std)`` of the training images or None
    (``auto``: standardise images with 3 or more channels, natural images; not gray EM)."""
    mode = cfg.model.input_normalization
    if mode == "none" or (mode == "auto" and info.channels < 3):
        return None
    return ([round(float(v), 6) for v in info.mean], [round(float(v), 6) for v in info.std])


def check_input_sizes(cfg: Config, datasets: dict[str, tf.data.Dataset | None]) -> None:
    """Raise a :class:`ConfigError` if the model ``cfg.model`` cannot take the (static) image
    sizes of ``datasets`` (``{"training": train_ds, "validation": val_ds}``), naming the
    nearest sizes it can take, before TensorFlow fails with a shape error inside ``fit``."""
    from zf_unet.models.unet import output_size, valid_input_sizes

    m = cfg.model
    for label, ds in datasets.items():
        if ds is None:
            continue
        spec = ds.element_spec[0]
        for side in (spec.shape[1], spec.shape[2]):
            if side is None or output_size(int(side), m.depth, m.padding) is not None:
                continue
            nearest = valid_input_sizes(m.depth, m.padding, near=int(side))
            rule = (f"a multiple of 2**(depth-1) = {2 ** (m.depth - 1)}" if m.padding == "same"
                    else "a size whose feature maps stay even before every pooling")
            where = (f"data.patch_size = {cfg.data.patch_size}" if cfg.data.patch_size
                     else f"the {label} images (data.patch_size = 0: whole images)")
            raise ConfigError(
                f"{where}: a depth-{m.depth} U-Net with padding={m.padding!r} cannot take "
                f"{label} inputs of {int(side)} px; expected {rule} (nearest: {nearest}), or "
                "another model.depth")


def _distribute_options(ds: tf.data.Dataset | None) -> tf.data.Dataset | None:
    if ds is None:
        return None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _work_around_keras_multiworker_build(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Keras 3's ``fit`` builds metrics/optimizer by ``strategy.reduce``-ing the first
    distributed batch, which fails eagerly under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585). Build from one local batch instead; training itself is
    unchanged (gradients are still all-reduced across workers)."""
    local_batch = next(iter(dataset.take(1)))

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=local_batch)

    model._maybe_symbolic_build = build

    # Keras also averages the per-worker metric scalars with ``reduce(..., axis=0)``, which
    # rejects 0-d values; average them over workers with ``axis=None`` instead.
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer.reduce_per_replica, "_zf_unet_patch", False):
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in (
                "auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._zf_unet_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


# --------------------------------------------------------------------------- train


def train(config: Config | str | Path | dict, out_dir: str | Path = "runs/run",
          *, fresh: bool = False, verbose: int | str = "auto",
          extra_callbacks: list | None = None,
          strategy: tf.distribute.Strategy | None = None) -> tuple[keras.callbacks.History, Path]:
    """Train a U-Net as ``config`` says and write the run folder ``out_dir``.

    Re-running with the same ``out_dir`` resumes an interrupted run (weights, optimizer state
    and epoch) when the config is the same (only :data:`RESUMABLE_KEYS`, e.g.
    ``train.epochs``, may change); ``fresh=True`` starts over. Writes: ``config.toml``
    (resolved), ``best.keras`` (+ ``best.json``), ``last.keras``, ``final.keras``,
    ``log.csv``, ``training_curves.png``, ``tensorboard/``, ``backup/`` and ``summary.json``.

    Every config value is checked (:meth:`Config.validate`), the data loaded and checked, the
    model built, the run folder's config compared and its backup checked before anything is
    written, so a mistake leaves an existing run folder byte-identical. ``out_dir`` must be
    new, empty or a run folder (never a folder of other files). With ``fresh=True`` the new
    run trains in a hidden sibling folder and replaces the old run only once its first epoch
    is checkpointed, so a failure in the first epoch leaves the old run as it was. A run killed at any moment (even SIGKILL) resumes from its last completed epoch; ``log.csv``
    then holds each epoch once (see :func:`repair_csv_log`). ``train.deterministic`` turns on
    ``tf.config.experimental.enable_op_determinism()`` for this process (bit-identical
    reruns); a :class:`CollapseWarning` watches the validation (else training) predictions
    unless ``train.collapse_warning = false``.

    Returns:
        ``(history, run_dir)``; ``history.history`` covers the epochs run in this call.
    """
    if isinstance(config, (str, Path)):
        cfg = Config.from_toml(config)
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    elif isinstance(config, Config):
        cfg = config.validate()
    else:
        raise ConfigError(f"config: expected a Config, a dict or a TOML path, got "
                          f"{type(config).__name__}")
    run = Path(out_dir)
    chief = _is_chief()
    if chief:
        recover_fresh_swap(run)  # a killed fresh start: the old run back in place
        check_run_folder(run, cfg, fresh=fresh)
    # A multi-worker strategy must exist before TensorFlow runs any op.
    strategy = strategy or make_strategy(cfg.train.strategy)
    if cfg.train.deterministic:
        # Process-wide and permanent: every later op uses deterministic kernels, and tf.data
        # keeps element order. Seeds come from train.seed.
        tf.config.experimental.enable_op_determinism()
    # Non-chief workers of a multi-worker run write to a private scratch folder.
    write_dir = run if chief else run / f".worker-{os.getpid()}"

    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.precision)
    old_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        # Everything that can fail on bad input happens before the first write.
        train_ds, val_ds, info = make_data(cfg, cfg.train.seed)
        channels, k = info.channels, info.num_classes
        if cfg.data.num_classes == 0:  # inferred: check the rules that depend on it again
            dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_classes=k)
                                ).validate("inferred num_classes")
        check_input_sizes(cfg, {"training": train_ds, "validation": val_ds})
        steps = int(train_ds.cardinality().numpy())
        if cfg.train.strategy == "multiworker":
            train_ds, val_ds = _distribute_options(train_ds), _distribute_options(val_ds)
        monitor = resolve_monitor(cfg.train.monitor, k)
        if val_ds is None and monitor.startswith("val_"):
            monitor = monitor[4:]
        class_weights = resolve_class_weights(cfg, info.class_pixels, info.class_image_pixels)
        normalization = resolve_normalization(cfg, info)
        ignore = cfg.data.ignore_index if cfg.data.ignore_index >= 0 else None
        resolved = {"num_classes": k, "channels": channels,
                    "loss": resolve_loss_name(cfg.loss.name, k), "class_weights": class_weights,
                    "monitor": monitor, "ignore_index": ignore,
                    "input_normalization": None if normalization is None else
                    {"mean": normalization[0], "std": normalization[1]},
                    "train_samples": info.num_train, "val_samples": info.num_val}
        if verbose and cfg.data.num_classes == 0:
            print(f"num_classes inferred from the masks: {k}"
                  f"{' (binary)' if k == 1 else ''}; set data.num_classes to fix it", flush=True)
        if verbose and class_weights is not None:
            print(f"class weights ({cfg.loss.class_weights if cfg.loss.class_weights == 'auto' else 'given'}): "
                  + ", ".join(f"{c}: {w:.4g}" for c, w in enumerate(class_weights)), flush=True)
        with strategy.scope():
            model = make_model(cfg, channels, sync_batch_norm=strategy.num_replicas_in_sync > 1,
                               num_classes=k, normalization=normalization)
            outputs = list(model.output_names)
            if len(outputs) > 1:
                # Deep supervision: the same loss on every head, averaged (equal weights).
                metrics: Any = {name: _metrics(k, ignore) for name in outputs}
                loss: Any = {name: make_loss(cfg, k, class_weights) for name in outputs}
                loss_weights: Any = {name: 1.0 / len(outputs) for name in outputs}
                # Per-head metrics are logged as "L4_dice" etc.: monitor the deepest head.
                metric = monitor.removeprefix("val_")
                if metric != "loss" and not metric.startswith(tuple(f"{o}_" for o in outputs)):
                    monitor = monitor[: len(monitor) - len(metric)] + f"{outputs[-1]}_{metric}"
            else:
                metrics = _metrics(k, ignore)
                loss, loss_weights = make_loss(cfg, k, class_weights), None
            model.compile(
                optimizer=make_optimizer(cfg, max(1, steps)),
                loss=loss,
                loss_weights=loss_weights,
                metrics=metrics,
                steps_per_execution=cfg.train.steps_per_execution,
                jit_compile=False,  # XLA is slower on CPU and loses oneDNN bf16 kernels
            )
        if len(outputs) > 1:
            train_ds = repeat_targets(train_ds, len(outputs))
            val_ds = None if val_ds is None else repeat_targets(val_ds, len(outputs))
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            _work_around_keras_multiworker_build(model, train_ds)

        if not fresh and chief:
            check_backup(model, run / "backup")

        # First writes: the run folder, after a kill made consistent again. With fresh=True
        # the old run stays in place while the new one trains in a hidden sibling folder; the
        # sibling replaces it once the first epoch is checkpointed (_ReplaceOldRun).
        target = run
        staging = None
        if chief:
            if fresh and run.exists() and any(run.iterdir()):
                staging = _hidden_sibling(run, "fresh")
                run = staging
                write_dir = run
        write_dir.mkdir(parents=True, exist_ok=True)
        if chief:
            _remove_stale_temporaries(run, ["best.keras", "last.keras", "final.keras",
                                            "best.json", "summary.json", "config.toml",
                                            "resolved.json",
                                            "log.csv", "training_curves.png"])
            with atomic_path(run / "config.toml") as tmp:
                tmp.write_text(cfg.to_toml(), encoding="utf-8")
            write_json_atomic(resolved, run / "resolved.json")
        recover_backup(write_dir / "backup")
        repair_csv_log(write_dir / "log.csv", _completed_epochs(write_dir / "backup"))

        # Order matters for a kill between two writes: the log row and the best model are
        # written before the backup that marks the epoch as done, so a resumed run may repeat
        # an epoch (repair_csv_log then drops its first row) but never loses one.
        backup_cb = AtomicBackupAndRestore(write_dir / "backup", write=True)
        callbacks: list = [
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(str(write_dir / "log.csv"), append=True),
            BestModelCheckpoint(run / "best.keras", run / "last.keras", monitor,
                                cfg.train.monitor_mode, write=chief),
            backup_cb,
            _CurvesAtEnd(write_dir / "log.csv", run / "training_curves.png", chief),
        ]
        if cfg.optimizer.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode=cfg.train.monitor_mode, factor=0.5,
                patience=cfg.optimizer.plateau_patience, min_lr=cfg.optimizer.min_learning_rate))
        if cfg.train.early_stopping_patience > 0:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor=monitor, mode=cfg.train.monitor_mode,
                patience=cfg.train.early_stopping_patience))
        if cfg.train.max_minutes > 0:
            callbacks.append(TimeBudget(cfg.train.max_minutes))
        if cfg.train.tensorboard and chief:
            callbacks.append(keras.callbacks.TensorBoard(str(run / "tensorboard")))
        if cfg.train.collapse_warning and cfg.train.strategy in ("default", "mirrored"):
            if val_ds is not None:
                callbacks.append(CollapseWarning(val_ds, label="validation",
                                                 ignore_index=ignore))
            else:  # one training batch, drawn once
                callbacks.append(CollapseWarning(list(train_ds.take(1)), label="training",
                                                 ignore_index=ignore))
        callbacks += list(extra_callbacks or [])
        swap = None
        if staging is not None:
            # After the checkpoint and backup callbacks of the first epoch (order matters).
            swap = _ReplaceOldRun(staging, target, callbacks)
            callbacks.insert(callbacks.index(backup_cb) + 1, swap)

        t0 = time.perf_counter()
        try:
            history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs,
                                callbacks=callbacks, verbose=verbose, shuffle=False)
        except BaseException:
            if swap is not None and not swap.done:  # the old run was never touched
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if swap is not None and not swap.done:
            swap.replace()
        run = target
        seconds = time.perf_counter() - t0
        if chief:
            save_model_atomic(model, run / "final.keras")
            summary = {
                "precision": policy,
                "deterministic": bool(cfg.train.deterministic),
                "strategy": cfg.train.strategy,
                "replicas": int(strategy.num_replicas_in_sync),
                "epochs_run_this_call": len(history.epoch),
                "seconds_this_call": round(seconds, 1),
                "final": {k: float(v[-1]) for k, v in history.history.items() if v},
            }
            best_state = run / "best.json"
            if best_state.exists():
                summary["best"] = json.loads(best_state.read_text())
            write_json_atomic(summary, run / "summary.json")
    finally:
        keras.mixed_precision.set_global_policy(old_policy)
    return history, run
