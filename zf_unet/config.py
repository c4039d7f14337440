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

Unknown keys are errors (a typo must not silently fall back to a default). Paths
(``data.source``, ``data.val_source``, ``model.encoder_weights``) may start with ``~`` (the
home folder). Settings that would be silently ignored or train nothing useful give a
:class:`ConfigWarning` naming the key (Python's ``warnings``; one line).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from zf_unet import registry
from zf_unet.checks import LIMITS, Range, check_spacing
from zf_unet.data import colour_masks
from zf_unet.data.augment_config import Augment
from zf_unet.errors import ConfigError, ConfigWarning

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: The ``[data.augment]`` table is :class:`zf_unet.data.Augment` itself (one dataclass: its
#: fields, defaults and checks); this name is kept for code that used the config's copy.
AugmentConfig = Augment


@dataclass
class DataConfig:
    source: str = "synthetic"      # folder (images/ + masks/), "synthetic", or "tfds:NAME"
    val_source: str = ""           # separate validation data (same kinds); "" = held out below
    # random square patches for training; 0 = whole images. Volumes: [depth, height, width]
    # (or an int: a cube), e.g. [8, 128, 128]
    patch_size: Any = 0
    batch_size: int = 4            # global batch (split across replicas)
    val_fraction: float = 0.2      # seeded random hold-out ...
    val_indices: list = field(default_factory=list)  # ... or these sample indices
    # 1 = binary (sigmoid); >1 = softmax over class ids; 0 = inferred from the masks ({0, 1}
    # or {0, 255} -> 1; ids 0..K-1 -> K; class_values -> its number of groups)
    num_classes: int = 0
    ignore_index: int = -1         # mask value (void) left out of losses and scores; -1 = none
    # gray-value codes -> classes: item i lists the mask values of class i, e.g.
    # [[0, 32, 64, 96, 128], [159], [191], [223], [255]]; [] = masks hold class ids
    class_values: list = field(default_factory=list)
    # colour-coded (RGB) masks: entry i is the colour of class i, [r, g, b] or "#rrggbb" (or a
    # list of colours that are all class i), e.g. [[0, 0, 0], [128, 64, 128], [244, 35, 232]];
    # or a table colour -> class id, {"#000000" = 0, "#804080" = 1, "#ffffff" = 255}, where a
    # colour mapped to ignore_index is void. [] = masks hold gray values / class ids.
    # zf-unet check-data lists the colours found (zf_unet.data.colour_masks)
    palette: Any = field(default_factory=list)
    border_weights: bool = False   # the paper's border weight maps as per-pixel sample weights
    w0: float = 10.0               # border weight amplitude (paper: 10)
    sigma: float = 5.0             # border weight width in px (paper: 5)
    samples_per_epoch: int = 0     # patches per epoch; 0 = as many as fit in the images
    # where decoded samples live: auto = in memory when they fit (2 GiB), else streamed from
    # disk | memory | disk (streamed, decoded samples cached in a file after epoch 1) | none
    # (streamed: files read and decoded on the fly every epoch, bounded memory)
    cache: str = "auto"
    skip_bad_files: bool = False   # streaming: skip (and count) unreadable files, not stop
    # 3-D: each sample is a volume (a folder of 2-D slices in stack order under images/ and
    # masks/ = one volume; multi-page TIFF / .npy files = one volume each) and the model is a
    # 3-D U-Net. With one volume, val_indices / val_fraction hold out z-sections (a block at
    # its start or end). Volumes are held in memory (data.cache is not used).
    volumes: bool = False
    # voxel size (z, y, x) in any unit, e.g. [50, 4.6, 4.6]: plans model.pool_sizes /
    # kernel_sizes = "auto" and makes the elastic deformation in-plane when z is coarse
    spacing: list = field(default_factory=list)
    synthetic_n: int = 64          # "synthetic" source: number of images ...
    synthetic_size: int = 128      # ... and their side length
    augment: Augment = field(default_factory=Augment)

    def mask_palette(self) -> dict | None:
        """``palette`` as the readers take it, ``{(r, g, b): class_id}``; None when empty."""
        return colour_masks.palette_mapping(self.palette) or None

    def palette_classes(self) -> int:
        """The model's ``num_classes`` that ``palette`` implies: 0 without a palette, 1 for
        two colours (binary), else the number of classes."""
        k = colour_masks.palette_classes(self.palette, self.ignore_index)
        return colour_masks.model_classes(k) if k else 0


#: Keys holding file or folder paths: a leading ``~`` is expanded (``Path.expanduser``).
PATH_KEYS = (("data", "source"), ("data", "val_source"), ("model", "encoder_weights"))


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
    # per-channel standardisation inside the model (mean/std of the training images, stored in
    # a Normalization layer, so prediction and exports need no extra step): auto = for images
    # with 3 or more channels | mean_std | none
    input_normalization: str = "auto"
    # pretrained encoder (keras.applications, docs/choices.md "backbone"): "" = the U-Net's own
    # encoder | resnet50 | efficientnetv2b0 | convnext_tiny | ... With a backbone the model has
    # 6 levels (strides 1 .. 32; model.depth is not used), padding must be "same" and the
    # input is scaled as the backbone expects (input_normalization is not used).
    backbone: str = ""
    # encoder weights: "" = random | "imagenet" (downloaded by Keras into ~/.keras/models/) |
    # the path of a .weights.h5 / .h5 file of the keras.applications model (include_top=False)
    encoder_weights: str = ""
    # epochs with the encoder frozen (BatchNorm in inference mode) before it is unfrozen and
    # training continues with the learning rate divided by 10; 0 = train everything throughout
    encoder_freeze_epochs: int = 0
    # pooling between levels: "" = 2 on every axis | "auto" = from data.spacing (nnU-Net's
    # rule: pool an axis only while its spacing is <= 2x the finest) | per-level sizes, e.g.
    # [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]] (depth - 1 entries)
    pool_sizes: Any = ""
    # convolution kernels per level: "" = 3 everywhere ("auto" when pool_sizes = "auto") |
    # "auto" (1 on an axis still coarser than 2x the finest) | depth entries, e.g. [1, 3, 3]
    kernel_sizes: Any = ""


@dataclass
class LossConfig:
    # auto = bce_dice (1 class) or ce_dice (several) | bce_dice | ce_dice | dice | jaccard |
    # ce (= weighted_ce: per-pixel cross-entropy, border weights) | focal | tversky
    name: str = "auto"
    bce_weight: float = 0.5        # weight of the cross-entropy term in bce_dice / ce_dice
    dice_weight: float = 1.0       # weight of the Dice term in bce_dice / ce_dice
    # class weights of the cross-entropy: "none", "auto" (median-frequency balancing of the
    # training masks, saved in the run folder) or a list with one weight per class
    class_weights: Any = "none"
    include_background: bool = True  # Dice / Tversky terms for class 0 too
    focal_gamma: float = 2.0       # focal loss exponent (0 = cross-entropy)
    tversky_alpha: float = 0.3     # Tversky: weight of false positives ...
    tversky_beta: float = 0.7      # ... and of false negatives (0.5 / 0.5 = Dice)


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
    # metric for the best checkpoint / early stopping; auto = val_dice (1 class) or val_miou
    monitor: str = "auto"
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
    max_minutes: float = 0.0       # stop after the epoch that passes this training time; 0 = off


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
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                              f"offset {exc.start}); expected a TOML file saved as UTF-8") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(raw, where=str(path))

    def validate(self, where: str = "config") -> "Config":
        """Check every value (types, choices, ranges, ``train.monitor``) and the rules between
        fields; raises a :class:`ConfigError` naming the key, and warns
        (:class:`ConfigWarning`) about settings that would be ignored. Expands a leading
        ``~`` in the path keys (:data:`PATH_KEYS`). Returns ``self``. TOML files and
        ``override`` are checked on reading; call this after changing fields in Python."""
        for section, key in PATH_KEYS:
            node = getattr(self, section)
            value = getattr(node, key)
            if isinstance(value, str) and value.startswith("~"):
                setattr(node, key, os.path.expanduser(value))
        _validate(self, where)
        return self

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


#: Fields with a fixed set of names. Names with a factory come from :mod:`zf_unet.registry`
#: (the same keys drive ``--help`` and the docs); ``auto`` is resolved from the data.
_CHOICES = {
    ("DataConfig", "cache"): registry.CACHE_MODES,
    ("ModelConfig", "architecture"): ("unet", "unet_plus_plus"),
    ("ModelConfig", "upsampling"): ("nearest", "bilinear", "transpose"),
    ("ModelConfig", "padding"): ("same", "valid"),
    ("ModelConfig", "input_normalization"): ("auto", "none", "mean_std"),
    ("ModelConfig", "backbone"): ("", *registry.BACKBONES),
    ("LossConfig", "name"): ("auto", *registry.LOSSES),
    ("OptimizerConfig", "name"): registry.OPTIMIZERS.names(),
    ("OptimizerConfig", "schedule"): registry.SCHEDULES.names(),
    ("TrainConfig", "precision"): registry.PRECISIONS.names(),
    ("TrainConfig", "strategy"): registry.STRATEGIES.names(),
    ("TrainConfig", "monitor_mode"): ("max", "min"),
}


#: The config section of each schema dataclass: a field's range is
#: ``zf_unet.checks.LIMITS["<section>.<field>"]`` (one home for the limits, shared with the
#: model builders). The augmentation's numbers are checked by ``zf_unet.data.Augment`` itself,
#: against the same table.
_SECTIONS = {"DataConfig": "data", "ModelConfig": "model", "LossConfig": "loss",
             "OptimizerConfig": "optimizer", "TrainConfig": "train"}

#: List fields and the type of their items.
_LIST_ITEMS = {("DataConfig", "val_indices"): int}

#: Metrics ``zf_unet.train`` logs (``val_`` + the same with validation data); the monitor
#: must be one of them. Binary models also log ``dice_mean`` (both classes); models with
#: several classes ``miou`` (mean IoU) and ``iou_<c>`` per class.
LOGGED_METRICS = ("loss", "dice", "iou")


def monitor_names(cfg: "Config", num_classes: int | None = None) -> list[str]:
    """Every value ``train.monitor`` may name for ``cfg`` (with ``num_classes`` classes,
    default ``cfg.data.num_classes``; 0 = not known yet: the names of both kinds): the logged
    loss and metrics, with and without ``val_``; for U-Net++ with deep supervision also per
    head (``L4_dice``). ``"auto"`` is not listed (see :func:`resolve_monitor`)."""
    k = cfg.data.num_classes if num_classes is None else num_classes
    base = list(LOGGED_METRICS)
    if k in (0, 1):
        base.append("dice_mean")
    if k != 1:
        base += ["miou"] + [f"iou_{c}" for c in range(k if k > 1 else 255)]
    names = list(base)
    if cfg.model.architecture == "unet_plus_plus" and cfg.model.deep_supervision:
        names += [f"L{level}_{m}" for level in range(1, model_levels(cfg.model)) for m in base]
    return names + [f"val_{n}" for n in names]


def model_levels(model: ModelConfig) -> int:
    """Resolution levels of the model ``model`` describes: ``depth``, or 6 on a backbone."""
    return 6 if model.backbone else model.depth


def resolve_monitor(monitor: str, num_classes: int) -> str:
    """``"auto"`` -> ``val_dice`` (binary) or ``val_miou`` (several classes); else as given."""
    if monitor != "auto":
        return monitor
    return "val_dice" if num_classes == 1 else "val_miou"


def _check_class_weights(value: Any, place: str) -> Any:
    if value in ("none", "auto"):
        return value
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0 for v in value) and any(v > 0 for v in value):
        return [float(v) for v in value]
    raise ConfigError(f"{place}: class_weights = {value!r}; expected \"none\", \"auto\" or a "
                      "list of non-negative numbers, one per class")


