"""U-Net builder (Ronneberger et al. 2015) in the ZF_UNET_224 style, and ZF_UNET_224 itself."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import keras
from keras import layers

from zf_unet.checks import check_bool, check_choice, check_int, check_rate
from zf_unet.errors import DataError
from zf_unet.models.loading import load_weights_file
from zf_unet.models.anisotropy import Sizes, axis_divisors, default_levels, resolve_levels
from zf_unet.models.backbones import check_backbone, encoder_features
from zf_unet.models.blocks import (
    FusedBatchNormalization,
    PADDING_MODES,
    UPSAMPLING_MODES,
    crop_to_match,
    double_conv_layer,
    normalize_input,
    upsample,
)


def level_filters(filters: int | Sequence[int], depth: int) -> list[int]:
    """Channels per resolution level: ``filters * 2**i`` or an explicit list of ``depth`` ints."""
    depth = check_int("depth", depth, 1)
    if isinstance(filters, (list, tuple)):
        if len(filters) != depth:
            raise ValueError(f"filters has {len(filters)} entries but depth={depth}; give one "
                             "per level (or one integer, doubled at every level)")
        return [check_int(f"filters[{i}]", f, 1) for i, f in enumerate(filters)]
    return [check_int("filters", filters, 1) * 2**i for i in range(depth)]


def output_size(size: int, depth: int, padding: str = "same") -> int | None:
    """Output side length for an input side ``size``; ``None`` if the U-Net cannot process it.

    ``same``: ``size`` must be divisible by ``2**(depth-1)`` (output = input).
    ``valid``: every convolution trims 2 px and every pooled map must have an even size
    (the paper's 572 -> 388 at depth 5).
    """
    if size is None or size < 1:
        return None
    if padding == "same":
        return size if size % (2 ** (depth - 1)) == 0 else None
    s = size
    for _ in range(depth - 1):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth - 1):
        s = 2 * s - 4
    return s if s > 0 else None


def valid_input_sizes(depth: int, padding: str = "same", near: int = 256, count: int = 1) -> list[int]:
    """The ``count`` valid input sizes nearest to ``near`` below it and above it (sorted)."""
    below, above = [], []
    s = near
    while s >= 1 and len(below) < count:
        if output_size(s, depth, padding):
            below.append(s)
        s -= 1
    s = near + 1
    while len(above) < count and s < near + 4096 * 2**depth:
        if output_size(s, depth, padding):
            above.append(s)
        s += 1
    return sorted(set(below + above))


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


def check_builder_args(input_shape: Sequence[int | None], num_classes: int, depth: int,
                       filters: int | Sequence[int], upsampling: str, padding: str,
                       output_activation: str | None, dropout: float = 0.0,
                       kernel_initializer: Any = "he_normal", name: str = "unet", *,
                       pool_sizes: Any = None, kernel_sizes: Any = None, spacing: Any = None,
                       **flags: Any) -> tuple[int, tuple, list[int], str | None, Sizes, Sizes]:
    """Validate the options shared by the U-Net builders (``flags``: their True/False
    options by name); each bad one raises ``ValueError`` naming it.

    Returns ``(depth, input_shape, filters per level, output activation, pools, kernels)``
    with ``"auto"`` resolved to sigmoid (1 class) or softmax (several), and ``pools`` /
    ``kernels`` the ``depth - 1`` / ``depth`` per-level tuples of
    :func:`zf_unet.models.anisotropy.resolve_levels`.
    """
    depth = check_int("depth", depth, 2)
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


def resolve_backbone_args(backbone: Any, depth: int | None, padding: str,
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


def build_unet(
    input_shape: Sequence[int | None] = (None, None, 1),
    num_classes: int = 1,
    depth: int | None = None,
    filters: int | Sequence[int] = 32,
    batch_norm: bool = True,
    dropout: float = 0.0,
    upsampling: str = "nearest",
    padding: str = "same",
    output_activation: str | None = "auto",
    head_batch_norm: bool = False,
    kernel_initializer: str = "he_normal",
    name: str = "unet",
    sync_batch_norm: bool = False,
    fused_batch_norm: bool = True,
    input_normalization: Any = None,
    backbone: str | None = None,
    encoder_weights: Any = None,
    pool_sizes: str | int | Sequence[int | Sequence[int]] | None = None,
    kernel_sizes: str | int | Sequence[int | Sequence[int]] | None = None,
    spacing: Sequence[float] | None = None,
    fuse_upsampling: bool = True,
) -> keras.Model:
    """Build a U-Net as a functional ``keras.Model`` for images or volumes, optionally on a
    pretrained encoder.

    Images ``(B, H, W, C)`` use ``Conv2D`` / ``MaxPooling2D`` / ``UpSampling2D`` /
    ``Conv2DTranspose``; volumes ``(B, D, H, W, C)`` (``input_shape`` with 4 entries) the 3-D
    layers (``"bilinear"`` upsampling is then trilinear, :class:`LinearUpSampling3D`).
    Anisotropic volumes (e.g. EM stacks with 50 nm sections of 4.6 nm pixels) can pool and
    convolve each axis differently (``pool_sizes``, ``kernel_sizes``, ``spacing``)::

        build_unet((None, None, None, 1), num_classes=5, depth=5, filters=16,
                   pool_sizes="auto", kernel_sizes="auto", spacing=(50, 4.6, 4.6))

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None`` for any
            size, else multiples of the product of the pool sizes along their axis
            (``2**(depth-1)`` by default).
        num_classes: output channels. 1 = binary (sigmoid), >1 = one channel per class (softmax).
        depth: number of resolution levels (``depth - 1`` max-poolings). ZF_UNET_224 has 6,
            the paper 5; ``None`` = 5 (6 with a backbone, the only value allowed there).
        filters: channels at the top level, doubled at every level below; or a list of
            ``depth`` ints.
        batch_norm: BatchNorm after every 3x3 convolution.
        dropout: ``SpatialDropout2D`` rate at the end of every block except the last decoder
            block (the ZF_UNET_224 placement).
        upsampling: ``"nearest"`` | ``"bilinear"`` (UpSampling2D, channels kept, as in
            ZF_UNET_224) or ``"transpose"`` (2x2 stride-2 transposed conv to the level's
            filters, as in the paper).
        padding: ``"same"`` (output = input size) or ``"valid"`` (the paper: unpadded
            convolutions, skips center-cropped before concatenation, output smaller than input).
        output_activation: ``"auto"`` = sigmoid for one class, softmax for several; any Keras
            activation name; ``None`` = raw logits. The head always computes in float32 so that
            mixed-precision models output float32.
        head_batch_norm: BatchNorm between the 1x1 head convolution and the activation
            (ZF_UNET_224 has it).
        kernel_initializer: initializer for all convolutions (He-normal, as in the paper).
        name: model name.
        sync_batch_norm: BatchNorm statistics synchronised across the replicas of a
            ``tf.distribute`` strategy (set by ``zf_unet.train`` when there are several).
        fused_batch_norm: BatchNorm layers are ``FusedBatchNormalization`` (same computation
            as ``keras.layers.BatchNormalization``, TensorFlow's fused kernel; faster under
            mixed precision). ``False`` uses the Keras layer.
        input_normalization: ``None`` or ``(mean, std)`` per input channel (images in
            [0, 1]): a ``Normalization`` layer standardises the input inside the model.
        backbone: ``None`` (the U-Net encoder above) or a ``zf_unet.registry.BACKBONES`` name
            (e.g. ``"resnet50"``, ``"efficientnetv2b0"``): the ``keras.applications`` encoder,
            nested as the layer ``"encoder"`` after a ``BackbonePreprocessing`` layer (the
            family's scaling of [0, 1] images); the decoder levels 4 .. 0 (strides 16 .. 1)
            upsample and concatenate the encoder's features at strides 16 .. 2 (none at
            stride 1), each followed by a double conv block of ``filters * 2**level``
            channels. ``H``/``W`` must be multiples of 32; ``padding="same"`` only.
        encoder_weights: with a backbone: ``None`` (random), ``"imagenet"`` (downloaded by
            Keras, cached in ``~/.keras/models/``) or a local ``.weights.h5`` / ``.h5`` path;
            inputs with ``C != 3`` channels get the first kernel adapted
            (``zf_unet.models.backbones.adapt_channels``).
        pool_sizes: pooling between level ``i`` and ``i + 1``: ``None`` = 2 on every axis;
            ``"auto"`` = :func:`zf_unet.models.anisotropy.plan_pooling` of ``spacing``; or
            ``depth - 1`` entries, each an int (all axes) or one int per spatial axis, e.g.
            ``[(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]``. Upsampling undoes the same
            factors. Not with a backbone; other than 2 only with ``padding="same"``.
        kernel_sizes: convolution kernel of the blocks of level ``i`` (encoder and decoder):
            ``None`` = 3 everywhere (``"auto"`` when ``pool_sizes="auto"``); ``"auto"`` = from ``spacing`` (1 on an axis still more
            than twice as coarse as the finest, e.g. ``(1, 3, 3)``); or ``depth`` entries
            (ints or per-axis tuples).
        spacing: voxel size per spatial axis (``(z, y, x)`` or ``(y, x)``, any unit), needed
            by ``"auto"``; ``None`` = isotropic.
        fuse_upsampling: with ``upsampling="nearest"`` and ``padding="same"``, every decoder
            level that upsamples 2x on each axis and has 3x3(x3) kernels computes
            upsampling + concatenation + its first convolution as one
            :class:`zf_unet.models.FusedUpsampleConv` ``dec{level}_conv1`` (a transposed
            convolution of the coarser input: the same function, fewer multiply-adds; no
            ``dec{level}_up`` / ``dec{level}_concat`` layers). Its weights are the
            convolution's, so weights of the unfused model load into it. ``False`` builds
            the separate ``UpSampling`` / ``Concatenate`` / ``Conv`` layers.

    Returns:
        ``keras.Model`` mapping ``(B, H, W, C)`` float images (``(B, D, H, W, C)`` volumes)
        to ``(B, H', W', num_classes)`` (``(B, D, H, W, num_classes)``) float32
        probabilities (or logits). ``H' = H`` for ``same``; see ``output_size`` for ``valid``.

    Raises:
        ValueError: naming a bad argument, e.g. ``padding="valid"`` or a backbone with a 3-D
            ``input_shape``, ``pool_sizes="auto"`` without ``spacing``, a fixed size that is
            not a multiple of its axis's pool-size product.
    """
    depth = resolve_backbone_args(backbone, depth, padding, input_normalization, input_shape,
                                  pool_sizes, kernel_sizes)
    depth, shape, widths, output_activation, pools, kernels = check_builder_args(
        input_shape, num_classes, depth, filters, upsampling, padding, output_activation,
        dropout, kernel_initializer, name, pool_sizes=pool_sizes, kernel_sizes=kernel_sizes,
        spacing=spacing, batch_norm=batch_norm, head_batch_norm=head_batch_norm,
        sync_batch_norm=sync_batch_norm, fused_batch_norm=fused_batch_norm,
        fuse_upsampling=fuse_upsampling)
    volume = len(shape) == 4
    pool_cls = layers.MaxPooling3D if volume else layers.MaxPooling2D
    head_cls = layers.Conv3D if volume else layers.Conv2D

    inputs = keras.Input(shape=shape, name="image")
    skips: list = []
    if backbone is not None:
        bn_cls = (FusedBatchNormalization if fused_batch_norm and not sync_batch_norm
                  else layers.BatchNormalization)
        features, _ = encoder_features(backbone, inputs, encoder_weights, widths[1],
                                       kernel_initializer, bn_cls)
        skips = [None] + [features[2 ** level] for level in range(1, depth - 1)]
        x = features[2 ** (depth - 1)]
    else:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs a backbone (backbone=None builds the "
                             "U-Net's own encoder, which has no pretrained weights)")
        inputs_normalized = normalize_input(inputs, input_normalization, shape[-1])
        x = inputs_normalized
        for level in range(depth - 1):
            x = double_conv_layer(
                x, widths[level], dropout, batch_norm, padding, kernel_initializer,
                name=f"enc{level}", sync_batch_norm=sync_batch_norm,
                fused_batch_norm=fused_batch_norm, kernel_size=_uniform(kernels[level]),
            )
            skips.append(x)
            x = pool_cls(pool_size=_uniform(pools[level]), name=f"enc{level}_pool")(x)
        x = double_conv_layer(
            x, widths[-1], dropout, batch_norm, padding, kernel_initializer, name="bottleneck",
            sync_batch_norm=sync_batch_norm, fused_batch_norm=fused_batch_norm,
            kernel_size=_uniform(kernels[-1]),
        )
    for level in reversed(range(depth - 1)):
        skip = skips[level]
        fused = (fuse_upsampling and upsampling == "nearest" and padding == "same"
                 and skip is not None and _uniform(pools[level]) == 2
                 and _uniform(kernels[level]) == 3)
        if not fused:
            x = upsample(x, upsampling, widths[level], kernel_initializer,
                         name=f"dec{level}_up", size=_uniform(pools[level]))
            if padding == "valid":
                skip = crop_to_match(skip, x, name=f"dec{level}_crop")
            if skip is not None:
                x = layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skip])
        block_dropout = dropout if level > 0 else 0.0
        x = double_conv_layer(
            x, widths[level], block_dropout, batch_norm, padding, kernel_initializer,
            name=f"dec{level}", sync_batch_norm=sync_batch_norm,
            fused_batch_norm=fused_batch_norm, kernel_size=_uniform(kernels[level]),
            upsampled_skip=skip if fused else None,
        )
    x = head_cls(int(num_classes), 1, kernel_initializer=kernel_initializer, name="head_conv")(x)
    if head_batch_norm:
        bn_cls = (FusedBatchNormalization if fused_batch_norm and not sync_batch_norm
                  else layers.BatchNormalization)
        x = bn_cls(axis=-1, synchronized=sync_batch_norm, name="head_bn")(x)
    outputs = layers.Activation(
        output_activation or "linear", dtype="float32", name="head_activation"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _uniform(size: Sequence[int]) -> int | tuple[int, ...]:
    """A per-axis size as Keras layers take it: the int when all axes agree (as the 2-D
    builders always passed ``2`` and ``3``), else the tuple."""
    size = tuple(int(v) for v in size)
    return size[0] if len(set(size)) == 1 else size


def ZF_UNET_224(dropout_val: float = 0.2, batch_norm: bool = True, weights: str | None = None) -> keras.Model:
    """The classic ZF_UNET_224 (ZFTurbo, DSTL 2nd place), layer for layer.

    224x224x3 input; six levels with 32, 64, ..., 1024 filters (1024 at 7x7); nearest
    upsampling + concatenation; ``SpatialDropout2D(dropout_val)`` after every block but the
    last; 1x1 conv -> BatchNorm -> sigmoid. With ``batch_norm=True`` it has 31,466,757
    parameters (BatchNorm statistics included).

    Args:
        dropout_val: dropout rate.
        batch_norm: BatchNorm in the blocks and the head.
        weights: optional path to a ``.weights.h5`` file or a ``.keras`` model to load from.
    """
    dropout_val = check_rate("dropout_val", dropout_val)
    check_bool("batch_norm", batch_norm)
    if weights is not None and not Path(weights).is_file():
        raise DataError(f"weights file not found: {weights} (expected a .weights.h5 file or a "
                        ".keras model)")
    model = build_unet(
        input_shape=(224, 224, 3),
        num_classes=1,
        depth=6,
        filters=32,
        batch_norm=batch_norm,
        dropout=dropout_val,
        upsampling="nearest",
        padding="same",
        output_activation="sigmoid",
        head_batch_norm=batch_norm,
        name="ZF_UNET_224",
    )
    if weights is not None:
        if str(weights).endswith(".keras"):
            src = keras.saving.load_model(weights, compile=False)
            model.set_weights(src.get_weights())
        else:
            load_weights_file(model, weights)  # also the unfused layout of earlier versions
    return model
