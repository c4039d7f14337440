"""Training configuration: one TOML file, every field documented, sensible defaults.

Example ``configs/isbi2012.toml``::

    [data]
    source = "../shared/data/isbi2012"
    patch_size = 256
    val_indices = [20, 21, 22, 23]
    border_weights = true

    [model]
    filters = 32

    [train]
    epochs = 40
    precision = "auto"

Unknown keys are errors (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from zf_unet.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class AugmentConfig:
    """Paper-style augmentation (see ``zf_unet.data.Augment``); ``enabled=false`` turns it off."""

    enabled: bool = True
    elastic: bool = True
    elastic_grid: int = 3          # coarse grid points per side
    elastic_std: float = 10.0      # px, std of the grid displacements (paper: 10)
    interpolation: str = "bilinear"  # image resampling: bilinear | bicubic
    flips: bool = True
    rotate90: bool = True
    rotation_degrees: float = 0.0  # max small rotation; 0 = off
    gray_values: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2


@dataclass
class DataConfig:
    source: str = "synthetic"      # folder (images/ + masks/), "synthetic", or "tfds:NAME"
    patch_size: int = 0            # random square patches for training; 0 = whole images
    batch_size: int = 4            # global batch (split across replicas)
    val_fraction: float = 0.2      # seeded random hold-out ...
    val_indices: list = field(default_factory=list)  # ... or these sample indices
    num_classes: int = 1           # 1 = binary (sigmoid); >1 = softmax over class ids
    border_weights: bool = False   # the paper's border weight maps as per-pixel sample weights
    w0: float = 10.0               # border weight amplitude (paper: 10)
    sigma: float = 5.0             # border weight width in px (paper: 5)
    samples_per_epoch: int = 0     # patches per epoch; 0 = as many as fit in the images
    synthetic_n: int = 64          # "synthetic" source: number of images ...
    synthetic_size: int = 128      # ... and their side length
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    architecture: str = "unet"     # unet | unet_plus_plus
    deep_supervision: bool = False  # unet_plus_plus: one head per nested level L1..L(depth-1)
    depth: int = 5                 # resolution levels (depth - 1 poolings)
    filters: int = 32              # channels at the top level, doubled per level
    batch_norm: bool = True
    dropout: float = 0.0           # SpatialDropout2D rate
    upsampling: str = "nearest"    # nearest | bilinear | transpose
    padding: str = "same"          # same | valid


@dataclass
class LossConfig:
    name: str = "bce_dice"         # bce_dice | dice | jaccard | weighted_ce
    bce_weight: float = 0.5        # bce_dice only (U-Net++ hybrid: 0.5 CE + Dice)
    dice_weight: float = 1.0


@dataclass
class OptimizerConfig:
    name: str = "adam"             # adam (Keras Adam, fused kernel: FusedAdam) | adamw | sgd
    learning_rate: float = 1e-3
    weight_decay: float = 0.0      # adamw / sgd
    momentum: float = 0.99         # sgd (the paper used 0.99)
    schedule: str = "cosine"       # constant | cosine | plateau
    min_learning_rate: float = 1e-5  # floor of cosine / plateau
    plateau_patience: int = 5      # epochs without improvement before the LR halves


@dataclass
class TrainConfig:
    epochs: int = 20
    seed: int = 0
    precision: str = "auto"        # auto | float32 | mixed_bfloat16 | mixed_float16
    strategy: str = "default"      # default | mirrored | multiworker | tpu
    monitor: str = "val_dice"      # metric for the best checkpoint / early stopping
    monitor_mode: str = "max"      # max | min
    early_stopping_patience: int = 0  # 0 = off
    steps_per_execution: int = 1
    tensorboard: bool = True
    # true: tf.config.experimental.enable_op_determinism() before training, so two runs with
    # the same seed, config, data and machine give bit-identical weights (CPU: small cost;
    # GPU: deterministic cuDNN kernels, slower, and ops without one raise an error). It stays
    # on for the rest of the Python process. See docs/reliability.md.
    deterministic: bool = False
    collapse_warning: bool = True  # warn when predictions collapse to one class (per epoch)


@dataclass
class Config:
    """A training run's settings: sections ``data``, ``model``, ``loss``, ``optimizer``, ``train``.

    ``Config.from_toml(path)`` reads a TOML file (unknown keys and bad values are errors that
    name the key), ``override(["section.key=value", ...])`` returns a changed copy (what
    ``zf-unet train --set`` does), and ``to_toml()`` writes it back. Every field and its default
    is listed in the dataclasses above.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -------------------------------------------------------------- (de)serialization
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> "Config":
        return _build(cls, d, where)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(raw, where=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return _dump_toml(self.to_dict())

    def override(self, assignments: list[str]) -> "Config":
        """Apply ``section.key=value`` strings (values parsed as TOML, bare words as strings)."""
        d = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected section.key=value")
            key, value = item.split("=", 1)
            try:
                parsed = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                parsed = value
            node = d
            parts = key.strip().split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"--set {item!r}: unknown section {p!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"--set {item!r}: unknown key {key!r}")
            node[parts[-1]] = parsed
        return Config.from_dict(d, where="--set")


_CHOICES = {
    ("AugmentConfig", "interpolation"): ("bilinear", "bicubic"),
    ("ModelConfig", "architecture"): ("unet", "unet_plus_plus"),
    ("ModelConfig", "upsampling"): ("nearest", "bilinear", "transpose"),
    ("ModelConfig", "padding"): ("same", "valid"),
    ("LossConfig", "name"): ("bce_dice", "dice", "jaccard", "weighted_ce"),
    ("OptimizerConfig", "name"): ("adam", "adamw", "sgd"),
    ("OptimizerConfig", "schedule"): ("constant", "cosine", "plateau"),
    ("TrainConfig", "precision"): ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    ("TrainConfig", "strategy"): ("default", "mirrored", "multiworker", "tpu"),
    ("TrainConfig", "monitor_mode"): ("max", "min"),
}


def _build(cls: type, d: Mapping[str, Any], where: str, section: str = "") -> Any:
    """``cls`` from the table ``d``; ``where`` (file or ``--set``) and ``section`` (e.g.
    ``data.augment``) name the place in error messages."""
    place = f"{where} [{section}]" if section else where
    if not isinstance(d, Mapping):
        raise ConfigError(f"{place}: expected a table, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{place}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            continue
        value = d[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, where,
                                  f"{section}.{name}" if section else name)
            continue
        kwargs[name] = _coerce(value, default, f"{place} {name}")
        choices = _CHOICES.get((cls.__name__, name))
        if choices and kwargs[name] not in choices:
            raise ConfigError(f"{place}: {name} = {value!r}; expected one of {list(choices)}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, what: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{what}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{what}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{what}: expected a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{what}: expected a list, got {value!r}")
        return list(value)
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _dump_toml(d: Mapping[str, Any], prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, Mapping):
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    out = ""
    if prefix:
        out += f"[{prefix}]\n"
    out += "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        out += "\n" + _dump_toml(v, f"{prefix}.{k}" if prefix else k)
    return out