def _check_class_values(value: Any, place: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{place}: class_values = {value!r}; expected a list with one entry "
                          "per class, each a mask value or a list of mask values")
    groups, seen = [], {}
    for i, item in enumerate(value):
        values = list(item) if isinstance(item, (list, tuple)) else [item]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535
                             for v in values):
            raise ConfigError(f"{place}: class_values[{i}] = {item!r}; expected a mask value "
                              "(an integer 0..65535) or a non-empty list of them")
        for v in values:
            if v in seen:
                raise ConfigError(f"{place}: class_values lists the mask value {v} for class "
                                  f"{seen[v]} and class {i}; expected each value once")
            seen[v] = i
        groups.append(values)
    if len(groups) == 1:
        raise ConfigError(f"{place}: class_values = {value!r} holds one class; expected at least "
                          "two")
    return groups


def _check_palette(value: Any, place: str) -> Any:
    return colour_masks.check_palette(value, f"{place}: palette")


def _check_patch_size(value: Any, place: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return check_range(place, "patch_size", value, Range(0))
    if isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return value
    raise ConfigError(f"{place}: patch_size = {value!r}; expected an integer >= 0 (0 = whole "
                      "images) or, for volumes, [depth, height, width] of positive integers")


def _check_spacing(value: Any, place: str) -> Any:
    if value == []:
        return value
    if not isinstance(value, list):
        raise ConfigError(f"{place}: spacing = {value!r}; expected [] or the voxel size [z, y, x] "
                          "as 3 positive numbers, e.g. [50, 4.6, 4.6]")
    check_spacing(value, f"{place}: spacing", ndim=3)
    return value


def _level_sizes_checker(key: str) -> Any:
    def check(value: Any, place: str) -> Any:
        if value in ("", "auto"):
            return value
        ok = isinstance(value, list) and value and all(
            (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            or (isinstance(v, list) and v and all(isinstance(n, int) and not isinstance(n, bool)
                                                  and n >= 1 for n in v)) for v in value)
        if not ok:
            raise ConfigError(f"{place}: {key} = {value!r}; expected \"\" (default), \"auto\" "
                              "or one entry per level, each a positive integer or a list of "
                              "them per axis, e.g. [[1, 2, 2], [2, 2, 2]]")
        return value
    return check


#: Fields with their own checks (not one type).
_CUSTOM = {("LossConfig", "class_weights"): _check_class_weights,
           ("DataConfig", "class_values"): _check_class_values,
           ("DataConfig", "palette"): _check_palette,
           ("DataConfig", "patch_size"): _check_patch_size,
           ("DataConfig", "spacing"): _check_spacing,
           ("ModelConfig", "pool_sizes"): _level_sizes_checker("pool_sizes"),
           ("ModelConfig", "kernel_sizes"): _level_sizes_checker("kernel_sizes")}


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
        custom = _CUSTOM.get((cls.__name__, name))
        if custom is not None:
            kwargs[name] = custom(value, place)
            continue
        kwargs[name] = _check_field(cls.__name__, name, _coerce(value, default, f"{place} {name}"),
                                    place)
    try:
        out = cls(**kwargs)
    except ValueError as exc:  # a dataclass with its own checks (Augment)
        raise ConfigError(f"{place}: {str(exc).removeprefix(cls.__name__ + ': ')}") from None
    if cls is Config:
        out.validate(where)
    return out


def _check_field(cls_name: str, name: str, value: Any, place: str) -> Any:
    """``value`` of the schema field ``cls_name.name`` checked against its choices, range and
    item type; returns it or raises a :class:`ConfigError` naming ``place`` and ``name``."""
    choices = _CHOICES.get((cls_name, name))
    if choices and value not in choices:
        raise ConfigError(f"{place}: {name} = {value!r}; expected one of {list(choices)}"
                          f"{registry.nearest_hint(value, choices)}")
    allowed = LIMITS.get(f"{_SECTIONS.get(cls_name)}.{name}")
    if allowed is not None:
        check_range(place, name, value, allowed)
    item = _LIST_ITEMS.get((cls_name, name))
    if item is not None:
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, item)]
        if bad:
            raise ConfigError(f"{place}: {name} = {value!r}: {bad[0]!r} is not "
                              f"{'an integer' if item is int else item.__name__}; expected a "
                              f"list of {'integers' if item is int else item.__name__}")
    return value


