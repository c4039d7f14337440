"""Inference twins of a model: BatchNorm folded into the convolution before it, and nearest
upsampling + concatenation + convolution computed as one transposed convolution.

In inference a BatchNorm after a convolution is an affine map per output channel, so it can
be merged into that convolution's kernel and bias::

    s = gamma / sqrt(moving_variance + epsilon)
    kernel' = kernel * s          (per output channel)
    bias'   = (bias - moving_mean) * s + beta

The network then has no BatchNorm pass left in it, and TensorFlow's graph optimiser can fuse
each convolution with its bias and ReLU into one oneDNN kernel. On the 2-core CPU of
``benchmarks/predict_speed.py`` that made the ISBI U-Net's forward pass 1.37x faster in
bfloat16 and 1.14x in float32.

A pair is folded only when the convolution (``Conv1D``/``Conv2D``/``Conv3D``, channels-last,
no activation of its own) feeds nothing but that BatchNorm (over the last axis, no renorm).

Every decoder block that starts with ``UpSampling2D/3D(2, "nearest") -> Concatenate ->
Conv`` (3x3 or 3x3x3, stride 1, "same" padding, each layer feeding only the next) becomes one
:class:`zf_unet.models.fused_upsampling.FusedUpsampleConv` (see that module for the
arithmetic; :func:`fusable_upsamplings` lists them). Every other layer is left as it is and
shared with the model. :func:`zf_unet.predict_tiled` and :func:`zf_unet.export_saved_model`
use these twins. Models that cannot be cloned (subclassed models) are left unchanged.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

from zf_unet.models.fused_upsampling import FusedUpsampleConv

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


class _Graph:
    """Who produces and who consumes each tensor among ``model``'s top-level layers (layers
    called more than once are left out: their input / output is ambiguous)."""

    def __init__(self, model: keras.Model):
        self.layers = list(model.layers)
        self.consumers: dict[int, int] = {}
        for layer in self.layers:
            for t in _inputs(layer):
                self.consumers[id(t)] = self.consumers.get(id(t), 0) + 1
        for t in model.outputs:
            self.consumers[id(t)] = self.consumers.get(id(t), 0) + 1
        self.producer = {id(out): layer for layer in self.layers
                         if (out := _output(layer)) is not None}

    def only_input_from(self, layer: keras.layers.Layer, kinds: tuple) -> Any:
        """The layer of type ``kinds`` that produces ``layer``'s single input, when nothing
        else consumes that tensor; else None."""
        ins = _inputs(layer)
        if len(ins) != 1 or _output(layer) is None:
            return None
        src = self.producer.get(id(ins[0]))
        if not isinstance(src, kinds) or self.consumers.get(id(ins[0]), 0) != 1:
            return None
        return src


def foldable_pairs(model: keras.Model) -> list[tuple[str, str]]:
    """``(conv name, batch-norm name)`` of every BatchNorm in ``model``'s top-level layers
    that can be folded into the convolution before it (see the module docstring)."""
    graph = _Graph(model)
    pairs = []
    for bn in graph.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or getattr(bn, "renorm", False):
            continue
        conv = graph.only_input_from(bn, _CONVS + (FusedUpsampleConv,))
        if conv is None:
            continue
        rank = len(_inputs(bn)[0].shape)
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1
                                                          else None)
        if axis is None or axis % rank != rank - 1:
            continue
        if conv.data_format != "channels_last" or conv.activation is not keras.activations.linear:
            continue
        pairs.append((conv.name, bn.name))
    return pairs


def _nearest_2x(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.UpSampling2D):
        return (tuple(layer.size) == (2, 2) and layer.interpolation == "nearest"
                and layer.data_format == "channels_last")
    if isinstance(layer, keras.layers.UpSampling3D):
        return tuple(layer.size) == (2, 2, 2) and layer.data_format == "channels_last"
    return False


def fusable_upsamplings(model: keras.Model) -> list[tuple[str, str, str, int]]:
    """``(upsampling, concatenate, conv, up_index)`` names of every
    ``UpSampling2D/3D(2, "nearest") -> Concatenate(channels) -> Conv`` chain in ``model``'s
    top-level layers that :class:`FoldedView` computes as one
    :class:`~zf_unet.models.fused_upsampling.FusedUpsampleConv`: the convolution is 3x3
    (3x3x3), stride 1, dilation 1, "same"-padded, ungrouped and channels-last; each layer
    feeds only the next; exactly one concatenated input is upsampled (``up_index``)."""
    graph = _Graph(model)
    found = []
    for conv in graph.layers:
        if not isinstance(conv, (keras.layers.Conv2D, keras.layers.Conv3D)) or isinstance(
                conv, (keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)):
            continue
        rank = len(conv.kernel_size)
        if (tuple(conv.kernel_size) != (3,) * rank or tuple(conv.strides) != (1,) * rank
                or tuple(conv.dilation_rate) != (1,) * rank or conv.padding != "same"
                or conv.groups != 1 or conv.data_format != "channels_last"):
            continue
        concat = graph.only_input_from(conv, (keras.layers.Concatenate,))
        if concat is None or concat.axis not in (-1, rank + 1):
            continue
        parts = _inputs(concat)
        ups = [i for i, t in enumerate(parts)
               if _nearest_2x(up := graph.producer.get(id(t)))
               and graph.consumers.get(id(t), 0) == 1 and len(_inputs(up)) == 1]
        if len(ups) != 1 or len(parts) < 2:
            continue
        up = graph.producer[id(parts[ups[0]])]
        found.append((up.name, concat.name, conv.name, ups[0]))
    return found


def _folded_weights(conv: keras.layers.Layer, bn: Any) -> tuple[Any, Any]:
    """``conv``'s kernel and bias with ``bn`` (a BatchNorm or None) folded in: float32."""
    cout = int(conv.kernel.shape[-1])
    ones, zeros = ops.ones((cout,), "float32"), ops.zeros((cout,), "float32")
    kernel = ops.convert_to_tensor(conv.kernel)
    bias = ops.convert_to_tensor(conv.bias) if conv.use_bias else zeros
    if bn is None:
        return kernel, bias
    gamma = ops.convert_to_tensor(bn.gamma) if bn.scale else ones
    beta = ops.convert_to_tensor(bn.beta) if bn.center else zeros
    s = gamma / ops.sqrt(ops.convert_to_tensor(bn.moving_variance) + float(bn.epsilon))
    return kernel * s, (bias - ops.convert_to_tensor(bn.moving_mean)) * s + beta


