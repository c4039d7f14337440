"""U-Net++ (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
arXiv 1807.10165): nested dense skip pathways, deep supervision, ensemble and pruned inference.

Nodes ``X^{i,j}`` (``i`` = resolution level ``0 .. depth-1``, ``j = 0 .. depth-1-i``):

* ``X^{i,0}`` is the encoder: ``double_conv`` blocks joined by 2x2 max-poolings.
* ``X^{i,j}`` (``j >= 1``) = ``double_conv(concat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})))``
  with the filters of level ``i``; ``up`` is nearest/bilinear ``UpSampling2D`` (channels kept) or
  a 2x2 stride-2 ``Conv2DTranspose`` to the filters of level ``i`` (the official code).

Stable layer names: node blocks ``x{i}_{j}_conv1``, ``x{i}_{j}_bn1``, ``x{i}_{j}_relu1``, ...
(see ``double_conv_layer``), encoder poolings ``x{i}_0_pool``, up-sampling ``x{i}_{j}_up``,
concatenations ``x{i}_{j}_concat``. The head for nested level ``k`` (on ``X^{0,k}``) is a 1x1
``Conv2D`` ``head{k}_conv`` followed by a float32 ``Activation`` named ``L{k}``; the
activations are the model outputs, so ``model.output_names == ["L1", ..., "L{depth-1}"]`` with
deep supervision (``["L{depth-1}"]`` without) and losses / metrics / loss weights can be given
as dicts keyed by those names.

Deep supervision training: Keras 3 does not broadcast a single target to several outputs, so
a dataset yielding ``(image, mask[, weight])`` must yield one target per head. Use
``repeat_targets(ds, model)``::

    model = build_unet_plus_plus(..., deep_supervision=True)
    model.compile("adam", loss=BCEDiceLoss())          # applied to every head, summed
    model.fit(repeat_targets(train_ds, model), validation_data=repeat_targets(val_ds, model))

A single loss is applied to every head and the head losses are *summed*; pass
``loss_weights=[1 / n] * n`` for their mean (``n = len(model.outputs)``).

Inference: ``ensemble(model)`` averages the heads, ``prune(model, k)`` keeps only the nodes that
head ``k`` needs (``X^{i,j}`` with ``i + j <= k``), sharing the layer objects (and weights).
"""
from __future__ import annotations

import re
import sys
from typing import Any, Sequence

import keras
from keras import layers

from zf_unet.deprecation import keyword_only_after
from zf_unet.models.blocks import PADDING_MODES, normalize_input, uniform_size, upsample
from zf_unet.models.builder_args import check_builder_args

__all__ = [
    "build_unet_plus_plus",
    "deep_supervision_targets",
    "ensemble",
    "head_name",
    "nested_depth",
    "prune",
    "repeat_targets",
]


def head_name(level: int) -> str:
    """Name of the output (activation) layer of the head on ``X^{0,level}``: ``"L{level}"``."""
    return f"L{int(level)}"


@keyword_only_after(("depth", "filters", "batch_norm", "dropout", "upsampling",
                     "deep_supervision", "output_activation", "kernel_initializer", "name",
                     "sync_batch_norm", "padding", "fused_batch_norm", "input_normalization",
                     "backbone", "encoder_weights", "pool_sizes", "kernel_sizes", "spacing"))
