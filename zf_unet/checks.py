"""Argument checks shared across zf_unet, and the one table of the limits of its numbers.

Argument checks (``check_int``, ``check_bool``, ``check_rate``, ``check_choice``,
``check_limit`` ...) raise ``ValueError`` naming the argument and what was expected;
``check_spacing`` raises :class:`~zf_unet.errors.ConfigError` (a ``ValueError``).
:data:`LIMITS` is the one home of the allowed range of every number a user sets: the config
schema (:mod:`zf_unet.config`), the model builders and :class:`zf_unet.data.Augment` read it.

This module imports no Keras or TensorFlow (reading a config must not); the checks of
segmentation targets against predictions are in :mod:`zf_unet.target_checks`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from zf_unet.errors import ConfigError
from zf_unet.registry import choice_message


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low``..``high`` (``None`` = unbounded), each end closed
    unless ``low_open`` / ``high_open``; ``integer``: whole numbers only."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open
                                      else value > self.high):
            return False
        return True

    def describe(self, integer: bool | None = None) -> str:
        """``"an integer >= 1"``, ``"a number in [0, 1)"`` ... (``integer`` defaults to
        :attr:`integer`)."""
        integer = self.integer if integer is None else integer
        kind = "an integer" if integer else "a number"
        if self.high is None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


#: The allowed range of every number a user sets, by its config key (``section.key``; the
#: augmentation's under ``data.augment``). One home for these limits: the config schema
#: checks TOML files, ``--set`` and ``Config.validate`` against it, the model builders their
#: ``depth`` (``check_limit("depth", depth, "model.depth")``) and :class:`zf_unet.data.Augment`
#: its numbers.
LIMITS: dict[str, Range] = {
    "data.batch_size": Range(1, integer=True),
    "data.val_fraction": Range(0.0, 1.0, high_open=True),
    "data.num_classes": Range(0, 255, integer=True),  # masks are read as uint8 class ids
    "data.ignore_index": Range(-1, 255, integer=True),
    "data.w0": Range(0.0),
    "data.sigma": Range(0.0, low_open=True),
    "data.samples_per_epoch": Range(0, integer=True),
    "data.synthetic_n": Range(2, integer=True),
    "data.synthetic_size": Range(8, integer=True),
    "data.augment.elastic_grid": Range(2, integer=True),
    "data.augment.elastic_std": Range(0.0),
    "data.augment.rotation_degrees": Range(0.0, 180.0),
    "data.augment.brightness": Range(0.0, 1.0),
    "data.augment.contrast": Range(0.0, 1.0, high_open=True),
    "data.augment.gamma": Range(0.0, 1.0, high_open=True),
    "model.depth": Range(2, 10, integer=True),
    "model.filters": Range(1, integer=True),
    "model.dropout": Range(0.0, 1.0, high_open=True),
    "model.encoder_freeze_epochs": Range(0, integer=True),
    "loss.bce_weight": Range(0.0),
    "loss.dice_weight": Range(0.0),
    "loss.focal_gamma": Range(0.0),
    "loss.tversky_alpha": Range(0.0),
    "loss.tversky_beta": Range(0.0),
    "optimizer.learning_rate": Range(0.0, low_open=True),
    "optimizer.weight_decay": Range(0.0),
    "optimizer.momentum": Range(0.0, 1.0, high_open=True),
    "optimizer.min_learning_rate": Range(0.0),
    "optimizer.plateau_patience": Range(1, integer=True),
    "train.epochs": Range(1, integer=True),
    "train.seed": Range(0, 2 ** 32 - 1, integer=True),
    "train.early_stopping_patience": Range(0, integer=True),
    "train.steps_per_execution": Range(1, integer=True),
    "train.max_minutes": Range(0.0),
}


def check_limit(name: str, value: Any, key: str) -> int | float:
    """``value`` checked against ``LIMITS[key]``: an ``int`` for an integer range (bools and
    floats refused), else a finite ``float``; otherwise ``ValueError``
    ``"<name> must be <range>, got <value>"``."""
    allowed = LIMITS[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, np.integer) if allowed.integer else (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be {allowed.describe()}, got {value!r}")
    number = int(value) if allowed.integer else float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if number not in allowed:
        raise ValueError(f"{name} must be {allowed.describe()}, got {value!r}")
    return number


def check_spacing(value: Any, name: str = "spacing", ndim: int | None = None
                  ) -> tuple[float, ...] | None:
    """The voxel size ``value`` as a tuple of positive finite floats (``ndim`` of them when
    given, e.g. 3 for ``(z, y, x)``); ``None`` passes through (the caller decides what no
    spacing means). Else :class:`~zf_unet.errors.ConfigError` starting with ``name``."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple, np.ndarray)) \
            or (isinstance(value, np.ndarray) and value.ndim != 1):
        raise ConfigError(f"{name} must be a tuple of positive numbers, one per spatial axis "
                          f"(e.g. (50, 4.6, 4.6) for z, y, x), got {value!r}")
    values = []
    for v in value:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) \
                or not math.isfinite(float(v)) or float(v) <= 0:
            raise ConfigError(f"{name} must hold positive finite numbers (the voxel size per "
                              f"spatial axis), got {value!r}")
        values.append(float(v))
    if ndim is not None and len(values) != ndim:
        raise ConfigError(f"{name} has {len(values)} entries but the input has {ndim} spatial "
                          f"axes; give one voxel size per axis, got {value!r}")
    if not values:
        raise ConfigError(f"{name} must not be empty, got {value!r}")
    return tuple(values)


# --------------------------------------------------------------------------- arguments


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) >= ``minimum`` (and <=
    ``maximum`` when given), else ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False (or a NumPy bool), else ``ValueError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_rate(name: str, value: Any) -> float:
    """``value`` as a float if it is a number in [0, 1) (a dropout rate), else ``ValueError``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)) \
            or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` (with the nearest choice)."""
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(choice_message(name, value, choices))


def check_threshold(name: str, value: Any, allow_none: bool = False) -> float | None:
    """``value`` as a finite float (``None`` passes when ``allow_none``), else ``ValueError``
    naming ``name``."""
    if value is None and allow_none:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        what = "None or a number" if allow_none else "a number"
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    return number


def check_tiling(tile_size: Any, overlap: Any, batch_size: Any, tiled: bool = True
                 ) -> tuple[int, int, int]:
    """``(tile_size, overlap, batch_size)`` as ints: ``tile_size`` and ``batch_size`` >= 1,
    ``overlap`` >= 0 and (when ``tiled``) smaller than ``tile_size``, else ``ValueError``."""
    tile_size = check_int("tile_size", tile_size, 1)
    overlap = check_int("overlap", overlap, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    if tiled and overlap >= tile_size:
        raise ValueError(f"overlap={overlap} must be smaller than tile_size={tile_size}")
    return tile_size, overlap, batch_size


def check_ignore_index(value: Any, name: str = "ignore_index") -> int | None:
    """``value`` as an ``int`` (any integer, usually outside 0..C-1, e.g. 255) or ``None``,
    else ``ValueError`` naming ``name`` (``ignore_class`` in losses and metrics)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer or None, got {value!r}")
    return int(value)


__all__ = ["LIMITS", "Range", "check_bool", "check_choice", "check_ignore_index", "check_int",
           "check_limit", "check_rate", "check_spacing", "check_threshold", "check_tiling"]
