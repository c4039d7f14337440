"""Keras callbacks of :func:`zf_unet.train` and the CSV log they write.

:class:`BestModelCheckpoint` (best / last model), :class:`AtomicBackupAndRestore` (resumable
backups committed as a whole, with :func:`recover_backup`), :class:`CollapseWarning`,
:class:`TimeBudget`, :class:`CurvesAtEnd` (``training_curves.png``), :class:`ReplaceOldRun`
(``fresh=True`` over an existing run), and :func:`read_csv_log` / :func:`repair_csv_log`.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from zf_unet import _keras_compat
from zf_unet.errors import ConfigError, TrainingFailedError
from zf_unet.models.loading import load_weights_file
from zf_unet.io_utils import (atomic_path, copy_file_atomic, is_temporary_of, make_hidden_dir,
                              save_model_atomic, write_json_atomic)
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("zf_unet.callbacks (tf.data validation sets)")

__all__ = ["AtomicBackupAndRestore", "BestModelCheckpoint", "CollapseWarning", "CurvesAtEnd",
           "ReplaceOldRun", "TimeBudget", "backup_source", "completed_epochs", "hidden_sibling",
           "read_csv_log", "recover_backup", "repair_csv_log"]

logger = logging.getLogger("zf_unet")
# Library practice: no output through logging's last-resort handler (CollapseWarning prints
# its line itself); applications that configure logging still get every record.
logger.addHandler(logging.NullHandler())


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
            if better and np.isfinite(value):  # the same model: copy the file, save once
                copy_file_atomic(self.best_path, self.last_path)
            else:
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


def completed_epochs(backup_dir: str | Path) -> int:
    """Epochs completed according to the backup (0 without one)."""
    meta = Path(backup_dir) / "training_metadata.json"
    if not meta.exists():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{meta}: unreadable backup metadata ({exc}); delete the run's "
                          "backup/ folder to restart from epoch 0, or use --fresh") from None


def backup_source(backup_dir: str | Path) -> Path:
    """The folder a backup is read from without repairing it: a half-committed
    ``.committed`` folder when there is one, else ``backup_dir``."""
    d = Path(backup_dir)
    return d / _COMMITTED if (d / _COMMITTED).is_dir() else d


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
        _keras_compat.check_backup_hooks()
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
        weights_path, metadata_path = _keras_compat.backup_files(self)
        epoch, batch = _keras_compat.backup_position(self)
        self.model.save_weights(str(pending / Path(weights_path).name))
        opt = self.model.optimizer
        with open(pending / self._optimizer_path.name, "wb") as fh:
            np.savez(fh, *[np.asarray(v) for v in opt.variables])
        (pending / Path(metadata_path).name).write_text(
            json.dumps({"epoch": epoch, "batch": batch}))
        for f in pending.iterdir():  # on disk before the commit point
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(pending, d / _COMMITTED)  # the commit point
        recover_backup(d)  # move the files into place

    def _load_model(self) -> None:
        recover_backup(self.backup_dir)
        weights_path, metadata_path = _keras_compat.backup_files(self)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                super()._load_model()
            for w in caught:  # shown only when this layout loaded
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Exception:
            # A run backed up by a zf_unet whose decoders were not yet fused: the weights are
            # the same, the file's layout is not (see load_weights_file).
            if not os.path.exists(weights_path):
                raise
            opt = self.model.optimizer
            if opt is not None and not opt.built:
                opt.build(self.model.trainable_variables)
            load_weights_file(self.model, weights_path)
            if os.path.exists(metadata_path):
                self.model._initial_epoch = int(json.loads(Path(metadata_path).read_text())
                                                ["epoch"])
        if os.path.exists(weights_path) and self._optimizer_path.exists():
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
    one ``(x, y)`` tuple of arrays). The batches of a dataset are drawn once and kept, so an
    epoch pays only ``max_batches`` forward passes (2 by default: collapse is a gross signal,
    and every batch checked costs the time of a validation batch again). If one class takes more than ``1 - fraction`` of the
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
                 max_batches: int = 2, patience: int = 1, label: str = "validation",
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
        self._kept: list | None = None

    def _batches(self) -> Any:
        data = self.data
        if isinstance(data, tuple) and len(data) in (2, 3) and not isinstance(
                data[0], (tuple, list)):
            return [data]
        if isinstance(data, tf.data.Dataset):
            if self._kept is None:  # one pass over the pipeline, not one per epoch
                self._kept = [(b[0], b[1]) for b in data.take(self.max_batches)]
            return self._kept
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
            # NumPy, not tf.data's tensors: the JAX and PyTorch backends take arrays
            x, y = np.asarray(batch[0]), self._last(batch[1])
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


class CurvesAtEnd(keras.callbacks.Callback):
    """Draw ``training_curves.png`` from the CSV log when training ends (chief only)."""

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


#: What ``train`` writes into a run folder; anything else there is the user's and survives
#: ``fresh=True`` (moved into the new run).
RUN_OUTPUTS = ("config.toml", "resolved.json", "best.keras", "best.json", "last.keras",
               "final.keras", "log.csv", "training_curves.png", "summary.json", "tensorboard",
               "backup")


def is_run_output(name: str) -> bool:
    """Whether ``name`` in a run folder is something ``train`` wrote: one of
    :data:`RUN_OUTPUTS`, a worker's scratch folder, or a temporary file of an atomic write."""
    if name in RUN_OUTPUTS or name.startswith(".worker-"):
        return True
    return any(is_temporary_of(name, out) for out in RUN_OUTPUTS)


