"""U-Net builder (Ronneberger et al. 2015) in the ZF_UNET_224 style, and ZF_UNET_224 itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import keras
from keras import layers

from zf_unet.checks import check_bool, check_rate
from zf_unet.deprecation import keyword_only_after
from zf_unet.errors import DataError
from zf_unet.models.builder_args import check_builder_args
from zf_unet.models.blocks import crop_to_match, normalize_input, uniform_size, upsample
from zf_unet.models.loading import load_weights_file

__all__ = ["ZF_UNET_224", "build_unet"]


@keyword_only_after(("depth", "filters", "batch_norm", "dropout", "upsampling", "padding",
                     "output_activation", "head_batch_norm", "kernel_initializer", "name",
                     "sync_batch_norm", "fused_batch_norm", "input_normalization", "backbone",
                     "encoder_weights", "pool_sizes", "kernel_sizes", "spacing",
                     "fuse_upsampling"))
def build_unet(
    input_shape: Sequence[int | None] = (None, None, 1),
    num_classes: int = 1,
    *,
    depth: int | None = None,
    filters: int | Sequence[int] = 32,
    batch_norm: bool = True,
    dropout: float = 0.0,
    upsampling: str = "nearest",
    padding: str = "same",
    output_activation: str | None = "auto",
    kernel_initializer: str = "he_normal",
    backbone: str | None = None,
    encoder_weights: Any = None,
    input_normalization: Any = None,
    pool_sizes: str | int | Sequence[int | Sequence[int]] | None = None,
    kernel_sizes: str | int | Sequence[int | Sequence[int]] | None = None,
    spacing: Sequence[float] | None = None,
    sync_batch_norm: bool = False,
    fused_batch_norm: bool = True,
    name: str = "unet",
    head_batch_norm: bool = False,
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

    Every argument after ``num_classes`` is keyword-only (the options that
    :func:`build_unet_plus_plus` shares come first, in the same order); passing them by
    position still works for this release, in the old order, with a ``DeprecationWarning``.

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
        kernel_initializer: initializer for all convolutions (He-normal, as in the paper).
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
        input_normalization: ``None`` or ``(mean, std)`` per input channel (images in
            [0, 1]): a ``Normalization`` layer standardises the input inside the model.
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
        sync_batch_norm: BatchNorm statistics synchronised across the replicas of a
            ``tf.distribute`` strategy (set by ``zf_unet.train`` when there are several).
        fused_batch_norm: BatchNorm layers are ``FusedBatchNormalization`` (same computation
            as ``keras.layers.BatchNormalization``, TensorFlow's fused kernel; faster under
            mixed precision). ``False`` uses the Keras layer.
        name: model name.
        head_batch_norm: BatchNorm between the 1x1 head convolution and the activation
            (ZF_UNET_224 has it).
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
    a = check_builder_args(**locals())  # every argument, by name
    depth, pools = a.depth, a.pools
    pool_cls = layers.MaxPooling3D if a.volume else layers.MaxPooling2D

    inputs = keras.Input(shape=a.input_shape, name="image")
    skips: list = []
    if backbone is not None:
        features = a.backbone_features(inputs)
        skips = [None] + [features[2 ** level] for level in range(1, depth - 1)]
        x = features[2 ** (depth - 1)]
    else:
        x = normalize_input(inputs, input_normalization, a.input_shape[-1])
        for level in range(depth - 1):
            x = a.block(x, level, name=f"enc{level}")
            skips.append(x)
            x = pool_cls(pool_size=uniform_size(pools[level]), name=f"enc{level}_pool")(x)
        x = a.block(x, depth - 1, name="bottleneck")
    for level in reversed(range(depth - 1)):
        skip = skips[level]
        fused = (fuse_upsampling and upsampling == "nearest" and padding == "same"
                 and skip is not None and uniform_size(pools[level]) == 2
                 and uniform_size(a.kernels[level]) == 3)
        if not fused:
            x = upsample(x, upsampling, a.widths[level], kernel_initializer,
                         name=f"dec{level}_up", size=uniform_size(pools[level]))
            if padding == "valid":
                skip = crop_to_match(skip, x, name=f"dec{level}_crop")
            if skip is not None:
                x = layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skip])
        x = a.block(x, level, name=f"dec{level}", dropout=a.dropout if level > 0 else 0.0,
                    upsampled_skip=skip if fused else None)
    outputs = a.head(x, "head_conv", "head_activation", batch_norm=head_batch_norm)
    return keras.Model(inputs, outputs, name=name)


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
        (224, 224, 3),
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
