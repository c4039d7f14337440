"""Training that scales: ``zf_unet.train(config)`` / ``zf-unet train``.

``model.fit`` with a best checkpoint, resumable backups, early stopping, LR schedules, CSV and
TensorBoard logs, NaN guard and training curves; float32 / bfloat16 / float16 precision; the
default, Mirrored, MultiWorkerMirrored (``TF_CONFIG``) or TPU ``tf.distribute`` strategy.
Every file is written atomically, so a run killed at any moment leaves no half-written model
and resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from zf_unet import _keras_compat
from zf_unet import metrics as zm
from zf_unet.callbacks import (AtomicBackupAndRestore, BestModelCheckpoint, CollapseWarning,
                               CurvesAtEnd, ReplaceOldRun, RUN_OUTPUTS, StopOnNonFinite,
                               TimeBudget, completed_epochs, hidden_sibling, read_csv_log,
                               recover_backup, repair_csv_log)
from zf_unet.config import Config, model_levels, resolve_monitor
from zf_unet.data.pipeline import make_datasets
from zf_unet.data.stats import median_frequency_weights
from zf_unet.data.volumes import make_volume_datasets
from zf_unet.data.sources import open_source
from zf_unet.distribute import is_chief, make_strategy
from zf_unet.errors import ConfigError, TrainingFailedError
from zf_unet.io_utils import (atomic_path, remove_stale_temporaries, save_model_atomic,
                              write_json_atomic)
from zf_unet.outputs import check_not_input
from zf_unet.models import build_unet, build_unet_plus_plus, repeat_targets
import zf_unet.optimizers  # noqa: F401,E402 - registers FusedAdam for keras load_model
from zf_unet.precision import resolve_precision
from zf_unet.registry import LOSSES, OPTIMIZERS, SCHEDULES
from zf_unet.run_folder import check_backup, check_run_folder, diverged, recover_fresh_swap
from zf_unet.backend import enable_determinism, lazy_tensorflow

tf = lazy_tensorflow("zf_unet.train (its tf.data pipelines)")

# Callbacks and strategies live in zf_unet.callbacks / zf_unet.distribute; re-exported here
# for code that imported them from zf_unet.training.
__all__ = ["AtomicBackupAndRestore", "BestModelCheckpoint", "CollapseWarning", "TimeBudget",
           "make_strategy", "read_csv_log", "recover_backup", "repair_csv_log", "train"]


# --------------------------------------------------------------------------- pieces


def resolve_loss_name(name: str, num_classes: int) -> str:
    """``"auto"`` -> ``bce_dice`` (one class) or ``ce_dice`` (several); else ``name``."""
    if name != "auto":
        return name
    return "bce_dice" if num_classes == 1 else "ce_dice"


def make_loss(cfg: Config, num_classes: int | None = None,
              class_weights: list[float] | None = None) -> keras.losses.Loss:
    """The loss ``cfg.loss`` names, through the registry :data:`zf_unet.registry.LOSSES`, with the
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
    LOSSES.check(name, "loss", ConfigError)
    if name in ("dice", "jaccard", "tversky") and class_weights is not None:
        raise ConfigError(f"loss.class_weights applies to the cross-entropy losses (bce_dice, "
                          f"ce_dice, ce, focal), not to loss.name = {name!r}")
    return LOSSES.create(name, ignore_class=ignore, **params[name])


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


#: With ``model.encoder_freeze_epochs``: the learning rate (and its floor) of the training
#: after the encoder is unfrozen is the configured one divided by this factor.
FINETUNE_LR_FACTOR = 10.0


def encoder_freeze_epochs(cfg: Config) -> int:
    """Epochs to train with the encoder frozen (0 without a backbone)."""
    return int(cfg.model.encoder_freeze_epochs) if cfg.model.backbone else 0


def finetune_config(cfg: Config) -> Config:
    """``cfg`` with ``optimizer.learning_rate`` and ``min_learning_rate`` divided by
    :data:`FINETUNE_LR_FACTOR`: the optimizer of the training after the encoder is unfrozen."""
    o = cfg.optimizer
    return dataclasses.replace(cfg, optimizer=dataclasses.replace(
        o, learning_rate=o.learning_rate / FINETUNE_LR_FACTOR,
        min_learning_rate=o.min_learning_rate / FINETUNE_LR_FACTOR))