class FoldedView:
    """An inference twin of ``model``: BatchNorms folded (:func:`foldable_pairs`) and, with
    ``fuse_upsampling``, nearest upsampling + concatenation + convolution fused
    (:func:`fusable_upsamplings`). ``view.model`` shares every other layer (and so its
    weights) with ``model``; the folded and fused convolutions hold their own weights,
    computed from ``model``'s by :meth:`refresh`. Call ``refresh()`` after ``model``'s
    weights changed (``predict_tiled`` does, once per call).

    ``view.model`` is ``model`` itself (and ``refresh`` does nothing) when there is nothing
    to change or the model cannot be cloned."""

    def __init__(self, model: keras.Model, fuse_upsampling: bool = True):
        self.pairs: list[tuple[Any, Any, Any]] = []  # (conv, batch norm, folded conv)
        self.fused: list[tuple[Any, Any, Any]] = []  # (conv, batch norm or None, fused)
        self.model = model
        is_model = isinstance(model, keras.Model)
        found = foldable_pairs(model) if is_model else []
        chains = fusable_upsamplings(model) if is_model and fuse_upsampling else []
        own = {layer.name for layer in (model.layers if is_model else [])
               if isinstance(layer, FusedUpsampleConv) and not layer.cache_kernels}
        if not found and not chains and not own:
            return
        bn_of = dict(found)
        ups = {u for u, _, _, _ in chains}
        concats = {c for _, c, _, _ in chains}
        fuse = {k: i for _, _, k, i in chains}
        bns = set(bn_of.values())
        new: dict[str, keras.layers.Layer] = {}

        def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
            if layer.name in fuse:
                new[layer.name] = FusedUpsampleConv(
                    layer.filters, up_index=fuse[layer.name], rank=len(layer.kernel_size),
                    activation=keras.activations.serialize(layer.activation),
                    cache_kernels=True, name=layer.name, dtype=layer.dtype_policy)
                return new[layer.name]
            if layer.name in own:
                new[layer.name] = FusedUpsampleConv.from_config(
                    {**layer.get_config(), "cache_kernels": True})
                return new[layer.name]
            if layer.name in bn_of:
                cfg = layer.get_config()
                cfg["use_bias"] = True
                new[layer.name] = layer.__class__.from_config(cfg)
                return new[layer.name]
            if layer.name in bns:
                return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
            if layer.name in ups or layer.name in concats:  # fresh: keep the model's graph
                return layer.__class__.from_config(layer.get_config())
            return layer  # shared: same weights as the model's

        low: dict[int, Any] = {}  # upsampled tensor -> its input
        parts: dict[int, list] = {}  # concatenated tensor -> its inputs

        def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
            if layer.name in fuse:
                inputs = list(parts[id(args[0])])
                inputs[fuse[layer.name]] = low[id(inputs[fuse[layer.name]])]
                return layer(inputs)
            out = layer(*args, **kwargs)
            if layer.name in ups:
                low[id(out)] = args[0]
            elif layer.name in concats:
                parts[id(out)] = list(args[0])
            return out

        try:
            twin = keras.models.clone_model(model, clone_function=clone, call_function=call)
        except Exception:  # noqa: BLE001 - e.g. subclassed models: predict unchanged
            return
        by_name = {layer.name: layer for layer in model.layers}
        self.pairs = [(by_name[c], by_name[b], new[c]) for c, b in found
                      if c not in fuse and c not in own]
        self.fused = [(by_name[k], by_name[bn_of[k]] if k in bn_of else None, new[k])
                      for k in [*fuse, *own]]
        self.model = twin
        self.refresh()

    def refresh(self) -> None:
        """Recompute the folded / fused kernels and biases from the model's current weights
        (float32 tensor ops on the variables: about one pass over the convolution weights)."""
        for conv, bn, target in self.pairs + self.fused:
            kernel, bias = _folded_weights(conv, bn)
            if isinstance(target, FusedUpsampleConv):
                target.assign_conv(kernel, bias)
            else:
                target.kernel.assign(kernel)
                target.bias.assign(bias)


