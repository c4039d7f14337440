"""Building blocks shared by U-Net and U-Net++ (NHWC tensors throughout)."""
from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import layers, ops

from zf_unet.backend import lazy_tensorflow

from zf_unet.checks import check_choice, check_int, check_rate
from zf_unet.deprecation import keyword_only_after
from zf_unet.models.fused_upsampling import FusedUpsampleConv

tf = lazy_tensorflow("the TensorFlow kernel of FusedBatchNormalization")

UPSAMPLING_MODES = ("nearest", "bilinear", "transpose")
PADDING_MODES = ("same", "valid")


def spatial_rank(x: Any, arg: str = "x") -> int:
    """Number of spatial axes of a channels-last tensor: 2 for ``(B, H, W, C)``, 3 for
    ``(B, D, H, W, C)``; ``ValueError`` naming ``arg`` otherwise."""
    rank = len(x.shape)
    if rank not in (4, 5):
        raise ValueError(f"{arg} must be a (batch, H, W, C) image or a (batch, D, H, W, C) "
                         f"volume tensor, got shape {tuple(x.shape)}")
    return rank - 2


def _size_arg(arg: str, value: Any, ndim: int) -> int | tuple[int, ...]:
    """``value`` (an int or ``ndim`` ints >= 1) for a Keras layer: the int itself when every
    axis is equal (as the 2-D models always passed it), else the tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ValueError(f"{arg} must be an integer or {ndim} integers (one per spatial "
                             f"axis), got {value!r}")
        sizes = tuple(check_int(arg, v, 1) for v in value)
        return sizes[0] if len(set(sizes)) == 1 else sizes
    return check_int(arg, value, 1)


def uniform_size(size: Sequence[int]) -> int | tuple[int, ...]:
    """A per-axis size ``(s_0, ..., s_n)`` as Keras layers take it: the int when all axes
    agree (as the 2-D builders always passed ``2`` and ``3``), else the tuple."""
    size = tuple(int(v) for v in size)
    return size[0] if len(set(size)) == 1 else size


def batch_norm_class(fused_batch_norm: bool = True, sync_batch_norm: bool = False) -> type:
    """The BatchNorm layer class of the builders: :class:`FusedBatchNormalization` when
    ``fused_batch_norm`` and not ``sync_batch_norm``, else ``keras.layers.BatchNormalization``."""
    return (FusedBatchNormalization if fused_batch_norm and not sync_batch_norm
            else layers.BatchNormalization)


@keyword_only_after(("dropout", "batch_norm", "padding", "kernel_initializer", "name",
                     "sync_batch_norm", "fused_batch_norm", "kernel_size", "upsampled_skip"))
def double_conv_layer(
    x: Any,
    filters: int,
    *,
    dropout: float = 0.0,
    batch_norm: bool = True,
    padding: str = "same",
    kernel_initializer: str | keras.initializers.Initializer = "he_normal",
    name: str | None = None,
    sync_batch_norm: bool = False,
    fused_batch_norm: bool = True,
    kernel_size: int | Sequence[int] = 3,
    upsampled_skip: Any = None,
) -> Any:
    """The ZF_UNET_224 block: (Conv 3x3 -> BatchNorm -> ReLU) x 2, then optional dropout.

    Works on images and volumes: ``Conv2D`` / ``SpatialDropout2D`` for a 4-D input,
    ``Conv3D`` / ``SpatialDropout3D`` for a 5-D one.

    Args:
        x: symbolic tensor ``(batch, H, W, C_in)`` or ``(batch, D, H, W, C_in)``.
        filters: output channels of both convolutions.
        dropout: rate of ``SpatialDropout2D``/``3D`` after the second ReLU (0 disables it).
        batch_norm: insert ``BatchNormalization`` after each convolution. Without it the
            convolutions get a bias; with it they keep the bias too, as the classic model did.
        padding: ``"same"`` keeps the spatial size; ``"valid"`` (the paper) shrinks each side
            by ``kernel_size - 1`` px (2 for 3x3).
        kernel_initializer: He-normal by default, the paper's std ``sqrt(2 / N)``.
        name: prefix for stable layer names (``{name}_conv1``, ``{name}_bn1``, ...).
        sync_batch_norm: synchronise BatchNorm statistics across replicas / workers of a
            ``tf.distribute`` strategy (``BatchNormalization(synchronized=True)``).
        fused_batch_norm: use :class:`FusedBatchNormalization` (TensorFlow's fused kernel,
            same outputs and statistics as Keras's layer, faster under mixed precision);
            ``False`` uses ``keras.layers.BatchNormalization``.
        kernel_size: kernel of both convolutions: an int (every axis) or one int per spatial
            axis, e.g. ``(1, 3, 3)`` to leave a coarse ``z`` axis unmixed.
        upsampled_skip: a decoder block's skip tensor ``(batch, 2H, 2W, C_skip)``: ``x``
            ``(batch, H, W, C_in)`` is then upsampled 2x (nearest) and concatenated before
            it, ``[up(x), skip]``, and the first convolution is one
            :class:`zf_unet.models.FusedUpsampleConv` (the same function computed as a
            transposed convolution of ``x``; needs ``kernel_size=3`` and ``padding="same"``).

    Returns:
        ``(batch, H', W', filters)`` (or ``(batch, D', H', W', filters)``) with ``H' = H``
        (same) or ``H - 2 * (k - 1)`` (valid), in the layers' compute dtype.
    """
    check_choice("padding", padding, PADDING_MODES)
    filters = check_int("filters", filters, 1)
    dropout = check_rate("dropout", dropout)
    ndim = spatial_rank(x)
    kernel = _size_arg("kernel_size", kernel_size, ndim)
    conv_cls = layers.Conv2D if ndim == 2 else layers.Conv3D
    dropout_cls = layers.SpatialDropout2D if ndim == 2 else layers.SpatialDropout3D

    def nm(suffix: str) -> str | None:
        return f"{name}_{suffix}" if name else None

    if upsampled_skip is not None and (padding != "same" or kernel != 3):
        raise ValueError("upsampled_skip needs padding='same' and kernel_size=3, got "
                         f"padding={padding!r}, kernel_size={kernel_size!r}")
    for i in (1, 2):
        if i == 1 and upsampled_skip is not None:
            x = FusedUpsampleConv(int(filters), up_index=0, rank=ndim,
                                  kernel_initializer=kernel_initializer,
                                  name=nm("conv1"))([x, upsampled_skip])
        else:
            x = conv_cls(
                int(filters),
                kernel,
                padding=padding,
                kernel_initializer=kernel_initializer,
                name=nm(f"conv{i}"),
            )(x)
        if batch_norm:
            bn_cls = batch_norm_class(fused_batch_norm, sync_batch_norm)
            x = bn_cls(axis=-1, synchronized=sync_batch_norm, name=nm(f"bn{i}"))(x)
        x = layers.Activation("relu", name=nm(f"relu{i}"))(x)
    if dropout > 0:
        x = dropout_cls(float(dropout), name=nm("dropout"))(x)
    return x


@keras.saving.register_keras_serializable(package="zf_unet")
class FusedBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Same weights, config, outputs and moving statistics as the Keras layer; only the kernel
    differs. For 4-D ``(B, H, W, C)`` inputs normalised over the last axis it runs ``FusedBatchNormV3`` forward and ``FusedBatchNormGradV3`` backward (one pass
    each, oneDNN on CPU, cuDNN on GPU) directly on ``bfloat16`` / ``float16`` activations,
    with ``float32`` statistics, instead of Keras's cast to ``float32`` + separate moments,
    normalisation and casts back. Under ``mixed_bfloat16`` this makes ZF_UNET_224 training
    ~10 % faster on CPU (``benchmarks/RESULTS.md``). Volumes ``(B, D, H, W, C)`` take the
    same kernel on a ``(B, D * H, W, C)`` view (the statistics are over every axis but ``C``
    either way). Every other case (other ranks or axes, masks, synchronised BN, and the JAX
    and PyTorch backends) falls back to the Keras computation: the same function, weights and
    serialized form on every backend.

    Input ``(B, H, W, C)`` or ``(B, D, H, W, C)`` in the layer's compute dtype; output the
    same shape and dtype.
    """

    def _use_fused(self, inputs: Any, mask: Any) -> bool:
        rank = len(inputs.shape)
        return (keras.backend.backend() == "tensorflow"
                and mask is None and not self.synchronized
                and rank in (4, 5) and self.axis in (-1, rank - 1)
                and inputs.shape[-1] is not None)

    def call(self, inputs, training=None, mask=None):
        if not self._use_fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if len(inputs.shape) == 5:
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, tf.stack([shape[0], shape[1] * shape[2], shape[3],
                                                int(inputs.shape[-1])]))
            return tf.reshape(self._fused(flat, training), shape)
        return self._fused(inputs, training)

    def _fused(self, inputs: Any, training: Any) -> Any:
        channels = inputs.shape[-1]
        gamma = self.gamma.value if self.scale else tf.ones((channels,), "float32")
        beta = self.beta.value if self.center else tf.zeros((channels,), "float32")
        x = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                x, tf.cast(gamma, "float32"), tf.cast(beta, "float32"),
                epsilon=self.epsilon, data_format="NHWC", is_training=True)
            # The kernel returns the Bessel-corrected batch variance; Keras's moving variance
            # follows the biased one, so undo the n / (n - 1) factor.
            n = tf.cast(tf.size(x, out_type=tf.int64) // channels, "float32")
            var = var * (n - 1.0) / tf.maximum(n, 2.0)
            m = self.momentum
            self.moving_mean.assign(
                self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
            self.moving_variance.assign(
                self.moving_variance * m + tf.cast(var, self.moving_variance.dtype) * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, tf.cast(gamma, "float32"), tf.cast(beta, "float32"),
                mean=tf.cast(self.moving_mean.value, "float32"),
                variance=tf.cast(self.moving_variance.value, "float32"),
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
        return tf.cast(y, self.compute_dtype)


def upsample(
    x: Any,
    mode: str,
    filters: int,
    kernel_initializer: str | keras.initializers.Initializer = "he_normal",
    name: str | None = None,
    size: int | Sequence[int] = 2,
) -> Any:
    """Undo a max-pooling of ``size`` (2 = double H and W, or D, H and W of a volume).

    ``"nearest"`` / ``"bilinear"``: ``UpSampling2D`` (images) or ``UpSampling3D`` /
    :class:`LinearUpSampling3D` (volumes; ``"bilinear"`` is then trilinear), channels kept.
    ``"transpose"``: a ``size``-kernel, ``size``-stride ``Conv2DTranspose`` /
    ``Conv3DTranspose`` to ``filters`` channels (the paper's 2x2 up-convolution).

    Args:
        x: ``(B, H, W, C)`` or ``(B, D, H, W, C)``.
        mode: ``"nearest"``, ``"bilinear"`` or ``"transpose"``.
        filters: output channels of ``"transpose"`` (else unused).
        kernel_initializer: of the transposed convolution.
        name: layer name.
        size: factor per spatial axis (an int for all, or one per axis, e.g. ``(1, 2, 2)``).

    Returns:
        The upsampled tensor, spatial sizes multiplied by ``size``.
    """
    mode = check_choice("upsampling", mode, UPSAMPLING_MODES)
    ndim = spatial_rank(x)
    size = _size_arg("size", size, ndim)
    if mode != "transpose":
        if ndim == 2:
            return layers.UpSampling2D(size=size, interpolation=mode, name=name)(x)
        if mode == "nearest":
            return layers.UpSampling3D(size=size, name=name)(x)
        return LinearUpSampling3D(size=size, name=name)(x)
    conv_cls = layers.Conv2DTranspose if ndim == 2 else layers.Conv3DTranspose
    return conv_cls(
        check_int("filters", filters, 1), size, strides=size,
        kernel_initializer=kernel_initializer, name=name,
    )(x)


@keras.saving.register_keras_serializable(package="zf_unet")
class LinearUpSampling3D(keras.layers.Layer):
    """Trilinear upsampling of a volume ``(B, D, H, W, C)`` by an integer factor per axis
    (``keras.layers.UpSampling3D`` only repeats voxels).

    Separable: linear interpolation along ``D``, ``H`` and ``W`` in turn (half-pixel centres,
    edges clamped, as ``UpSampling2D(interpolation="bilinear")``), in ``keras.ops`` that take
    unknown sizes (the shape-generic graph of ``predict_tiled``) on every backend. Any (also unknown)
    spatial sizes; output ``(B, fD * D, fH * H, fW * W, C)`` in the layer's compute dtype.

    Args:
        size: an int (every axis) or ``(fD, fH, fW)``, each >= 1.
    """

    def __init__(self, size: int | Sequence[int] = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(size, (list, tuple)):
            if len(size) != 3:
                raise ValueError(f"size must be an integer or 3 integers (D, H, W), got {size!r}")
            self.size = tuple(check_int("size", v, 1) for v in size)
        else:
            self.size = (check_int("size", size, 1),) * 3

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        for axis, factor in zip((1, 2, 3), self.size):
            x = _linear_upsample_axis(x, axis, factor)
        return x

    def compute_output_shape(self, input_shape):
        b, d, h, w, c = input_shape
        return (b,) + tuple(None if s is None else s * f
                            for s, f in zip((d, h, w), self.size)) + (c,)

    def get_config(self) -> dict:
        return {**super().get_config(), "size": list(self.size)}


def _linear_upsample_axis(x: Any, axis: int, factor: int) -> Any:
    """Linear interpolation of ``x`` by the integer ``factor`` along ``axis`` (half-pixel
    centres, edges clamped: what bilinear ``resize`` computes along one axis). Output phase
    ``r`` of input position ``k`` sits at ``k + (r + 0.5) / factor - 0.5`` and mixes ``x[k]``
    with a neighbour; the phases are interleaved. Works for unknown (graph) sizes."""
    if factor == 1:
        return x
    shape = ops.shape(x)
    n = shape[axis]
    idx = ops.arange(n)
    prev = ops.take(x, ops.maximum(idx - 1, 0), axis=axis)
    nxt = ops.take(x, ops.minimum(idx + 1, n - 1), axis=axis)
    phases = []
    for r in range(factor):
        off = (r + 0.5) / factor - 0.5
        phases.append((-off) * prev + (1.0 + off) * x if off < 0
                      else (1.0 - off) * x + off * nxt)
    y = ops.stack(phases, axis=axis + 1)
    return ops.reshape(y, tuple(shape[:axis]) + (n * factor,) + tuple(shape[axis + 1:]))


@keras.saving.register_keras_serializable(package="zf_unet")
class CenterCropToMatch(keras.layers.Layer):
    """Center-crop ``inputs[0]`` ``(B, H, W, C)`` to the spatial size of ``inputs[1]``.

    Used for the skip connections of ``padding="valid"`` U-Nets whose input size is only
    known at run time (the static case uses ``keras.layers.Cropping2D``).
    """

    def call(self, inputs):
        skip, ref = inputs
        skip_shape = ops.shape(skip)
        ref_shape = ops.shape(ref)
        top = (skip_shape[1] - ref_shape[1]) // 2
        left = (skip_shape[2] - ref_shape[2]) // 2
        return skip[:, top : top + ref_shape[1], left : left + ref_shape[2], :]

    def compute_output_shape(self, input_shape):
        skip_shape, ref_shape = input_shape
        return (skip_shape[0], ref_shape[1], ref_shape[2], skip_shape[3])


def crop_to_match(skip: Any, ref: Any, name: str | None = None) -> Any:
    """Center-crop ``skip`` to the spatial size of ``ref`` (identity when they already match)."""
    sh, rh = skip.shape, ref.shape
    if None not in (sh[1], sh[2], rh[1], rh[2]):
        dh, dw = sh[1] - rh[1], sh[2] - rh[2]
        if dh == 0 and dw == 0:
            return skip
        if dh < 0 or dw < 0:
            raise ValueError(f"cannot crop skip of size {sh[1:3]} to {rh[1:3]}")
        return layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name=name)(
            skip
        )
    return CenterCropToMatch(name=name)([skip, ref])


def normalize_input(x: Any, normalization: Any, channels: int) -> Any:
    """Per-channel standardisation ``(x - mean) / std`` as the model's first layer (a
    ``keras.layers.Normalization`` named ``input_normalization``, stored in the ``.keras``
    file, so ``predict_tiled`` and every export apply it), or ``x`` unchanged.

    Args:
        x: the ``(B, H, W, C)`` image input.
        normalization: ``None``, or ``(mean, std)``: ``C`` floats each, for images in [0, 1]
            (e.g. ``DataInfo.mean`` / ``DataInfo.std`` of the training images).
        channels: ``C``, to check the lengths.
    """
    if normalization is None:
        return x
    try:
        mean, std = normalization
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
    except (TypeError, ValueError):
        raise ValueError(f"input_normalization must be None or (mean, std) with {channels} "
                         f"floats each, got {normalization!r}") from None
    if len(mean) != channels or len(std) != channels or min(std) < 0:
        raise ValueError(f"input_normalization must give {channels} means and {channels} "
                         f"non-negative stds (one per input channel), got {normalization!r}")
    return layers.Normalization(axis=-1, mean=mean, variance=[v * v for v in std],
                                name="input_normalization")(x)