def set_encoder_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (``False``: weights fixed, BatchNorm in inference mode) or unfreeze the nested
    ``"encoder"`` of a model on a backbone; models without one are left as they are. The
    model must be compiled again afterwards."""
    try:
        encoder = model.get_layer("encoder")
    except ValueError:
        return
    encoder.trainable = bool(trainable)


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
    if m.backbone:  # the encoder fixes the depth and scales the input itself
        common.update(depth=None, input_normalization=None, backbone=m.backbone,
                      encoder_weights=m.encoder_weights or None)
    if m.pool_sizes or m.kernel_sizes or cfg.data.volumes:
        common.update(pool_sizes=m.pool_sizes or None, kernel_sizes=m.kernel_sizes or None,
                      spacing=tuple(cfg.data.spacing) or None)
    shape = (None,) * (3 if cfg.data.volumes else 2) + (channels,)
    if m.architecture == "unet_plus_plus":
        if m.padding != "same":
            raise ConfigError("model.padding must be 'same' for unet_plus_plus")
        return build_unet_plus_plus(shape, deep_supervision=m.deep_supervision, **common)
    return build_unet(shape, padding=m.padding, **common)


def _metrics(num_classes: int, ignore_index: int | None = None) -> list:
    """Dice and IoU of the foreground (all classes for K > 1); for binary models also the mean
    Dice of both classes (``dice_mean``), which an all-foreground guess cannot game when the
    foreground dominates (ISBI: ~78 % cell interior); for several classes the mean IoU
    (``miou``) and the IoU of every class (``iou_<c>``). Pixels equal to ``ignore_index`` are
    left out of all of them."""
    out = [zm.DiceCoefficient(num_classes=num_classes, ignore_class=ignore_index),
           zm.IoU(num_classes=num_classes, ignore_class=ignore_index)]
    if num_classes == 1:
        out.append(zm.DiceCoefficient(target_class_ids=[0, 1], name="dice_mean",
                                      ignore_class=ignore_index))
    else:
        out.append(zm.MeanIoU(num_classes, ignore_class=ignore_index, name="miou"))
        out += [zm.ClassIoU(c, num_classes, ignore_class=ignore_index)
                for c in range(num_classes)]
    return out


def make_optimizer(cfg: Config, steps_per_epoch: int, monitor: str = "val_loss"
                   ) -> tuple[keras.optimizers.Optimizer, list]:
    """``(optimizer, callbacks)``: the optimizer ``cfg.optimizer`` names
    (:data:`zf_unet.registry.OPTIMIZERS`) with the learning rate of its schedule
    (:data:`zf_unet.registry.SCHEDULES`) over ``steps_per_epoch * train.epochs`` steps, and the
    schedule's callbacks (``plateau``: ``ReduceLROnPlateau`` on ``monitor``)."""
    o = cfg.optimizer
    lr, callbacks = SCHEDULES.get(o.schedule, "optimizer.schedule")(
        learning_rate=o.learning_rate, min_learning_rate=o.min_learning_rate,
        total_steps=max(1, steps_per_epoch * cfg.train.epochs), monitor=monitor,
        mode=cfg.train.monitor_mode, patience=o.plateau_patience)
    optimizer = OPTIMIZERS.get(o.name, "optimizer.name")(
        lr, weight_decay=o.weight_decay, momentum=o.momentum)
    return optimizer, callbacks


