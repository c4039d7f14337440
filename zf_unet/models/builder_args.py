"""The options shared by the U-Net builders (``build_unet``, ``build_unet_plus_plus``),
checked in one place: :func:`check_builder_args` returns them as a frozen :class:`BuilderArgs`
(per-level filters, pools and kernels resolved)."""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

import keras

from zf_unet.checks import check_bool, check_choice, check_int, check_limit, check_rate
from zf_unet.models.anisotropy import Sizes, axis_divisors, default_levels, resolve_levels
from zf_unet.models.backbones import check_backbone, encoder_features
from zf_unet.models.blocks import (
    PADDING_MODES,
    UPSAMPLING_MODES,
    batch_norm_class,
    double_conv_layer,
    uniform_size,
)
from zf_unet.models.geometry import output_size, valid_input_sizes

__all__ = ["BACKBONE_DEPTH", "BuilderArgs", "check_builder_args", "level_filters",
           "spatial_ndim"]


def level_filters(filters: int | Sequence[int], depth: int) -> list[int]:
    """Channels per resolution level: ``filters * 2**i`` or an explicit list of ``depth`` ints."""
    depth = check_int("depth", depth, 1)
    if isinstance(filters, (list, tuple)):
        if len(filters) != depth:
            raise ValueError(f"filters has {len(filters)} entries but depth={depth}; give one "
                             "per level (or one integer, doubled at every level)")
        return [check_int(f"filters[{i}]", f, 1) for i, f in enumerate(filters)]
    return [check_int("filters", filters, 1) * 2**i for i in range(depth)]


_SHAPE_EXPECTED = ("(height, width, channels), e.g. (None, None, 1) with None for any size; "
                   "got {!r}. Volumes take (depth, height, width, channels), e.g. "
                   "(None, None, None, 1)")