def keep_user_files(old_run: Path, new_run: Path) -> None:
    """Move the user's files (not :func:`is_run_output`) of a replaced run folder into the
    new one, so ``fresh=True`` replaces only what training wrote."""
    if not old_run.is_dir():
        return
    for entry in sorted(old_run.iterdir()):
        if is_run_output(entry.name):
            continue
        target, n = new_run / entry.name, 1
        while target.exists() or target.is_symlink():  # never over another file
            target, n = new_run / f"{entry.name}.kept-{n}", n + 1
        os.replace(entry, target)


class StopOnNonFinite(keras.callbacks.Callback):
    """Fail (:class:`TrainingFailedError`) at the first batch whose loss is NaN or Inf.

    Raised from inside ``fit``, so the epoch's end never comes: no checkpoint, backup or
    ``last.keras`` of the broken model is written, and a resumed run restarts from the last
    finite epoch. ``epoch`` / ``batch`` say where it happened."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise TrainingFailedError(
                f"the training loss became {float(loss)} at epoch {self.epoch + 1}, batch "
                f"{batch + 1}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Weights that broke on the epoch's last step show only in the validation loss:
        fail before the checkpoint and backup callbacks (this one comes first) save them."""
        for key, value in (logs or {}).items():
            if key.endswith("loss") and not np.isfinite(float(value)):
                raise TrainingFailedError(f"{key} became {float(value)} at the end of epoch "
                                          f"{epoch + 1}")


def hidden_sibling(run: Path, kind: str) -> Path:
    """A new hidden folder ``.NAME.KIND-*`` beside ``run`` (its parent is created)."""
    run.parent.mkdir(parents=True, exist_ok=True)
    return make_hidden_dir(run.parent, f".{run.name}.{kind}-")


def _relocate(obj: Any, old: Path, new: Path) -> None:
    """Point every path attribute of ``obj`` (str or Path) inside ``old`` to ``new``."""
    prefix = str(old)
    for name, value in list(vars(obj).items()):
        if isinstance(value, (str, Path)):
            text = str(value)
            if text == prefix or text.startswith(prefix + os.sep):
                moved = str(new) + text[len(prefix):]
                setattr(obj, name, Path(moved) if isinstance(value, Path) else moved)


class ReplaceOldRun(keras.callbacks.Callback):
    """``fresh=True`` on an existing run: the new run trains in the hidden sibling
    ``staging``; at the end of its first epoch (after the checkpoint and backup callbacks)
    ``staging`` replaces ``target``, and the callbacks' paths follow it.

    The old run is renamed into a hidden holder, ``staging`` is renamed to ``target``, then
    the holder is deleted; :func:`zf_unet.run_folder.recover_fresh_swap` completes or undoes a
    kill in between.
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
        holder = hidden_sibling(self.target, "old")
        if self.target.exists():
            os.rename(self.target, holder / "run")
        os.rename(self.staging, self.target)
        self.done = True
        keep_user_files(holder / "run", self.target)
        shutil.rmtree(holder, ignore_errors=True)
        staging, target = self.staging, self.target
        for cb in self.callbacks:
            if cb is not self:
                _relocate(cb, staging, target)