def make_data(cfg: Config, seed: int) -> tuple[tf.data.Dataset, tf.data.Dataset | None, Any]:
    """``(train_ds, val_ds, info)`` for ``cfg.data``: ``info`` is the training data's
    :class:`zf_unet.data.DataInfo` (classes, class counts, channel mean/std)."""
    d = cfg.data
    source: Any = d.source
    if source == "synthetic":
        source = open_source(source, synthetic=(d.synthetic_n, d.synthetic_size, seed))
    if d.num_classes == 0 and not d.palette:
        num_classes: Any = "auto"
    else:  # data.palette: its classes, even those no training mask holds
        k = d.num_classes or d.palette_classes()
        num_classes = k if k > 1 or d.class_values else None
    if d.volumes:
        ds = make_volume_datasets(
            source, patch_size=d.patch_size or None, batch_size=d.batch_size,
            val_fraction=d.val_fraction, val_indices=d.val_indices or None, seed=seed,
            augment=d.augment, spacing=tuple(d.spacing) or None,
            border_weights=d.border_weights, w0=d.w0, sigma=d.sigma, num_classes=num_classes,
            class_values=d.class_values or None,
            ignore_index=d.ignore_index if d.ignore_index >= 0 else None,
            val_source=d.val_source or None, samples_per_epoch=d.samples_per_epoch or None)
        return ds.train, ds.val, ds.info
    ds = make_datasets(
        source, patch_size=d.patch_size or None, batch_size=d.batch_size,
        val_fraction=d.val_fraction, val_indices=d.val_indices or None, seed=seed,
        augment=d.augment, border_weights=d.border_weights, w0=d.w0, sigma=d.sigma,
        num_classes=num_classes, class_values=d.class_values or None,
        palette=d.mask_palette(),
        ignore_index=d.ignore_index if d.ignore_index >= 0 else None,
        val_source=d.val_source or None, samples_per_epoch=d.samples_per_epoch or None,
        cache=d.cache, skip_bad_files=d.skip_bad_files)
    return ds.train, ds.val, ds.info


def resolve_normalization(cfg: Config, info: Any) -> tuple[list[float], list[float]] | None:
    """``model.input_normalization`` as ``(mean, std)`` of the training images or None
    (``auto``: standardise images with 3 or more channels, natural images; not gray EM)."""
    mode = cfg.model.input_normalization
    if cfg.model.backbone:  # BackbonePreprocessing scales the input
        return None
    if mode == "none" or (mode == "auto" and info.channels < 3):
        return None
    return ([round(float(v), 6) for v in info.mean], [round(float(v), 6) for v in info.std])


def check_input_sizes(cfg: Config, datasets: dict[str, tf.data.Dataset | None]) -> None:
    """Raise a :class:`ConfigError` if the model ``cfg.model`` cannot take the (static) image
    sizes of ``datasets`` (``{"training": train_ds, "validation": val_ds}``), naming the
    nearest sizes it can take, before TensorFlow fails with a shape error inside ``fit``."""
    from zf_unet.models.geometry import output_size, valid_input_sizes

    m = cfg.model
    depth = model_levels(m)
    if cfg.data.volumes:
        _check_volume_sizes(cfg, datasets)
        return
    for label, ds in datasets.items():
        if ds is None:
            continue
        spec = ds.element_spec[0]
        for side in (spec.shape[1], spec.shape[2]):
            if side is None or output_size(int(side), depth, m.padding) is not None:
                continue
            nearest = valid_input_sizes(depth, m.padding, near=int(side))
            rule = (f"a multiple of 2**(depth-1) = {2 ** (depth - 1)}" if m.padding == "same"
                    else "a size whose feature maps stay even before every pooling")
            where = (f"data.patch_size = {cfg.data.patch_size}" if cfg.data.patch_size
                     else f"the {label} images (data.patch_size = 0: whole images)")
            raise ConfigError(
                f"{where}: a depth-{depth} U-Net with padding={m.padding!r} cannot take "
                f"{label} inputs of {int(side)} px; expected {rule} (nearest: {nearest}), or "
                "another model.depth")


