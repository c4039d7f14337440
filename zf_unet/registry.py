"""Named choices: one registry per kind, mapping the name a user writes to its factory.

Each registry is the single list of names for its kind. The same keys drive the config
schema (:mod:`zf_unet.config` checks ``loss.name``, ``optimizer.name`` ... against them), the
CLI's ``--help`` choices (:mod:`zf_unet.cli`) and the tables in ``docs/``; the factories are
what :func:`zf_unet.train` and the tiler call. A factory is named by ``"module:attribute"``
and imported on first use, so reading a config or printing ``--help`` imports nothing heavy.

========== ========================================== =======================================
registry   factory signature                          names
========== ========================================== =======================================
LOSSES     ``cls(**loss_kwargs) -> keras Loss``       bce_dice, ce_dice, dice, jaccard, ...
OPTIMIZERS ``f(learning_rate, *, weight_decay,        adam, adamw, sgd
           momentum) -> keras Optimizer``
SCHEDULES  ``f(*, learning_rate, min_learning_rate,   constant, cosine, plateau
           total_steps, monitor, mode, patience)
           -> (lr or schedule, [callbacks])``
PRECISIONS ``f(name) -> keras.DTypePolicy``           auto, float32, mixed_bfloat16, ...
STRATEGIES ``f() -> tf.distribute.Strategy``          default, mirrored, multiworker, tpu
BLEND_MODES ``f(tile, overlap) -> (tile,) float64``   gaussian, linear, none
TTA_MODES  ``f() -> [(forward, inverse), ...]``       none, flips, d4
SOURCES    ``cls(spec..., mask rules) -> Source``     folder, stacks, arrays, synthetic, tfds
BACKBONES  ``f(input_shape, weights) -> encoder``     resnet50, efficientnetv2b0, ...
========== ========================================== =======================================
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from zf_unet.errors import ConfigError

__all__ = ["BACKBONES", "BLEND_MODES", "CACHE_MODES", "INPUT_DTYPES", "LOSSES", "OPTIMIZERS", "PRECISIONS", "Registry",
           "SCHEDULES", "SOURCES", "STRATEGIES", "TILING_DEFAULTS", "TTA_MODES", "choice_message",
           "nearest_hint"]


def nearest_hint(value: Any, choices: Any) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``value``, or ``""``."""
    if not isinstance(value, str):
        return ""
    near = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def choice_message(place: str, value: Any, choices: Any) -> str:
    """``"<place> must be one of (...), got <value>"`` plus :func:`nearest_hint`."""
    return (f"{place} must be one of {tuple(choices)}, got {value!r}"
            f"{nearest_hint(value, choices)}")