def spatial_ndim(input_shape: Any) -> int:
    """Spatial axes of a builder's ``input_shape``: 2 for ``(H, W, C)``, 3 for
    ``(D, H, W, C)``; ``ValueError`` for anything else."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) not in (3, 4):
        raise ValueError("input_shape must be " + _SHAPE_EXPECTED.format(input_shape))
    return len(input_shape) - 1


def _check_input_shape(input_shape: Any, depth: int, padding: str,
                       pools: Sequence[Sequence[int]] | None = None) -> tuple:
    """``input_shape`` as a tuple (``None`` or ints, channels last) if a ``depth``-level U-Net
    with these per-level ``pools`` (default: 2 on every axis) can process it, else
    ``ValueError`` naming the axis, the rule and the nearest valid sizes."""
    ndim = spatial_ndim(input_shape)
    *spatial, c = input_shape
    c = check_int("input_shape channels", c, 1)
    names = ("height", "width") if ndim == 2 else ("D (depth axis)", "height", "width")
    classic = pools is None or all(tuple(p) == (2,) * ndim for p in pools)
    divisors = (2 ** (depth - 1),) * ndim if classic else axis_divisors(list(pools), ndim)
    for axis, s, div in zip(names, spatial, divisors):
        if s is None:
            continue
        try:
            s = check_int(f"input_shape {axis}", s, 1)
        except ValueError:
            raise ValueError(f"input_shape {axis} must be an integer >= 1 or None (any size), "
                             f"got {s!r}") from None
        if classic and output_size(s, depth, padding) is None:
            nearest = valid_input_sizes(depth, padding, near=s)
            rule = (
                f"a multiple of 2**(depth-1) = {2 ** (depth - 1)}"
                if padding == "same"
                else "a size whose feature maps stay even before every pooling"
            )
            raise ValueError(
                f"input_shape {axis}={s} cannot be processed by a depth-{depth} U-Net with "
                f"padding={padding!r}: it must be {rule}. Nearest valid sizes: {nearest}. "
                "Use None for a variable size."
            )
        if not classic and s % div:
            nearest = sorted({max(div, s // div * div), (s // div + 1) * div})
            raise ValueError(
                f"input_shape {axis}={s} cannot be processed with pool_sizes={list(pools)}: "
                f"it must be a multiple of the product of the pool sizes along that axis = "
                f"{div}. Nearest valid sizes: {nearest}. Use None for a variable size."
            )
    return tuple(None if s is None else int(s) for s in spatial) + (c,)


def _check_activation(value: Any) -> Any:
    if value in ("auto", None) or callable(value):
        return value
    try:
        keras.activations.get(value)
    except (ValueError, TypeError):
        raise ValueError(f"output_activation must be 'auto', None (logits) or a Keras "
                         f"activation name such as 'sigmoid' or 'softmax', got {value!r}") from None
    return value


def _check_initializer(value: Any) -> Any:
    # Making an initializer without a seed draws one from Python's `random`: put its state
    # back, or the model's initial weights would differ from those of an unchecked build.
    state = random.getstate()
    try:
        keras.initializers.get(value)
    except (ValueError, TypeError):
        raise ValueError(f"kernel_initializer must be a Keras initializer or its name, such "
                         f"as 'he_normal', got {value!r}") from None
    finally:
        random.setstate(state)
    return value


def _check_options(input_shape: Sequence[int | None], num_classes: int, depth: int,
                   filters: int | Sequence[int], upsampling: str, padding: str,
                   output_activation: str | None, dropout: float, kernel_initializer: Any,
                   name: str, pool_sizes: Any, kernel_sizes: Any, spacing: Any,
                   flags: dict[str, Any]) -> tuple[int, tuple, list[int], str | None, Sizes, Sizes]:
    """``(depth, input_shape, filters per level, output activation, pools, kernels)`` of
    checked options (see :func:`check_builder_args`)."""
    depth = check_limit("depth", depth, "model.depth")
    upsampling = check_choice("upsampling", upsampling, UPSAMPLING_MODES)
    padding = check_choice("padding", padding, PADDING_MODES)
    num_classes = check_int("num_classes", num_classes, 1)
    ndim = spatial_ndim(input_shape)
    pools, kernels = resolve_levels(pool_sizes, kernel_sizes, spacing, depth, ndim)
    if ndim == 3 and padding != "same":
        raise ValueError(f"padding={padding!r} is not supported for 3-D inputs "
                         f"(input_shape={tuple(input_shape)!r}): volumetric U-Nets support "
                         "only padding='same'")
    if padding == "valid" and (pools, kernels) != default_levels(depth, ndim):
        raise ValueError("pool_sizes / kernel_sizes other than 2 / 3 need padding='same' "
                         "(padding='valid' supports only the classic 2x2 pooling and 3x3 "
                         f"kernels), got pool_sizes={pool_sizes!r}, kernel_sizes={kernel_sizes!r}")
    shape = _check_input_shape(input_shape, depth, padding, pools)
    widths = level_filters(filters, depth)
    check_rate("dropout", dropout)
    for flag, value in flags.items():
        check_bool(flag, value)
    output_activation = _check_activation(output_activation)
    _check_initializer(kernel_initializer)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if output_activation == "auto":
        output_activation = "sigmoid" if num_classes == 1 else "softmax"
    return depth, shape, widths, output_activation, pools, kernels


#: ``depth`` of a model on a backbone: features at strides 1 (output) .. 32 (bottleneck).
BACKBONE_DEPTH = 6


def _resolve_backbone_args(backbone: Any, depth: int | None, padding: str,
                          input_normalization: Any, input_shape: Any = None,
                          pool_sizes: Any = None, kernel_sizes: Any = None) -> int:
    """Check the backbone options of a builder; returns the ``depth`` to build (5 without a
    backbone by default, always :data:`BACKBONE_DEPTH` with one). With a backbone,
    ``input_shape`` must be 2-D and ``pool_sizes`` / ``kernel_sizes`` unset."""
    if backbone is None:
        return 5 if depth is None else depth
    check_backbone(backbone)
    if isinstance(input_shape, (list, tuple)) and len(input_shape) == 4:
        raise ValueError(f"backbone={backbone!r} cannot be used with a 3-D input_shape="
                         f"{tuple(input_shape)!r}: pretrained encoders are 2-D only; use "
                         "backbone=None for volumes")
    for arg, value in (("pool_sizes", pool_sizes), ("kernel_sizes", kernel_sizes)):
        if value is not None:
            raise ValueError(f"{arg}={value!r} cannot be used with backbone={backbone!r}: the "
                             f"encoder fixes its own strides and kernels; leave {arg}=None")
    if depth not in (None, BACKBONE_DEPTH):
        raise ValueError(f"depth={depth!r} cannot be used with backbone={backbone!r}: the "
                         f"encoder fixes {BACKBONE_DEPTH} levels (strides 1 .. 32); leave "
                         "depth=None")
    if padding != "same":
        raise ValueError(f"padding={padding!r} cannot be used with backbone={backbone!r}: "
                         "pretrained encoders pad their convolutions ('same'); use "
                         "padding='same'")
    if input_normalization is not None:
        raise ValueError(f"input_normalization cannot be used with backbone={backbone!r}: the "
                         "model already scales its [0, 1] input as the backbone was trained "
                         "(BackbonePreprocessing); leave input_normalization=None")
    return BACKBONE_DEPTH


@dataclasses.dataclass(frozen=True)
class BuilderArgs:
    """The checked options of a U-Net builder (plain Python values).

    ``input_shape``: ``(H, W, C)`` / ``(D, H, W, C)`` with ``None`` or ints; ``widths``: the
    filters of each of the ``depth`` levels; ``pools`` / ``kernels``: ``depth - 1`` / ``depth``
    per-axis tuples; ``output_activation``: ``"auto"`` resolved (sigmoid for one class,
    softmax for several; ``None`` = logits). The other fields are the builder's arguments."""

    input_shape: tuple
    num_classes: int
    depth: int
    widths: tuple[int, ...]
    pools: Sizes
    kernels: Sizes
    output_activation: Any
    batch_norm: bool
    dropout: float
    upsampling: str
    padding: str
    kernel_initializer: Any
    backbone: str | None
    encoder_weights: Any
    input_normalization: Any
    sync_batch_norm: bool
    fused_batch_norm: bool
    name: str

    @property
    def volume(self) -> bool:
        """``True`` for volume models (``input_shape`` ``(D, H, W, C)``)."""
        return len(self.input_shape) == 4

    def block(self, x: Any, level: int, name: str, dropout: float | None = None,
              upsampled_skip: Any = None) -> Any:
        """The double-conv block of ``level`` (its filters and kernel) on ``x``
        ``(B, H, W, C)`` / ``(B, D, H, W, C)``; ``dropout`` defaults to the builder's."""
        return double_conv_layer(
            x, self.widths[level], dropout=self.dropout if dropout is None else dropout,
            batch_norm=self.batch_norm, padding=self.padding,
            kernel_initializer=self.kernel_initializer, name=name,
            sync_batch_norm=self.sync_batch_norm, fused_batch_norm=self.fused_batch_norm,
            kernel_size=uniform_size(self.kernels[level]), upsampled_skip=upsampled_skip)

    def backbone_features(self, image: Any) -> dict[int, Any]:
        """``{stride: feature}`` of the backbone on the model input ``image`` (strides 2 ..
        32; see :func:`zf_unet.models.backbones.encoder_features`)."""
        features, _ = encoder_features(
            self.backbone, image, self.encoder_weights, self.widths[1],
            self.kernel_initializer, batch_norm_class(self.fused_batch_norm,
                                                      self.sync_batch_norm))
        return features

    def head(self, x: Any, conv_name: str, name: str, batch_norm: bool = False) -> Any:
        """1x1 convolution to ``num_classes`` (then BatchNorm ``head_bn`` if ``batch_norm``)
        and the output activation, computed in float32."""
        conv = keras.layers.Conv3D if self.volume else keras.layers.Conv2D
        x = conv(self.num_classes, 1, kernel_initializer=self.kernel_initializer,
                 name=conv_name)(x)
        if batch_norm:
            bn_cls = batch_norm_class(self.fused_batch_norm, self.sync_batch_norm)
            x = bn_cls(axis=-1, synchronized=self.sync_batch_norm, name="head_bn")(x)
        return keras.layers.Activation(self.output_activation or "linear", dtype="float32",
                                       name=name)(x)