def build_unet_plus_plus(
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
    name: str = "unet_plus_plus",
    deep_supervision: bool = False,
) -> keras.Model:
    """Build a U-Net++ as a functional ``keras.Model`` for images or volumes, optionally on a
    pretrained encoder.

    Volumes (``input_shape`` ``(D, H, W, C)``, tensors ``(B, D, H, W, C)``) use the 3-D
    layers, as in ``build_unet``; ``prune`` and ``ensemble`` work on them unchanged.

    Args:
        input_shape: ``(H, W, C)`` or ``(D, H, W, C)``; spatial sizes may be ``None``, else
            multiples of the product of the pool sizes along their axis (``2**(depth-1)``).
        num_classes: output channels per head. 1 = binary (sigmoid), >1 = softmax.
        depth: resolution levels, as in ``build_unet``; the nested levels are ``L1 .. L{depth-1}``
            (the paper: depth 5, ``L1 .. L4``). ``None`` = 5 (6 with a backbone).
        filters: channels at level 0, doubled at every level below; or a list of ``depth`` ints.
        batch_norm: BatchNorm after every 3x3 convolution (the official code has none).
        dropout: ``SpatialDropout2D`` rate at the end of every node block except the
            ``X^{0,j}`` (``j >= 1``) that feed the heads (the ``build_unet`` placement).
        upsampling: ``"nearest"`` | ``"bilinear"`` (channels kept) or ``"transpose"`` (2x2
            stride-2 transposed conv to the target level's filters, as in the official code).
        padding: only ``"same"`` is supported (the nested skips need equal sizes).
        output_activation: ``"auto"`` = sigmoid for one class, softmax for several; any Keras
            activation name; ``None`` = logits. Heads compute in float32.
        kernel_initializer: initializer of all convolutions.
        backbone: ``None`` or a ``zf_unet.registry.BACKBONES`` name (see ``build_unet``): the
            encoder nodes ``X^{i,0}`` (``i = 1 .. 5``) are the pretrained encoder's features at
            stride ``2**i``; there is no ``X^{0,0}`` (stride 1), so ``X^{0,j}`` concatenate
            ``X^{0,1} .. X^{0,j-1}`` and the upsampled ``X^{1,j-1}``. Heads ``L1 .. L5``.
        encoder_weights: ``None``, ``"imagenet"`` or a weights file path (see ``build_unet``).
        input_normalization: ``None`` or ``(mean, std)`` per input channel (images in
            [0, 1]): a ``Normalization`` layer standardises the input inside the model.
        pool_sizes: ``None`` (2 everywhere), ``"auto"`` (from ``spacing``) or ``depth - 1``
            per-level ints / per-axis tuples, as in ``build_unet``; the upsampling into node
            ``X^{i,j}`` undoes ``pool_sizes[i]``.
        kernel_sizes: ``None`` (3), ``"auto"`` or ``depth`` per-level kernels; every node of
            level ``i`` uses ``kernel_sizes[i]``.
        spacing: voxel size per spatial axis, for ``"auto"``.
        sync_batch_norm: BatchNorm synchronised across ``tf.distribute`` replicas.
        fused_batch_norm: ``FusedBatchNormalization`` layers (as in ``build_unet``).
        name: model name.
        deep_supervision: one head per nested level ``L1 .. L{depth-1}`` (outputs in that order);
            otherwise a single head on ``X^{0,depth-1}``.

    Returns:
        ``keras.Model`` mapping ``(B, H, W, C)`` to ``(B, H, W, num_classes)`` float32 (a list of
        ``depth - 1`` such tensors with deep supervision), outputs named ``L1 ..``; volumes
        ``(B, D, H, W, C)`` to ``(B, D, H, W, num_classes)``.

    In the paper's setting (1 input channel, ``filters=32, depth=5, batch_norm=False,
    upsampling="transpose"``, one class) it has 9,041,601 parameters, 9,041,700 with deep
    supervision, like the official Keras code (MrGiovanni/UNetPlusPlus).
    """
    if padding != "same" and backbone is None:
        if padding in PADDING_MODES:
            raise ValueError(
                f"U-Net++ supports only padding='same', got {padding!r}: its nested skip "
                "pathways concatenate maps from several depths, which must keep equal sizes"
            )
        raise ValueError(f"padding must be 'same' for U-Net++, got {padding!r}")
    a = check_builder_args(**locals(), builder="U-Net++")  # every argument, by name
    depth, pools = a.depth, a.pools
    pool_cls = layers.MaxPooling3D if a.volume else layers.MaxPooling2D

    def block(x: Any, i: int, j: int) -> Any:
        return a.block(x, i, name=f"x{i}_{j}", dropout=0.0 if (i == 0 and j >= 1) else None)

    inputs = keras.Input(shape=a.input_shape, name="image")
    nodes: dict[tuple[int, int], Any] = {}
    if backbone is not None:
        features = a.backbone_features(inputs)
        for i in range(1, depth):  # encoder X^{i,0}: the features at stride 2**i
            nodes[(i, 0)] = features[2 ** i]
    else:
        x = normalize_input(inputs, input_normalization, a.input_shape[-1])
        for i in range(depth):  # encoder X^{i,0}
            if i > 0:
                x = pool_cls(pool_size=uniform_size(pools[i - 1]), name=f"x{i - 1}_0_pool")(x)
            x = block(x, i, 0)
            nodes[(i, 0)] = x
    # Nested nodes, column by column (j), so that every X^{i,j} has its inputs.
    for j in range(1, depth):
        for i in range(depth - j):
            up = upsample(nodes[(i + 1, j - 1)], upsampling, a.widths[i], kernel_initializer,
                          name=f"x{i}_{j}_up", size=uniform_size(pools[i]))
            parts = [nodes[(i, k)] for k in range(j) if (i, k) in nodes] + [up]
            cat = parts[0] if len(parts) == 1 else layers.Concatenate(
                axis=-1, name=f"x{i}_{j}_concat")(parts)
            nodes[(i, j)] = block(cat, i, j)

    def head(level: int) -> Any:
        return a.head(nodes[(0, level)], f"head{level}_conv", head_name(level))

    last = depth - 1
    if deep_supervision:
        outputs: Any = [head(level) for level in range(1, last + 1)]
    else:
        outputs = head(last)
    return keras.Model(inputs, outputs, name=name)


