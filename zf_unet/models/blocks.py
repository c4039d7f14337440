"""Building blocks shared by U-Net and U-Net++ (NHWC tensors throughout)."""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from zf_unet.checks import check_choice, check_int, check_rate

UPSAMPLING_MODES = ("nearest", "bilinear", "transpose")
PADDING_MODES = ("same", "valid")


def double_conv_layer(
    x: Any,
    filters: int,
    dropout: float = 0.0,
    batch_norm: bool = True,
    padding: str = "same",
    kernel_initializer: str | keras.initializers.Initializer = "he_normal",
    name: str | None = None,
    sync_batch_norm: bool = False,
    fused_batch_norm: bool = True,
) -> Any:
    """The ZF_UNET_224 block: (Conv2D 3x3 -> BatchNorm -> ReLU) x 2, then optional dropout.

    Args:
        x: symbolic tensor ``(batch, H, W, C_in)``.
        filters: output channels of both convolutions.
        dropout: rate of ``SpatialDropout2D`` after the second ReLU (0 disables it).
        batch_norm: insert ``BatchNormalization`` after each convolution. Without it the
            convolutions get a bias; with it they keep the bias too, as the classic model did.
        padding: ``"same"`` keeps H x W; ``"valid"`` (the paper) shrinks each side by 2 px.
        kernel_initializer: He-normal by default, the paper's std ``sqrt(2 / N)``.
        name: prefix for stable layer names (``{name}_conv1``, ``{name}_bn1``, ...).
        sync_batch_norm: synchronise BatchNorm statistics across replicas / workers of a
            ``tf.distribute`` strategy (``BatchNormalization(synchronized=True)``).
        fused_batch_norm: use :class:`FusedBatchNormalization` (TensorFlow's fused kernel,
            same outputs and statistics as Keras's layer, faster under mixed precision);
            ``False`` uses ``keras.layers.BatchNormalization``.

    Returns:
        ``(batch, H', W', filters)`` with ``H' = H`` (same) or ``H - 4`` (valid).
    """
    check_choice("padding", padding, PADDING_MODES)
    filters = check_int("filters", filters, 1)
    dropout = check_rate("dropout", dropout)

    def nm(suffix: str) -> str | None:
        return f"{name}_{suffix}" if name else None

    for i in (1, 2):
        x = layers.Conv2D(
            int(filters),
            3,
            padding=padding,
            kernel_initializer=kernel_initializer,
            name=nm(f"conv{i}"),
        )(x)
        if batch_norm:
            bn_cls = (FusedBatchNormalization if fused_batch_norm and not sync_batch_norm
                      else layers.BatchNormalization)
            x = bn_cls(axis=-1, synchronized=sync_batch_norm, name=nm(f"bn{i}"))(x)
        x = layers.Activation("relu", name=nm(f"relu{i}"))(x)
    if dropout > 0:
        x = layers.SpatialDropout2D(float(dropout), name=nm("dropout"))(x)
    return x


@keras.saving.register_keras_serializable(package="zf_unet")
class FusedBatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Same weights, config, outputs and moving statistics as the Keras layer; only the kernel
    differs. For 4-D ``(B, H, W, C)`` inputs normalised over the last axis it runs ``FusedBatchNormV3`` forward and ``FusedBatchNormGradV3`` backward (one pass
    each, oneDNN on CPU, cuDNN on GPU) directly on ``bfloat16`` / ``float16`` activations,
    with ``float32`` statistics, instead of Keras's cast to ``float32`` + separate moments,
    normalisation and casts back. Under ``mixed_bfloat16`` this makes ZF_UNET_224 training
    ~10 % faster on CPU (``benchmarks/RESULTS.md``). Every other case (other ranks or axes,
    masks, synchronised BN) falls back to the Keras computation.

    Input ``(B, H, W, C)`` in the layer's compute dtype; output the same shape and dtype.
    """

    def _use_fused(self, inputs: Any, mask: Any) -> bool:
        return (mask is None and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and inputs.shape[-1] is not None)

    def call(self, inputs, training=None, mask=None):
        if not self._use_fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
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
) -> Any:
    """Double H and W: nearest/bilinear ``UpSampling2D`` (channels kept) or a 2x2 stride-2
    ``Conv2DTranspose`` to ``filters`` channels (the paper's up-convolution)."""
    if check_choice("upsampling", mode, UPSAMPLING_MODES) != "transpose":
        return layers.UpSampling2D(size=2, interpolation=mode, name=name)(x)
    return layers.Conv2DTranspose(
        check_int("filters", filters, 1), 2, strides=2, kernel_initializer=kernel_initializer,
        name=name,
    )(x)


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