def check_builder_args(
    input_shape: Sequence[int | None], num_classes: int, *, depth: int | None = None,
    filters: Any = 32, batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "nearest",
    padding: str = "same", output_activation: Any = "auto", kernel_initializer: Any = "he_normal",
    backbone: Any = None, encoder_weights: Any = None, input_normalization: Any = None,
    pool_sizes: Any = None, kernel_sizes: Any = None, spacing: Any = None,
    sync_batch_norm: bool = False, fused_batch_norm: bool = True, name: str = "unet",
    builder: str = "U-Net",
    **flags: Any,
) -> BuilderArgs:
    """Check the options shared by the U-Net builders (the keywords of ``build_unet``;
    ``flags``: the builder's own True/False options by name); each bad one raises
    ``ValueError`` naming it. ``builder`` names the model in messages."""
    depth = _resolve_backbone_args(backbone, depth, padding, input_normalization, input_shape,
                                   pool_sizes, kernel_sizes)
    depth, shape, widths, activation, pools, kernels = _check_options(
        input_shape, num_classes, depth, filters, upsampling, padding, output_activation,
        dropout, kernel_initializer, name, pool_sizes, kernel_sizes, spacing,
        {"batch_norm": batch_norm, **flags, "sync_batch_norm": sync_batch_norm,
         "fused_batch_norm": fused_batch_norm})
    if backbone is None and encoder_weights is not None:
        raise ValueError(f"encoder_weights needs a backbone (backbone=None builds the "
                         f"{builder}'s own encoder, which has no pretrained weights)")
    return BuilderArgs(
        input_shape=shape, num_classes=int(num_classes), depth=depth, widths=tuple(widths),
        pools=pools, kernels=kernels, output_activation=activation, batch_norm=bool(batch_norm),
        dropout=float(dropout), upsampling=upsampling, padding=padding,
        kernel_initializer=kernel_initializer, backbone=backbone,
        encoder_weights=encoder_weights, input_normalization=input_normalization,
        sync_batch_norm=bool(sync_batch_norm), fused_batch_norm=bool(fused_batch_norm),
        name=name)