def check_range(place: str, name: str, value: Any, allowed: Range, integer: bool | None = None
                ) -> Any:
    """Return ``value`` if it is a finite number in ``allowed`` (an integer if ``integer``, or
    when ``integer`` is None and ``value`` is an int); else raise a :class:`ConfigError`
    ``"<place>: <name> = <value>; expected <range>"``."""
    integer = isinstance(value, int) if integer is None else integer
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        not integer or isinstance(value, int))
    if not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{place}: {name} = {value!r}; expected "
                          f"{'an integer' if integer else 'a finite number'}")
    if value not in allowed:
        raise ConfigError(f"{place}: {name} = {value!r}; expected {allowed.describe(integer)}")
    return value


def _validate(cfg: "Config", where: str) -> None:
    """Every field of ``cfg`` (types, choices, ranges) and the rules between fields."""
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        stack = [(section.name, obj)]
        while stack:
            label, node = stack.pop()
            place = f"{where} [{label}]"
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                           else f.default)
                if dataclasses.is_dataclass(value):
                    stack.append((f"{label}.{f.name}", value))
                    continue
                custom = _CUSTOM.get((type(node).__name__, f.name))
                if custom is not None:
                    custom(value, place)
                    continue
                _check_field(type(node).__name__, f.name,
                             _coerce(value, default, f"{place} {f.name}"), place)
    o = cfg.optimizer
    if o.min_learning_rate > o.learning_rate:
        raise ConfigError(f"{where} [optimizer]: min_learning_rate = {o.min_learning_rate!r} is "
                          f"above learning_rate = {o.learning_rate!r}; expected a floor <= "
                          "learning_rate")
    m = cfg.model
    if not m.backbone and (m.encoder_weights or m.encoder_freeze_epochs):
        key = "encoder_weights" if m.encoder_weights else "encoder_freeze_epochs"
        raise ConfigError(f"{where} [model]: {key} = {getattr(m, key)!r} needs a backbone; "
                          "set model.backbone (e.g. \"resnet50\") or remove it")
    if m.backbone and m.padding != "same":
        raise ConfigError(f"{where} [model]: padding = {m.padding!r} cannot be used with "
                          f"backbone = {m.backbone!r}; expected \"same\"")
    d, k = cfg.data, cfg.data.num_classes
    if d.palette:
        k = colour_masks.check_palette_rules(d, f"{where} [data]")
    if isinstance(d.patch_size, list) and not d.volumes:
        raise ConfigError(f"{where} [data]: patch_size = {d.patch_size!r} is a 3-D patch, but "
                          "data.volumes = false; expected an integer for 2-D images (or set "
                          "data.volumes = true)")
    if d.volumes:
        for key, bad in (("backbone", m.backbone), ("padding", m.padding != "same")):
            if bad:
                value = getattr(m, key)
                raise ConfigError(f"{where} [model]: {key} = {value!r} cannot be used with "
                                  "data.volumes = true (3-D models use their own encoder and "
                                  "padding = \"same\")")
        if "auto" in (m.pool_sizes, m.kernel_sizes) and not d.spacing:
            raise ConfigError(f"{where} [model]: pool_sizes / kernel_sizes = \"auto\" needs "
                              "data.spacing, the voxel size [z, y, x] (e.g. [50, 4.6, 4.6])")
    elif "auto" in (m.pool_sizes, m.kernel_sizes):
        raise ConfigError(f"{where} [model]: pool_sizes / kernel_sizes = \"auto\" plans "
                          "volumes from data.spacing; expected data.volumes = true (2-D models "
                          "take \"\" or per-level sizes)")
    elif d.spacing:
        _warn(where, f"data.spacing = {d.spacing!r} is ignored: it applies to volume models "
              "only (data.volumes = true); remove it for 2-D images")
    if m.backbone and not m.encoder_weights and m.encoder_freeze_epochs >= cfg.train.epochs:
        _warn(where, f"model.encoder_freeze_epochs = {m.encoder_freeze_epochs} >= train.epochs "
              f"= {cfg.train.epochs} with a random encoder (model.encoder_weights = \"\"): the "
              "encoder keeps its random weights and only the decoder trains; set "
              "model.encoder_weights (e.g. \"imagenet\") or fewer frozen epochs")
    if d.class_values:
        groups = len(d.class_values)
        if k not in (0, groups) and not (k == 1 and groups == 2):
            raise ConfigError(f"{where} [data]: class_values has {groups} groups but num_classes "
                              f"= {k}; expected one group per class (two for a binary model)")
        k = k or (1 if groups == 2 else groups)
    if d.ignore_index >= 0 and k and d.ignore_index < max(k, 2):
        raise ConfigError(f"{where} [data]: ignore_index = {d.ignore_index} is a class id of "
                          f"the {max(k, 2)} classes; expected a value outside 0..{max(k, 2) - 1} "
                          "(e.g. 255) or -1 for none")
    if d.border_weights and k > 1:
        raise ConfigError(f"{where} [data]: border_weights = true needs binary masks "
                          f"(num_classes = 1), got num_classes = {k}")
    w = cfg.loss.class_weights
    if isinstance(w, list) and k and len(w) != max(k, 2):
        raise ConfigError(f"{where} [loss]: class_weights has {len(w)} weights; expected "
                          f"{max(k, 2)}, one per class")
    names = monitor_names(cfg, k)
    if cfg.train.monitor != "auto" and cfg.train.monitor not in names:
        hint = registry.nearest_hint(cfg.train.monitor, names)
        shown = [n for n in names if not n.startswith(("iou_", "val_iou_"))]
        raise ConfigError(f"{where} [train]: monitor = {cfg.train.monitor!r} is not a logged "
                          f"metric{hint}; expected \"auto\" or one of {shown}"
                          f"{' (or [val_]iou_<class>)' if len(shown) < len(names) else ''}")


#: Warnings already shown (text, category, line): each once per process, as ``warnings`` does.
_WARNED: dict = {}


def _warn(where: str, message: str) -> None:
    """One line on stderr (through ``warnings``): ``<where>: ConfigWarning: <message>``."""
    warnings.warn_explicit(message, ConfigWarning, where, 0, module="zf_unet.config",
                           registry=_WARNED)


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
        if not isinstance(value, (list, tuple)):
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


def _toml_key(key: str) -> str:
    """A bare TOML key, or a quoted one (``"#804080"`` of a ``data.palette`` table)."""
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() \
        else _toml_value(key)


def _dump_toml(d: Mapping[str, Any], prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, Mapping):
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    out = ""
    if prefix:
        out += f"[{prefix}]\n"
    out += "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        out += "\n" + _dump_toml(v, f"{prefix}.{k}" if prefix else k)
    return out
