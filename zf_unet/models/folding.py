"""BatchNorm folded into the convolution before it, for inference.

In inference a BatchNorm after a convolution is an affine map per output channel, so it can
be merged into that convolution's kernel and bias::

    s = gamma / sqrt(moving_variance + epsilon)
    kernel' = kernel * s          (per output channel)
    bias'   = (bias - moving_mean) * s + beta

The network then has no BatchNorm pass left in it, and TensorFlow's graph optimiser can fuse
each convolution with its bias and ReLU into one oneDNN kernel. On the 2-core CPU of
``benchmarks/predict_speed.py`` that made the ISBI U-Net's forward pass 1.37x faster in
bfloat16 and 1.14x in float32. :func:`zf_unet.predict_tiled` and
:func:`zf_unet.export_saved_model` use it.

A pair is folded only when the convolution (``Conv1D``/``Conv2D``/``Conv3D``, channels-last,
no activation of its own) feeds nothing but that BatchNorm (over the last axis, no renorm);
every other layer is left as it is. Models that cannot be cloned (subclassed models) are not
folded.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@keras.saving.register_keras_serializable(package="zf_unet")
class FoldedBatchNorm(keras.layers.Layer):
    """Where a BatchNorm was before :func:`fold_batch_norm` merged it into the convolution
    before it: passes its input through unchanged (any shape and dtype)."""

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict:
        return super().get_config()  # name, dtype policy, trainable: nothing of its own


def _output(layer: keras.layers.Layer) -> Any:
    try:
        return layer.output  # raises for a layer called more than once
    except (AttributeError, ValueError):
        return None


def _inputs(layer: keras.layers.Layer) -> list:
    try:
        value = layer.input
    except (AttributeError, ValueError):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def foldable_pairs(model: keras.Model) -> list[tuple[str, str]]:
    """``(conv name, batch-norm name)`` of every BatchNorm in ``model``'s top-level layers
    that can be folded into the convolution before it (see the module docstring)."""
    layers = list(model.layers)
    consumers: dict[int, int] = {}
    for layer in layers:
        for t in _inputs(layer):
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    for t in model.outputs:
        consumers[id(t)] = consumers.get(id(t), 0) + 1
    producer = {id(out): layer for layer in layers if (out := _output(layer)) is not None}
    pairs = []
    for bn in layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or getattr(bn, "renorm", False):
            continue
        ins = _inputs(bn)
        if len(ins) != 1 or _output(bn) is None:
            continue
        conv = producer.get(id(ins[0]))
        if not isinstance(conv, _CONVS) or consumers.get(id(ins[0]), 0) != 1:
            continue
        rank = len(ins[0].shape)
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1
                                                          else None)
        if axis is None or axis % rank != rank - 1:
            continue
        if conv.data_format != "channels_last" or conv.activation is not keras.activations.linear:
            continue
        pairs.append((conv.name, bn.name))
    return pairs


class FoldedView:
    """An inference twin of ``model`` with its BatchNorms folded (:func:`foldable_pairs`):
    ``view.model`` shares every other layer (and so its weights) with ``model``; the folded
    convolutions hold their own weights, computed from ``model``'s by :meth:`refresh`. Call
    ``refresh()`` after ``model``'s weights changed (``predict_tiled`` does, once per call).

    ``view.model`` is ``model`` itself (and ``refresh`` does nothing) when there is nothing
    to fold or the model cannot be cloned."""

    def __init__(self, model: keras.Model):
        self.pairs: list[tuple[Any, Any, Any]] = []  # (conv, batch norm, folded conv)
        self.model = model
        found = foldable_pairs(model) if isinstance(model, keras.Model) else []
        if not found:
            return
        convs = {c for c, _ in found}
        bns = {b for _, b in found}
        new: dict[str, keras.layers.Layer] = {}

        def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
            if layer.name in convs:
                cfg = layer.get_config()
                cfg["use_bias"] = True
                new[layer.name] = layer.__class__.from_config(cfg)
                return new[layer.name]
            if layer.name in bns:
                return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
            return layer  # shared: same weights as the model's

        try:
            twin = keras.models.clone_model(model, clone_function=clone)
        except Exception:  # noqa: BLE001 - e.g. subclassed models: predict unfolded
            return
        by_name = {layer.name: layer for layer in model.layers}
        self.pairs = [(by_name[c], by_name[b], new[c]) for c, b in found]
        self.model = twin
        self.refresh()

    def refresh(self) -> None:
        """Recompute the folded kernels and biases from the model's current weights (float32
        tensor ops on the variables: about one pass over the convolution weights)."""
        for conv, bn, folded in self.pairs:
            cout = int(conv.kernel.shape[-1])
            ones, zeros = ops.ones((cout,), "float32"), ops.zeros((cout,), "float32")
            gamma = ops.convert_to_tensor(bn.gamma) if bn.scale else ones
            beta = ops.convert_to_tensor(bn.beta) if bn.center else zeros
            bias = ops.convert_to_tensor(conv.bias) if conv.use_bias else zeros
            s = gamma / ops.sqrt(ops.convert_to_tensor(bn.moving_variance) + float(bn.epsilon))
            folded.kernel.assign(ops.convert_to_tensor(conv.kernel) * s)
            folded.bias.assign((bias - ops.convert_to_tensor(bn.moving_mean)) * s + beta)


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """A new model that computes ``model(x, training=False)`` with every foldable BatchNorm
    merged into the convolution before it (see the module docstring): faster inference, the
    same outputs up to float rounding. It shares no weights with ``model`` (train ``model``,
    then fold again). Returns a copy of ``model`` when nothing can be folded."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return FoldedView(copy).model
