"""Nearest 2x upsampling, concatenation and a 3x3 convolution as one transposed convolution.

A U-Net decoder block starts with ``conv3x3(concat([up2(x), skip]))``, where ``up2`` repeats
every pixel twice along each axis. Split the kernel by input channels, ``k = [k_up, k_skip]``:

    conv3x3(concat([up2(x), skip])) = conv3x3(up2(x), k_up) + conv3x3(skip, k_skip)

Along one axis, an output pixel ``2i`` of ``conv3x3(up2(x))`` reads the upsampled pixels
``2i - 1, 2i, 2i + 1``, i.e. ``x[i - 1], x[i], x[i]``, and pixel ``2i + 1`` reads ``x[i],
x[i], x[i + 1]``; the zero padding of the upsampled image is the zero padding of ``x``. So
the first term is a stride-2 transposed convolution of ``x`` itself, with the 4-tap kernel
``[k2, k1 + k2, k0 + k1, k0]`` per axis (TensorFlow's "same" padding, one tap before). It
reads 4 instead of 9 taps per output pixel along two axes (16 / 36 of the multiply-adds for
images, 64 / 216 for volumes) and the upsampled tensor and the concatenation are never
built. On the 2-core CPU of ``benchmarks/predict_speed.py`` this made the decoder's first
convolutions 1.4-1.7x faster in bfloat16.

:class:`FusedUpsampleConv` is the layer. :func:`zf_unet.build_unet` uses it for the first
convolution of every decoder block with nearest 2x upsampling and "same" padding
(``fuse_upsampling=True``, the default), so training gains too (in bfloat16, 1.14x faster
per step on ZF_UNET_224 and 1.18x on the ISBI recipe's model, ``benchmarks/RESULTS.md``); :class:`zf_unet.models.FoldedView` puts it into
inference twins in place of every remaining ``UpSampling2D/3D(2, "nearest") -> Concatenate
-> Conv`` with a 3x3(x3), stride-1, "same"-padded convolution (U-Net++, models built
unfused or by hand).
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops


def transposed_up_kernel(kernel: Any) -> Any:
    """The transposed-convolution kernel that computes ``conv(up2_nearest(x), kernel)``.

    Args:
        kernel: ``(3, 3, C_in, C_out)`` (or ``(3, 3, 3, C_in, C_out)``), a "same"-padded
            stride-1 convolution kernel, any float dtype.
    Returns:
        ``(4, 4, C_out, C_in)`` (or ``(4, 4, 4, C_out, C_in)``), the kernel of a stride-2
        "same"-padded transposed convolution of ``x``, same dtype.
    """
    rank = len(kernel.shape) - 2
    for axis in range(rank):
        k0, k1, k2 = (ops.take(kernel, [t], axis=axis) for t in range(3))
        kernel = ops.concatenate([k2, k1 + k2, k0 + k1, k0], axis=axis)
    perm = list(range(rank)) + [rank + 1, rank]
    return ops.transpose(kernel, perm)


@keras.saving.register_keras_serializable(package="zf_unet")
class FusedUpsampleConv(keras.layers.Layer):
    """``activation(conv(concat(inputs with inputs[up_index] upsampled 2x nearest)) + bias)``
    with a 3x3 (3x3x3 for volumes), stride-1, "same"-padded convolution, computed as a
    transposed convolution of the low-resolution input plus a convolution of the others.

    Call it on a list of channels-last tensors in the order of the concatenation: entry
    ``up_index`` is the input *before* upsampling, ``(B, H, W, C_up)`` (or
    ``(B, D, H, W, C_up)``), every other entry ``(B, 2H, 2W, C_i)``. Returns
    ``(B, 2H, 2W, filters)`` in the layer's compute dtype.

    Weights: ``kernel`` ``(3, 3, sum C, filters)`` (``(3, 3, 3, ...)``) and ``bias``
    ``(filters,)``, exactly those of the ``Conv2D`` / ``Conv3D`` it replaces (so weight files
    of the unfused model load into it); the transposed kernel is derived from ``kernel`` at
    every call, and gradients flow to ``kernel``. With ``cache_kernels=True`` (inference
    twins, :class:`zf_unet.models.FoldedView`) the layer holds the derived kernels instead:
    ``up_kernel`` ``(4, 4, filters, C_up)`` and ``rest_kernel`` ``(3, 3, sum of the other C,
    filters)``; :meth:`assign_conv` sets either form from a convolution's weights.
    """

    data_format = "channels_last"
    use_bias = True

    def __init__(self, filters: int, up_index: int = 0, rank: int = 2,
                 activation: Any = None, kernel_initializer: Any = "he_normal",
                 bias_initializer: Any = "zeros", cache_kernels: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if rank not in (2, 3):
            raise ValueError(f"rank must be 2 or 3, got {rank!r}")
        self.filters = int(filters)
        self.up_index = int(up_index)
        self.rank = int(rank)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.cache_kernels = bool(cache_kernels)

    def build(self, input_shape: Any) -> None:
        shapes = list(input_shape)
        if not 0 <= self.up_index < len(shapes) or len(shapes) < 2:
            raise ValueError(f"FusedUpsampleConv needs at least 2 inputs and up_index < their "
                             f"number; got {len(shapes)} inputs, up_index={self.up_index}")
        self.channels = [int(s[-1]) for s in shapes]
        c_all, c_up = sum(self.channels), self.channels[self.up_index]
        if self.cache_kernels:
            self.up_kernel = self.add_weight(
                name="up_kernel", shape=(4,) * self.rank + (self.filters, c_up),
                initializer="zeros")
            self.rest_kernel = self.add_weight(
                name="rest_kernel", shape=(3,) * self.rank + (c_all - c_up, self.filters),
                initializer="zeros")
        else:
            self.kernel = self.add_weight(
                name="kernel", shape=(3,) * self.rank + (c_all, self.filters),
                initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                    initializer=self.bias_initializer)

    def split_kernel(self, kernel: Any) -> tuple[Any, Any]:
        """``(up_kernel, rest_kernel)`` of a ``(3, 3, sum C, filters)`` convolution kernel
        whose input channels follow the concatenation (see the class docstring)."""
        start = sum(self.channels[:self.up_index])
        stop = start + self.channels[self.up_index]
        rest = ops.concatenate([kernel[..., :start, :], kernel[..., stop:, :]], axis=-2)
        return transposed_up_kernel(kernel[..., start:stop, :]), rest

    def assign_conv(self, kernel: Any, bias: Any) -> None:
        """Set the weights from those of the convolution this layer computes: ``kernel``
        ``(3, 3, sum C, filters)`` (``(3, 3, 3, ...)`` for volumes, input channels in the
        order of the concatenation) and ``bias`` ``(filters,)``, float32."""
        if self.cache_kernels:
            up_kernel, rest = self.split_kernel(ops.convert_to_tensor(kernel))
            self.up_kernel.assign(up_kernel)
            self.rest_kernel.assign(rest)
        else:
            self.kernel.assign(kernel)
        self.bias.assign(bias)

    def call(self, inputs: Any) -> Any:
        inputs = list(inputs)
        low = inputs.pop(self.up_index)
        others = inputs[0] if len(inputs) == 1 else ops.concatenate(inputs, axis=-1)
        if self.cache_kernels:
            up_kernel, rest = self.up_kernel, self.rest_kernel
        else:  # the 4-tap sums in the variable's float32, then one cast
            up_kernel, rest = self.split_kernel(ops.convert_to_tensor(self.kernel))
        dtype = self.compute_dtype
        up = ops.conv_transpose(low, ops.cast(up_kernel, dtype), strides=2, padding="same")
        y = ops.conv(others, ops.cast(rest, dtype), strides=1, padding="same")
        bias = ops.cast(self.bias, dtype)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # conv -> bias_add -> add -> activation: one oneDNN kernel

            y = tf.nn.bias_add(y, bias)
        else:
            y = y + bias
        return self.activation(y + up)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        other = list(input_shape)[1 - min(self.up_index, 1)]
        return tuple(other[:-1]) + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, up_index=self.up_index, rank=self.rank,
                      activation=keras.activations.serialize(self.activation),
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      bias_initializer=keras.initializers.serialize(self.bias_initializer),
                      cache_kernels=self.cache_kernels)
        return config