_NODE_RE = re.compile(r"^x(\d+)_(\d+)_conv1$")


def nested_depth(model: keras.Model) -> int:
    """The ``depth`` a U-Net++ was built with, found from its layer names (``x{i}_{j}_conv1``:
    ``depth - 1`` is the largest ``i + j``; models on a backbone have no ``x{i}_0`` nodes)."""
    levels = [int(m.group(1)) + int(m.group(2))
              for m in (_NODE_RE.match(lyr.name) for lyr in model.layers) if m]
    if not levels:
        raise ValueError(
            f"model {model.name!r} is not a U-Net++ from build_unet_plus_plus "
            "(no 'x{i}_{j}_conv1' layers)"
        )
    return max(levels) + 1


def _head_output(model: keras.Model, level: int) -> Any:
    name = head_name(level)
    if name in model.output_names:
        return model.outputs[model.output_names.index(name)]
    try:
        layer = model.get_layer(name)
    except ValueError:
        layer = None
    if layer is None:
        heads = sorted(lyr.name for lyr in model.layers if re.fullmatch(r"L\d+", lyr.name))
        raise ValueError(
            f"model {model.name!r} has no head for level {level} (heads: {heads}); build it with "
            "deep_supervision=True to prune to a level below the deepest"
        )
    return layer.output


def prune(model: keras.Model, level: int) -> keras.Model:
    """U-Net++ pruned to nested level ``level``: only the nodes ``X^{i,j}`` with ``i + j <= level``.

    The returned functional model shares the layer objects (hence the weights) of ``model`` and
    has one output, the head ``L{level}``; its predictions equal that head's output in the full
    model. Works on models loaded from ``.keras`` files (the nodes are found by layer name).

    Raises:
        ValueError: ``level`` not in ``1 .. depth-1``, or ``model`` has no head for it (built
            without deep supervision and ``level < depth-1``).
    """
    last = nested_depth(model) - 1
    if isinstance(level, bool) or int(level) != level or not 1 <= int(level) <= last:
        raise ValueError(f"level must be an integer in 1..{last} for this model, got {level!r}")
    level = int(level)
    output = _head_output(model, level)
    return keras.Model(model.input, output, name=f"{model.name}_{head_name(level)}")


def ensemble(model: keras.Model, name: str | None = None) -> keras.Model:
    """A model returning the mean of the heads of a deeply supervised U-Net++ (shared layers).

    The average is computed in float32 (an ``Average`` layer named ``"ensemble"``).
    """
    if len(model.outputs) < 2:
        raise ValueError(
            f"model {model.name!r} has {len(model.outputs)} output(s); ensemble needs a model "
            "with several heads (build_unet_plus_plus(..., deep_supervision=True))"
        )
    mean = layers.Average(dtype="float32", name="ensemble")(list(model.outputs))
    return keras.Model(model.input, mean, name=name or f"{model.name}_ensemble")


def _num_heads(n: int | keras.Model) -> int:
    if isinstance(n, keras.Model):
        return len(n.outputs)
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"number of heads must be a positive integer, got {n!r}")
    return int(n)


def repeat_targets(data: Any, n: int | keras.Model) -> Any:
    """Repeat the targets (and sample weights) for a model with ``n`` outputs.

    Keras 3 needs ``y`` to have the structure of the outputs; a deeply supervised U-Net++ with
    ``n`` heads needs ``n`` targets. Maps ``(x, y)`` to ``(x, (y,) * n)`` and ``(x, y, w)`` to
    ``(x, (y,) * n, (w,) * n)``.

    Args:
        data: a ``tf.data.Dataset`` of ``(x, y)`` / ``(x, y, w)`` elements, or such a tuple of
            arrays (for ``model.fit(*repeat_targets((x, y), model))``).
        n: number of heads, or the model (``len(model.outputs)``).

    Returns:
        The mapped dataset, or the mapped tuple.
    """
    n = _num_heads(n)

    def rep(*items: Any) -> tuple:
        if len(items) not in (2, 3):
            raise ValueError(
                f"expected (x, y) or (x, y, sample_weight) elements, got {len(items)} items"
            )
        x, rest = items[0], items[1:]
        return (x,) + tuple(tuple(t for _ in range(n)) for t in rest)

    if isinstance(data, (tuple, list)):
        return rep(*data)
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset implies TensorFlow is imported
    if tf is not None and isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tuple):
            raise ValueError(
                f"dataset elements must be (x, y) or (x, y, sample_weight) tuples, got {spec!r}"
            )
        return data.map(rep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    raise TypeError(f"data must be a tf.data.Dataset or an (x, y[, w]) tuple, got {type(data)!r}")


deep_supervision_targets = repeat_targets