def _check_volume_sizes(cfg: Config, datasets: dict[str, tf.data.Dataset | None]) -> None:
    """:func:`check_input_sizes` for 3-D models: each static patch side must be a multiple of
    the product of its axis's pool sizes."""
    from zf_unet.models.anisotropy import axis_divisors, resolve_levels

    m = cfg.model
    try:
        pools, _ = resolve_levels(m.pool_sizes or None, m.kernel_sizes or None,
                                  tuple(cfg.data.spacing) or None, m.depth, 3)
    except ValueError as exc:
        raise ConfigError(f"[model]: {exc}") from None
    divisors = axis_divisors(pools, 3)
    for label, ds in datasets.items():
        if ds is None:
            continue
        shape = ds.element_spec[0].shape[1:4]
        for axis, side, div in zip("zyx", shape, divisors):
            if side is None or int(side) % div == 0:
                continue
            lo = max(div, int(side) // div * div)
            raise ConfigError(
                f"data.patch_size = {cfg.data.patch_size}: the {label} {axis} side is "
                f"{int(side)}, but the model pools that axis by {div} in all; expected a "
                f"multiple of {div} (e.g. {lo} or {lo + div}), or other model.pool_sizes")


def _distribute_options(ds: tf.data.Dataset | None) -> tf.data.Dataset | None:
    if ds is None:
        return None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# --------------------------------------------------------------------------- train


def _as_config(config: Config | str | Path | dict) -> Config:
    """``config`` (a :class:`Config`, its dict or a TOML path) read and checked."""
    if isinstance(config, (str, Path)):
        return Config.from_toml(config)
    if isinstance(config, dict):
        return Config.from_dict(config)
    if isinstance(config, Config):
        return config.validate()
    raise ConfigError(f"config: expected a Config, a dict or a TOML path, got "
                      f"{type(config).__name__}")


@dataclasses.dataclass
class _Data:
    """The loaded data of a run and what it resolves: ``num_classes``, ``monitor`` ..."""

    train_ds: Any
    val_ds: Any
    info: Any
    steps: int
    monitor: str
    class_weights: list[float] | None
    normalization: tuple[list[float], list[float]] | None
    ignore: int | None
    resolved: dict

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def _load_data(cfg: Config, verbose: int | str) -> _Data:
    """Phase 1: the datasets (checked against the model's input sizes), the rules that depend
    on the inferred ``num_classes`` checked again, the monitor, class weights and input
    normalization resolved; ``resolved`` is what ``resolved.json`` records."""
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
        print(f"class weights ({'auto' if cfg.loss.class_weights == 'auto' else 'given'}): "
              + ", ".join(f"{c}: {w:.4g}" for c, w in enumerate(class_weights)), flush=True)
    return _Data(train_ds, val_ds, info, steps, monitor, class_weights, normalization, ignore,
                 resolved)


class _Compiled:
    """Phase 2: the model (built under the strategy's scope) with its losses and metrics (one
    per head for deep supervision, whose monitor becomes the deepest head's), and the
    encoder frozen while a fine-tuning run is in its first ``encoder_freeze_epochs``."""

    def __init__(self, cfg: Config, data: _Data, strategy: Any, run: Path, fresh: bool) -> None:
        self.cfg, self.strategy, self.steps = cfg, strategy, max(1, data.steps)
        k, ignore = data.num_classes, data.ignore
        with strategy.scope():
            model = make_model(cfg, data.info.channels,
                               sync_batch_norm=strategy.num_replicas_in_sync > 1,
                               num_classes=k, normalization=data.normalization)
            self.model = model
            self.outputs = list(model.output_names)
            monitor = data.monitor
            if len(self.outputs) > 1:
                # Deep supervision: the same loss on every head, averaged (equal weights).
                self.metrics: Any = {name: _metrics(k, ignore) for name in self.outputs}
                self.loss: Any = {name: make_loss(cfg, k, data.class_weights)
                                  for name in self.outputs}
                self.loss_weights: Any = {name: 1.0 / len(self.outputs) for name in self.outputs}
                # Per-head metrics are logged as "L4_dice" etc.: monitor the deepest head.
                metric = monitor.removeprefix("val_")
                if metric != "loss" and not metric.startswith(
                        tuple(f"{o}_" for o in self.outputs)):
                    monitor = monitor[: len(monitor) - len(metric)] + f"{self.outputs[-1]}_{metric}"
            else:
                self.metrics = _metrics(k, ignore)
                self.loss, self.loss_weights = make_loss(cfg, k, data.class_weights), None
            self.monitor = monitor
            optimizer, self.schedule_callbacks = make_optimizer(cfg, self.steps, monitor)
            # Fine-tuning: the encoder frozen for the first encoder_freeze_epochs epochs
            # (resumed runs: unless the backup is past them).
            self.freeze = encoder_freeze_epochs(cfg)
            done = 0 if fresh else completed_epochs(run / "backup")
            self.frozen = done < self.freeze
            set_encoder_trainable(model, not self.frozen)
            if self.freeze and not self.frozen:  # resumed after the switch: the reduced rate
                optimizer, self.schedule_callbacks = make_optimizer(
                    finetune_config(cfg), self.steps, monitor)
            self.compile(optimizer)

    def compile(self, optimizer: keras.optimizers.Optimizer) -> None:
        self.model.compile(
            optimizer=optimizer,
            loss=self.loss,
            loss_weights=self.loss_weights,
            metrics=self.metrics,
            steps_per_execution=self.cfg.train.steps_per_execution,
            # XLA: JAX needs it; TF's loses oneDNN bf16 on CPU; torch.compile is slow
            jit_compile=keras.backend.backend() == "jax",
        )

    def unfreeze(self) -> list:
        """Unfreeze the encoder and compile with a new optimizer at the fine-tuning rate;
        returns the new schedule's callbacks."""
        with self.strategy.scope():
            set_encoder_trainable(self.model, True)
            optimizer, new_schedule = make_optimizer(finetune_config(self.cfg), self.steps,
                                                     self.monitor)
            self.compile(optimizer)
        return new_schedule


def _fit_datasets(compiled: _Compiled, data: _Data, strategy: Any) -> tuple[Any, Any, Any]:
    """``(fit_ds, train_ds, val_ds)``: targets repeated per head; a multi-worker streaming
    run reads each worker's own share of the files."""
    heads = len(compiled.outputs)
    train_ds, val_ds = data.train_ds, data.val_ds
    if heads > 1:
        train_ds = repeat_targets(train_ds, heads)
        val_ds = None if val_ds is None else repeat_targets(val_ds, heads)
    fit_ds: Any = train_ds
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _keras_compat.patch_multiworker_build(compiled.model, train_ds)
        make_train = data.info.make_train
        if make_train is not None:
            # Streaming: every worker reads its own share of the files.
            fit_ds = strategy.distribute_datasets_from_function(
                lambda context: repeat_targets(make_train(context), heads)
                if heads > 1 else make_train(context))
    return fit_ds, train_ds, val_ds


def _open_run_folder(cfg: Config, run: Path, write_dir: Path, chief: bool, fresh: bool,
                     resolved: dict) -> tuple[Path, Path, Path | None]:
    """Phase 3, the first writes: the run folder, after a kill made consistent again. With
    fresh=True the old run stays in place while the new one trains in a hidden sibling
    folder (returned as ``staging``, else None); the sibling replaces it once the first
    epoch is checkpointed (ReplaceOldRun). Returns ``(run, write_dir, staging)``."""
    staging = None
    if chief:
        if fresh and run.exists() and any(run.iterdir()):
            staging = hidden_sibling(run, "fresh")
            run = staging
            write_dir = run
    write_dir.mkdir(parents=True, exist_ok=True)
    if chief:
        remove_stale_temporaries(run, [n for n in RUN_OUTPUTS if "." in n])
        with atomic_path(run / "config.toml") as tmp:
            tmp.write_text(cfg.to_toml(), encoding="utf-8")
        write_json_atomic(resolved, run / "resolved.json")
    recover_backup(write_dir / "backup")
    repair_csv_log(write_dir / "log.csv", completed_epochs(write_dir / "backup"))
    return run, write_dir, staging


def _callbacks(cfg: Config, compiled: _Compiled, run: Path, write_dir: Path, chief: bool,
               train_ds: Any, val_ds: Any, ignore: int | None, extra: list | None,
               staging: Path | None, target: Path) -> tuple[list, ReplaceOldRun | None]:
    """Phase 4: ``(callbacks, swap)``. Order matters for a kill between two writes: the log
    row and the best model are written before the backup that marks the epoch as done, so a
    resumed run may repeat an epoch (repair_csv_log then drops its first row) but never
    loses one. ``swap`` (a fresh start over an old run) comes right after the backup."""
    monitor = compiled.monitor
    backup_cb = AtomicBackupAndRestore(write_dir / "backup", write=True)
    callbacks: list = [
        StopOnNonFinite(),
        keras.callbacks.CSVLogger(str(write_dir / "log.csv"), append=True),
        BestModelCheckpoint(run / "best.keras", run / "last.keras", monitor,
                            cfg.train.monitor_mode, write=chief),
        backup_cb,
        CurvesAtEnd(write_dir / "log.csv", run / "training_curves.png", chief),
    ]
    callbacks += compiled.schedule_callbacks
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
            callbacks.append(CollapseWarning(val_ds, label="validation", ignore_index=ignore))
        else:  # one training batch, drawn once
            callbacks.append(CollapseWarning(list(train_ds.take(1)), label="training",
                                             ignore_index=ignore))
    callbacks += list(extra or [])
    swap = None
    if staging is not None:
        # After the checkpoint and backup callbacks of the first epoch (order matters).
        swap = ReplaceOldRun(staging, target, callbacks)
        callbacks.insert(callbacks.index(backup_cb) + 1, swap)
    return callbacks, swap


def _fit(cfg: Config, compiled: _Compiled, fit_ds: Any, val_ds: Any, callbacks: list,
         verbose: int | str) -> keras.callbacks.History:
    """Phase 5: ``model.fit``; with a frozen encoder first the decoder only, then the whole
    model at learning_rate / 10 (a new optimizer; a backup written before the switch
    restores the weights only), the two histories joined."""
    model, freeze = compiled.model, compiled.freeze
    if not compiled.frozen:
        return model.fit(fit_ds, validation_data=val_ds, epochs=cfg.train.epochs,
                         callbacks=callbacks, verbose=verbose, shuffle=False)
    history = model.fit(fit_ds, validation_data=val_ds,
                        epochs=min(freeze, cfg.train.epochs), callbacks=callbacks,
                        verbose=verbose, shuffle=False)
    if freeze < cfg.train.epochs and not model.stop_training:
        new_schedule = compiled.unfreeze()
        callbacks = [c for c in callbacks if c not in compiled.schedule_callbacks]
        callbacks += new_schedule
        if verbose:
            print(f"encoder unfrozen after {freeze} epoch(s); learning rate / "
                  f"{FINETUNE_LR_FACTOR:g}", flush=True)
        with warnings.catch_warnings():
            # the backup of the frozen phase holds the decoder-only optimizer:
            # Keras restores its weights and says it skips the optimizer
            warnings.filterwarnings(
                "ignore", message="Skipping variable loading for optimizer")
            more = model.fit(fit_ds, validation_data=val_ds,
                             epochs=cfg.train.epochs, initial_epoch=freeze,
                             callbacks=callbacks, verbose=verbose, shuffle=False)
        for key, values in more.history.items():
            history.history.setdefault(key, []).extend(values)
        history.epoch = list(history.epoch) + list(more.epoch)
    return history


def _write_summary(cfg: Config, run: Path, compiled: _Compiled, history: Any, info: Any,
                   policy: str, seconds: float) -> None:
    """Phase 6 (chief): ``final.keras`` and ``summary.json``."""
    save_model_atomic(compiled.model, run / "final.keras")
    summary = {
        "precision": policy, "backend": keras.backend.backend(),
        "deterministic": bool(cfg.train.deterministic),
        "strategy": cfg.train.strategy,
        "replicas": int(compiled.strategy.num_replicas_in_sync),
        "epochs_run_this_call": len(history.epoch),
        "seconds_this_call": round(seconds, 1),
        "final": {k: float(v[-1]) for k, v in history.history.items() if v},
        "streaming": bool(info.streaming),
    }
    if info.read_log is not None and info.read_log.skipped:
        summary["skipped_files"] = sorted(set(info.read_log.skipped))
    best_state = run / "best.json"
    if best_state.exists():
        summary["best"] = json.loads(best_state.read_text())
    write_json_atomic(summary, run / "summary.json")


def train(config: Config | str | Path | dict, out_dir: str | Path = "runs/run",
          *, fresh: bool = False, verbose: int | str = "auto",
          extra_callbacks: list | None = None,
          strategy: tf.distribute.Strategy | None = None) -> tuple[keras.callbacks.History, Path]:
    """Train a U-Net as ``config`` says and write the run folder ``out_dir``.

    Re-running with the same ``out_dir`` resumes an interrupted run (weights, optimizer state
    and epoch) when the config is the same (only :data:`zf_unet.run_folder.RESUMABLE_KEYS`,
    e.g. ``train.epochs``, may change); ``fresh=True`` starts over. Writes: ``config.toml``
    (resolved), ``best.keras`` (+ ``best.json``), ``last.keras``, ``final.keras``,
    ``log.csv``, ``training_curves.png``, ``tensorboard/``, ``backup/`` and ``summary.json``.

    Every config value is checked (:meth:`Config.validate`), the data loaded and checked, the
    model built, the run folder's config compared and its backup checked before anything is
    written, so a mistake leaves an existing run folder byte-identical. ``out_dir`` must be
    new, empty or a run folder (never a folder of other files). With ``fresh=True`` the new
    run trains in a hidden sibling folder and replaces the old run only once its first epoch
    is checkpointed, so a failure in the first epoch leaves the old run as it was. A run
    killed at any moment (even SIGKILL) resumes from its last completed epoch; ``log.csv``
    then holds each epoch once (see :func:`repair_csv_log`). ``train.deterministic`` turns on
    deterministic kernels for this process (:func:`zf_unet.backend.enable_determinism`); a
    :class:`CollapseWarning` watches the validation (else training) predictions unless
    ``train.collapse_warning = false``.

    The phases: the config and run folder checked; the data loaded (:func:`_load_data`); the
    model built and compiled (:class:`_Compiled`); the backup checked; the run folder written
    (:func:`_open_run_folder`); the callbacks (:func:`_callbacks`); ``fit`` (:func:`_fit`),
    undoing a fresh start that failed; ``final.keras`` and ``summary.json``
    (:func:`_write_summary`).

    Returns:
        ``(history, run_dir)``; ``history.history`` covers the epochs run in this call.
    """
    cfg = _as_config(config)
    run = Path(out_dir).expanduser()
    chief = is_chief()
    sources = [Path(p).expanduser() for p in (cfg.data.source, cfg.data.val_source)
               if isinstance(p, (str, Path)) and str(p)]
    check_not_input(run, [p for p in sources if p.exists()], whole_folder=fresh)
    if chief:
        recover_fresh_swap(run)  # a killed fresh start: the old run back in place
        check_run_folder(run, cfg, fresh=fresh)
    # A multi-worker strategy must exist before TensorFlow runs any op.
    strategy = strategy or make_strategy(cfg.train.strategy)
    if cfg.train.deterministic:  # process-wide and permanent; seeds come from train.seed
        enable_determinism()
    # Non-chief workers of a multi-worker run write to a private scratch folder.
    write_dir = run if chief else run / f".worker-{os.getpid()}"

    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.precision)
    old_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        # Everything that can fail on bad input happens before the first write.
        data = _load_data(cfg, verbose)
        compiled = _Compiled(cfg, data, strategy, run, fresh)
        fit_ds, train_ds, val_ds = _fit_datasets(compiled, data, strategy)
        if not fresh and chief:
            check_backup(compiled.model, run / "backup")

        target = run
        run, write_dir, staging = _open_run_folder(cfg, run, write_dir, chief, fresh,
                                                   data.resolved)
        callbacks, swap = _callbacks(cfg, compiled, run, write_dir, chief, train_ds, val_ds,
                                     data.ignore, extra_callbacks, staging, target)
        t0 = time.perf_counter()
        try:
            history = _fit(cfg, compiled, fit_ds, val_ds, callbacks, verbose)
        except BaseException as exc:
            old_run_kept = swap is not None and not swap.done
            if old_run_kept:  # the old run was never touched
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, TrainingFailedError):
                raise diverged(exc, target, chief and not old_run_kept, policy) from None
            read_log = data.info.read_log
            failed = read_log.error if read_log is not None else None
            if failed is not None and isinstance(exc, tf.errors.OpError):
                raise failed from None  # a file that could not be read mid-epoch, named
            raise
        if swap is not None and not swap.done:
            swap.replace()
        run = target
        if chief:
            _write_summary(cfg, run, compiled, history, data.info, policy,
                           time.perf_counter() - t0)
    finally:
        keras.mixed_precision.set_global_policy(old_policy)
    return history, run