def unfused_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same weights, nothing shared) in which every trainable
    :class:`~zf_unet.models.fused_upsampling.FusedUpsampleConv` ``{block}_conv1`` is again
    ``UpSampling2D/3D(2, "nearest")`` ``{block}_up`` -> ``Concatenate`` ``{block}_concat`` ->
    ``Conv2D/3D`` ``{block}_conv1``: the layout of models built with
    ``fuse_upsampling=False`` (and by zf_unet before the fused layer existed), whose weight
    files then load into the copy. Its weights list has the same order as ``model``'s."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    fused = {layer.name for layer in model.layers
             if isinstance(layer, FusedUpsampleConv) and not layer.cache_kernels}
    convs: dict[str, keras.layers.Layer] = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config(layer.get_config())

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer.name not in fused:
            return layer(*args, **kwargs)
        block = layer.name[:-len("_conv1")] if layer.name.endswith("_conv1") else layer.name
        up_cls = keras.layers.UpSampling2D if layer.rank == 2 else keras.layers.UpSampling3D
        conv_cls = keras.layers.Conv2D if layer.rank == 2 else keras.layers.Conv3D
        inputs = list(args[0])
        inputs[layer.up_index] = up_cls(2, name=f"{block}_up",
                                        dtype=layer.dtype_policy)(inputs[layer.up_index])
        x = keras.layers.Concatenate(axis=-1, name=f"{block}_concat",
                                     dtype=layer.dtype_policy)(inputs)
        convs[layer.name] = conv_cls(
            layer.filters, 3, padding="same",
            activation=keras.activations.serialize(layer.activation),
            kernel_initializer=layer.kernel_initializer, name=layer.name,
            dtype=layer.dtype_policy)
        return convs[layer.name](x)

    copy = keras.models.clone_model(model, clone_function=clone,
                                    call_function=call if fused else None)
    copy.set_weights(model.get_weights())
    return copy


def fold_batch_norm(model: keras.Model, fuse_upsampling: bool = True) -> keras.Model:
    """A new model that computes ``model(x, training=False)`` with every foldable BatchNorm
    merged into the convolution before it and, with ``fuse_upsampling``, every nearest
    upsampling + concatenation + 3x3 convolution computed as one transposed convolution (see
    the module docstring): faster inference, the same outputs up to float rounding. It shares no weights with ``model`` (train ``model``,
    then fold again). Returns a copy of ``model`` when nothing can be folded."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return FoldedView(copy, fuse_upsampling=fuse_upsampling).model