class Registry(Mapping):
    """Read-only map ``name -> factory`` of one kind (``"loss"``, ``"optimizer"`` ...).

    ``entries`` maps each name to ``"module:attribute"``; the attribute is imported by
    ``registry[name]`` (or :meth:`get`) and cached. Iterating gives the names in the order
    they were listed, which is the order ``--help`` and the docs show.
    """

    def __init__(self, kind: str, entries: Mapping[str, str], doc: Mapping[str, str] | None = None
                 ) -> None:
        self.kind = kind
        self._targets = dict(entries)
        self._loaded: dict[str, Any] = {}
        #: one-line description per name (for ``--help`` and docs)
        self.doc = dict(doc or {})

    # Mapping interface -------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if name not in self._targets:
            raise KeyError(name)
        if name not in self._loaded:
            module, _, attr = self._targets[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._targets)})"

    # Lookup with errors users can act on ---------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """The registered names, in listing order."""
        return tuple(self._targets)

    def target(self, name: str) -> str:
        """Where the factory of ``name`` lives, ``"module:attribute"`` (nothing is imported)."""
        return self._targets[name]

    def check(self, name: Any, place: str | None = None, error: type[Exception] = ValueError
              ) -> str:
        """``name`` if it is registered, else ``error`` naming ``place`` (default: the kind),
        the accepted names and the nearest one."""
        if isinstance(name, str) and name in self._targets:
            return name
        raise error(choice_message(place or self.kind, name, self.names()))

    def get(self, name: Any, place: str | None = None) -> Any:
        """The factory registered as ``name`` (a :class:`ConfigError` for unknown names)."""
        return self[self.check(name, place, ConfigError)]

    def create(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        """``get(name)(*args, **kwargs)``."""
        return self.get(name)(*args, **kwargs)


LOSSES = Registry("loss", {
    "bce_dice": "zf_unet.losses:BCEDiceLoss",
    "ce_dice": "zf_unet.losses:CEDiceLoss",
    "dice": "zf_unet.losses:DiceLoss",
    "jaccard": "zf_unet.losses:JaccardLoss",
    "ce": "zf_unet.losses:Crossentropy",
    "weighted_ce": "zf_unet.losses:WeightedCrossentropy",
    "focal": "zf_unet.losses:FocalLoss",
    "tversky": "zf_unet.losses:TverskyLoss",
}, doc={
    "bce_dice": "binary cross-entropy + soft Dice (one-class models)",
    "ce_dice": "cross-entropy + soft Dice of the classes (multi-class models)",
    "dice": "soft Dice", "jaccard": "soft Jaccard (IoU)",
    "ce": "cross-entropy (class_weights, ignore_class)",
    "weighted_ce": "cross-entropy weighted by per-pixel border weight maps (the paper's)",
    "focal": "focal loss (focal_gamma)", "tversky": "Tversky loss (tversky_alpha/beta)",
})

OPTIMIZERS = Registry("optimizer", {
    "adam": "zf_unet.optimizers:adam",
    "adamw": "zf_unet.optimizers:adamw",
    "sgd": "zf_unet.optimizers:sgd",
}, doc={"adam": "Adam (fused update kernel)", "adamw": "AdamW (weight_decay, default 1e-4)",
        "sgd": "SGD with momentum (the paper's: 0.99)"})

SCHEDULES = Registry("schedule", {
    "constant": "zf_unet.optimizers:constant_schedule",
    "cosine": "zf_unet.optimizers:cosine_schedule",
    "plateau": "zf_unet.optimizers:plateau_schedule",
}, doc={"constant": "fixed learning rate", "cosine": "cosine decay to min_learning_rate",
        "plateau": "halve on a plateau of the monitored metric"})

PRECISIONS = Registry("precision", {
    "auto": "zf_unet.precision:auto_policy",
    "float32": "keras:DTypePolicy",
    "mixed_bfloat16": "keras:DTypePolicy",
    "mixed_float16": "keras:DTypePolicy",
}, doc={"auto": "mixed_bfloat16 on TPUs and bf16 CPUs, mixed_float16 on GPUs, else float32"})

STRATEGIES = Registry("strategy", {
    "default": "zf_unet.distribute:default_strategy",
    "mirrored": "zf_unet.distribute:mirrored_strategy",
    "multiworker": "zf_unet.distribute:multiworker_strategy",
    "tpu": "zf_unet.distribute:tpu_strategy",
}, doc={"default": "one device", "mirrored": "all local GPUs",
        "multiworker": "several machines (TF_CONFIG)", "tpu": "a TPU (Colab)"})

BLEND_MODES = Registry("blend", {
    "gaussian": "zf_unet.tiling.windows:gaussian_window",
    "linear": "zf_unet.tiling.windows:linear_window",
    "none": "zf_unet.tiling.windows:flat_window",
}, doc={"gaussian": "Gaussian window, sigma = tile / 8 (nnU-Net)",
        "linear": "linear ramps over the overlap", "none": "plain average"})

TTA_MODES = Registry("tta", {
    "none": "zf_unet.tiling.tta:no_transforms",
    "flips": "zf_unet.tiling.tta:flip_transforms",
    "d4": "zf_unet.tiling.tta:d4_transforms",
}, doc={"none": "one prediction", "flips": "identity, horizontal, vertical, both (4)",
        "d4": "the 8 rotations / reflections of the square"})

#: The defaults of :func:`zf_unet.predict_tiled` for the CLI's options, kept here so that
#: building the parser imports no Keras (``tests/test_backends.py`` checks they match).
TILING_DEFAULTS = {"tile_size": 256, "overlap": 64, "batch_size": 4}

#: Where decoded training samples live (``data.cache`` / ``make_datasets(cache=...)``):
#: ``auto`` (in memory when they fit ``zf_unet.data.streaming.MEMORY_BUDGET``, else
#: streaming), ``memory`` (every sample decoded once and stacked in memory: fastest),
#: ``disk`` (streaming, decoded samples cached in a file after the first epoch), ``none``
#: (streaming, every epoch decodes again).
CACHE_MODES = ("auto", "memory", "disk", "none")

#: Input dtypes of a serving export (names only: the scaling is
#: :func:`zf_unet.pixels.scale_to_unit_tf`).
INPUT_DTYPES = ("uint8", "uint16", "float32")

SOURCES = Registry("source", {
    "folder": "zf_unet.data.file_sources:FolderSource",
    "stacks": "zf_unet.data.file_sources:StackSource",
    "arrays": "zf_unet.data.memory_sources:ArraySource",
    "synthetic": "zf_unet.data.memory_sources:SyntheticSource",
    "tfds": "zf_unet.data.tfds_sources:TFDSSource",
    "shards": "zf_unet.data.shard_source:ShardSource",
}, doc={"folder": "a folder with images/ and masks/, paired by file name",
        "stacks": "(volume.tif, labels.tif): multi-page TIFF stacks, one sample per slice",
        "arrays": "(images, masks) arrays in memory",
        "synthetic": "the built-in EM-like set (data.synthetic_n, data.synthetic_size)",
        "tfds": "tfds:NAME, a TensorFlow Datasets segmentation set",
        "shards": "a folder of TFRecord shards written by zf-unet pack (zf_unet_shards.json)"})

#: Pretrained encoders (``keras.applications``, taps at strides 2 .. 32): the factory of a name
#: is its :class:`zf_unet.models.backbones.Backbone` (``backbone(input_shape, weights)`` builds
#: the encoder); ``model.backbone`` and ``build_unet(backbone=...)`` take these names.
BACKBONES = Registry("backbone", {
    "resnet50": "zf_unet.models.backbones:RESNET50",
    "resnet101": "zf_unet.models.backbones:RESNET101",
    "resnet50v2": "zf_unet.models.backbones:RESNET50V2",
    "resnet101v2": "zf_unet.models.backbones:RESNET101V2",
    "efficientnetb0": "zf_unet.models.backbones:EFFICIENTNETB0",
    "efficientnetb1": "zf_unet.models.backbones:EFFICIENTNETB1",
    "efficientnetb2": "zf_unet.models.backbones:EFFICIENTNETB2",
    "efficientnetb3": "zf_unet.models.backbones:EFFICIENTNETB3",
    "efficientnetb4": "zf_unet.models.backbones:EFFICIENTNETB4",
    "efficientnetb5": "zf_unet.models.backbones:EFFICIENTNETB5",
    "efficientnetb6": "zf_unet.models.backbones:EFFICIENTNETB6",
    "efficientnetb7": "zf_unet.models.backbones:EFFICIENTNETB7",
    "efficientnetv2b0": "zf_unet.models.backbones:EFFICIENTNETV2B0",
    "efficientnetv2b1": "zf_unet.models.backbones:EFFICIENTNETV2B1",
    "efficientnetv2b2": "zf_unet.models.backbones:EFFICIENTNETV2B2",
    "efficientnetv2b3": "zf_unet.models.backbones:EFFICIENTNETV2B3",
    "efficientnetv2s": "zf_unet.models.backbones:EFFICIENTNETV2S",
    "convnext_tiny": "zf_unet.models.backbones:CONVNEXT_TINY",
    "convnext_small": "zf_unet.models.backbones:CONVNEXT_SMALL",
    "mobilenetv2": "zf_unet.models.backbones:MOBILENETV2",
    "mobilenetv3small": "zf_unet.models.backbones:MOBILENETV3SMALL",
    "mobilenetv3large": "zf_unet.models.backbones:MOBILENETV3LARGE",
    "densenet121": "zf_unet.models.backbones:DENSENET121",
    "vgg16": "zf_unet.models.backbones:VGG16",
}, doc={
    "resnet50": "ResNet50 (v1), caffe scaling",
    "resnet101": "ResNet101 (v1), caffe scaling",
    "resnet50v2": "ResNet50V2, [-1, 1] scaling",
    "resnet101v2": "ResNet101V2, [-1, 1] scaling",
    "efficientnetb0": "EfficientNet-B0",
    "efficientnetb1": "EfficientNet-B1",
    "efficientnetb2": "EfficientNet-B2",
    "efficientnetb3": "EfficientNet-B3",
    "efficientnetb4": "EfficientNet-B4",
    "efficientnetb5": "EfficientNet-B5",
    "efficientnetb6": "EfficientNet-B6",
    "efficientnetb7": "EfficientNet-B7",
    "efficientnetv2b0": "EfficientNetV2-B0",
    "efficientnetv2b1": "EfficientNetV2-B1",
    "efficientnetv2b2": "EfficientNetV2-B2",
    "efficientnetv2b3": "EfficientNetV2-B3",
    "efficientnetv2s": "EfficientNetV2-S",
    "convnext_tiny": "ConvNeXt-Tiny (stride-2 skip from a learned stem)",
    "convnext_small": "ConvNeXt-Small (stride-2 skip from a learned stem)",
    "mobilenetv2": "MobileNetV2",
    "mobilenetv3small": "MobileNetV3-Small",
    "mobilenetv3large": "MobileNetV3-Large",
    "densenet121": "DenseNet121",
    "vgg16": "VGG16, caffe scaling",
})
