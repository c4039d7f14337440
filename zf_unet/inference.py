"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) for images and volumes of any size.

``predict_tiled(model, image)`` cuts an image of any size (1x1 up to whole-slide scans) into
tiles the model accepts, predicts them in batches, and blends the overlapping tile outputs
with a weight window. The weights are normalised by their sum, so a constant prediction stays
constant and there are no seams. Missing context at the image borders is mirrored ("reflect",
repeated for images smaller than the context), as in the paper.

Memory stays bounded by one batch of tiles plus the float32 output accumulator. The image is
never padded or converted as a whole: every tile is read straight from the input array
(mirrored indices at the borders) and converted to float32 on its own, so a ``np.memmap``
works too. The blend normaliser is separable (one 1-D array per axis), because the tiles form a
regular grid and the window is the outer product of 1-D windows.

Volume models (``(B, D, H, W, C)`` inputs, ``padding="same"``) are tiled the same way along
depth, height and width: ``predict_tiled(model, volume, tile_size=(16, 256, 256),
overlap=(4, 64, 64))`` returns ``(D, H, W, K)``.

The tiling arithmetic (tile sizes, starts, windows, normaliser, mirrored reading) is
:class:`zf_unet.tiling.TilePlan`, shared with the serving export; the model's geometry is
:func:`zf_unet.models.model_geometry` (re-exported here). This module writes no files:
predicting image files into a folder is :func:`zf_unet.file_prediction.predict_files`.
"""
from __future__ import annotations

import itertools
import math
import weakref
from typing import Any, Callable, Sequence

import keras
import numpy as np

from zf_unet import registry
from zf_unet.checks import check_bool, check_threshold
from zf_unet.pixels import check_float_range, unit_divisor
from zf_unet.models.folding import FoldedView
from zf_unet.models.geometry import ModelGeometry, model_geometry
from zf_unet.errors import NonFiniteOutputError
from zf_unet.models.loading import load_model_file, model_source
from zf_unet.tiling.plan import TilePlan, check_tile_args
from zf_unet.tiling.tta import Transform, tta_key, tta_transforms

__all__ = ["BLEND_MODES", "CHUNK_ELEMENTS", "TTA_MODES", "array_layout", "as_image_stack",
           "check_finite", "load_model_file", "model_geometry", "predict_tiled"]

#: Accepted ``blend`` values (the names of :data:`zf_unet.registry.BLEND_MODES`).
BLEND_MODES = registry.BLEND_MODES.names()
#: Accepted ``tta`` values (:data:`zf_unet.registry.TTA_MODES`, with ``None`` for "none").
TTA_MODES = tuple(None if name == "none" else name for name in registry.TTA_MODES.names())

#: Number of elements per temporary chunk in whole-image passes (finite check, normalisation).
CHUNK_ELEMENTS = 1 << 20

_PREDICT_FN_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------
def as_image_stack(image: Any, channels: int, spatial_axes: int = 2,
                   channels_last: bool | None = None) -> tuple[np.ndarray, bool]:
    """View ``image`` (see :func:`predict_tiled`) as ``(N, H, W, C)`` for image models
    (``spatial_axes=2``) or ``(N, D, H, W, C)`` for volume models (``spatial_axes=3``), without
    a copy; return it and whether it was a stack / batch. ``channels_last``: ``True`` = the
    last axis holds the ``channels`` channels, ``False`` = no channel axis (1-channel models),
    ``None`` = decided from the shape and ``channels`` (:func:`array_layout`). ``ValueError``
    for shapes / channels that do not fit the model."""
    arr = image if isinstance(image, np.ndarray) else np.asarray(image)
    nd = spatial_axes
    if channels_last is None:
        channels_last = array_layout(arr.shape, channels, nd)
    what = "image" if nd == 2 else "volume"
    forms = "(H, W)" if nd == 2 else "(D, H, W)"
    if not channels_last:
        if channels != 1:
            raise ValueError(f"channels_last=False: {what} of shape {arr.shape} has no channel "
                             f"axis, but the model expects {channels} channels; pass "
                             f"{forms[:-1]}, {channels}) with channels_last=True")
        if arr.ndim not in (nd, nd + 1):
            raise ValueError(f"channels_last=False: expected a {what} {forms} or a batch "
                             f"(N, {forms[1:]} without a channel axis, got shape {arr.shape}")
        return (arr[None, ..., None], False) if arr.ndim == nd else (arr[..., None], True)
    if arr.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"channels_last=True: expected a {what} {forms[:-1]}, C) or a batch "
                         f"(N, {forms[1:-1]}, C), got shape {arr.shape}")
    if arr.shape[-1] != channels:
        kind = what if arr.ndim == nd + 1 else f"{what} {'stack' if nd == 2 else 'batch'}"
        raise ValueError(f"{kind} of shape {arr.shape} has {arr.shape[-1]} channels but the "
                         f"model expects {channels}")
    return (arr[None], False) if arr.ndim == nd + 1 else (arr, True)


def array_layout(shape: Sequence[int], channels: int, spatial_axes: int = 2) -> bool:
    """Whether an array of ``shape`` given to a model with ``channels`` input channels is
    channels-last (``True``) or has no channel axis (``False``), read from the shape: images
    ``(H, W)`` -> no channel axis; ``(H, W, C)`` -> channels-last; a 3-D array whose last
    axis differs from ``C`` is a stack ``(N, H, W)`` for 1-channel models when that axis is
    longer than 4; ``(N, H, W, C)`` -> channels-last. Volumes: ``(D, H, W)`` -> no channel
    axis (1-channel models); ``(D, H, W, C)`` / ``(N, D, H, W, C)`` -> channels-last. A shape
    that fits both layouts but is read as the first (a 1-channel model given ``(..., 1)``: one
    image / volume; ``(N, H, W)`` with ``W`` in 2..4 px: refused, it looks like an RGB(A)
    image) raises ``ValueError`` or follows this rule; pass ``channels_last`` to choose."""
    shape, nd, c = tuple(shape), spatial_axes, channels
    ndim = len(shape)
    if nd == 3:
        if ndim == 2:
            raise ValueError(
                f"this model segments volumes (D, H, W[, C]); got an image of shape {shape} "
                f"(H, W). Pass {_volume_forms(c)}, or a batch (N, D, H, W, {c})")
        if ndim == 3 and c != 1:
            raise ValueError(f"volume of shape {shape} has no channel axis but the model "
                             f"expects {c} channels; pass (D, H, W, {c})")
        if ndim == 4 and shape[-1] != c:
            hint = (f", or channels_last=False for a batch (N, D, H, W) of {shape[0]} volumes"
                    if c == 1 else "")
            raise ValueError(
                f"volume of shape {shape} has {shape[-1]} channels in its last axis but the "
                f"model expects {c}; pass {_volume_forms(c)} or a batch (N, D, H, W, {c})"
                f"{hint}")
        if ndim not in (3, 4, 5):
            raise ValueError(f"this model segments volumes: pass {_volume_forms(c)} or a batch "
                             f"(N, D, H, W, {c}); got ndim={ndim} with shape {shape}")
        return ndim != 3
    if ndim == 2:
        if c != 1:
            raise ValueError(f"image is 2-D {shape} (one grayscale image) but the model "
                             f"expects {c} channels; pass (H, W, {c})")
        return False
    if ndim == 3:
        last = shape[-1]
        if last == c:
            return True
        if c == 1 and last > 4:
            return False
        if c == 1:
            raise ValueError(
                f"image of shape {shape} looks like (H, W, C) with C={last} channels, but the "
                "model expects 1 channel. For a stack of grayscale images this narrow, pass "
                "a 4-D array (N, H, W, 1), or channels_last=False")
        raise ValueError(f"image of shape {shape} has {last} channels in its last axis but the "
                         f"model expects {c}; pass (H, W, {c}) or (N, H, W, {c})")
    if ndim == 4:
        return True
    hint = "; this model segments 2-D images, a volume needs a 3-D model" if ndim == 5 else ""
    raise ValueError(f"image must be (H, W), (H, W, C), (N, H, W) or (N, H, W, C); got "
                     f"ndim={ndim} with shape {shape}{hint}")


def _volume_forms(channels: int) -> str:
    return f"(D, H, W, {channels})" if channels != 1 else "(D, H, W) or (D, H, W, 1)"


def check_finite(stack: np.ndarray) -> None:
    """``ValueError`` naming the first NaN / Inf pixel of a float ``(N, H, W, C)`` stack or
    ``(N, D, H, W, C)`` volume batch (checked a chunk at a time; other dtypes pass)."""
    if not np.issubdtype(stack.dtype, np.floating):
        return
    n, first = stack.shape[0], stack.shape[1]
    row = int(np.prod(stack.shape[2:]))
    rows = max(1, CHUNK_ELEMENTS // max(1, row))
    names = "(n, y, x, c)" if stack.ndim == 4 else "(n, z, y, x, c)"
    for i in range(n):
        for r in range(0, first, rows):
            chunk = stack[i, r : r + rows]
            if not np.isfinite(chunk).all():
                bad = np.argwhere(~np.isfinite(chunk))[0]
                where = (i, r + int(bad[0]), *(int(b) for b in bad[1:]))
                raise ValueError(
                    f"image contains NaN or Inf pixels (first at {names} = {where}); "
                    "image values must be finite"
                )


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------
# Batches of one shape that justify tracing a graph specialised to that shape (about 10-20 %
# faster on CPU than the shape-generic graph, but each new shape costs a trace).
_SPECIALISE_AFTER_CALLS = 32
_SPECIALISED_PER_MODEL = 4


def _predict_fn(model: keras.Model, geom: ModelGeometry, shape: tuple, calls: int) -> Callable:
    """``model(x, training=False)`` as a cached ``tf.function``: a shape-generic graph (traced
    once per model for every batch / tile size), or, for long runs, one specialised to
    ``shape`` (an LRU of a few per model). Graphs hold only a weak reference to the model,
    so caching them does not keep the model alive. On JAX and PyTorch:
    ``model.predict_on_batch`` (a jitted JAX function per shape; PyTorch without autograd)."""
    try:
        entry = _PREDICT_FN_CACHE.get(model)
    except TypeError:  # pragma: no cover - not weak-referenceable
        entry = None
    if entry is None:
        entry = {"generic": None, "shapes": {}}
        try:
            _PREDICT_FN_CACHE[model] = entry
        except TypeError:  # pragma: no cover
            pass
    if "view" not in entry:
        # BatchNorm folded into the convolutions (zf_unet.models.folding): its own weights
        # are recomputed from the model's at every call, so training in between is seen.
        entry["view"] = FoldedView(model)
    else:
        entry["view"].refresh()
    model_ref = weakref.ref(entry["view"].model)
    if keras.backend.backend() != "tensorflow":
        return lambda x: np.asarray(model_ref().predict_on_batch(x), dtype=np.float32)

    def _make(spec_shape: tuple) -> Callable:
        import tensorflow as tf

        spec = tf.TensorSpec(spec_shape, tf.float32)

        @tf.function(input_signature=[spec], autograph=False)
        def _graph(x):
            return model_ref()(x, training=False)

        return lambda x: np.asarray(_graph(tf.constant(x)), dtype=np.float32)

    if calls >= _SPECIALISE_AFTER_CALLS:
        shapes = entry["shapes"]
        fn = shapes.pop(shape, None) or _make(shape)
        shapes[shape] = fn  # most recently used last
        while len(shapes) > _SPECIALISED_PER_MODEL:
            shapes.pop(next(iter(shapes)))
        return fn
    if entry["generic"] is None:
        fixed = geom.fixed_size or (None,) * geom.spatial_axes
        entry["generic"] = _make((None, *fixed, geom.channels))
    return entry["generic"]


def _predict_batch(predict: Callable, x: np.ndarray, transforms: list[Transform],
                   expect: tuple) -> np.ndarray:
    """Mean over ``transforms`` of ``inverse(predict(forward(x)))``: float32 ``expect``."""
    acc = None
    for fwd, inv in transforms:
        y = inv(predict(np.ascontiguousarray(fwd(x))))
        if y.shape != expect:
            raise RuntimeError(
                f"model returned {y.shape} for a tile batch of {x.shape}, expected {expect}; "
                "its geometry differs from what model_geometry() measured"
            )
        if acc is None:
            acc = np.array(y, dtype=np.float32, copy=True)
        else:
            acc += y
    if len(transforms) > 1:
        acc /= np.float32(len(transforms))
    return acc


def non_finite_output(model: Any, where: str) -> NonFiniteOutputError:
    """The error for a model whose output on ``where`` holds NaN or Inf (names its file)."""
    return NonFiniteOutputError(
        f"{model_source(model)}: the model's output on {where} holds NaN or Inf; expected "
        "finite probabilities: its weights are broken (did its training diverge?): use a "
        "checkpoint of a finite epoch or train it again")


def check_model_finite(model: keras.Model) -> None:
    """Run ``model`` once on a mid-gray test input (64 px per axis, 8 sections for volume
    models) and raise :class:`NonFiniteOutputError` naming its file if the output is not
    finite (exports call this: a NaN model must not be served)."""
    geom = model_geometry(model)
    shape = (geom.fixed_size or ((8, 64, 64) if geom.spatial_axes == 3 else (64, 64)))
    probe = np.full((*shape, geom.channels), 0.5, np.float32)
    tile = tuple(shape) if geom.fixed_size else max(64, *shape)
    try:
        predict_tiled(model, probe, tile_size=tile, overlap=0)
    except NonFiniteOutputError:
        raise non_finite_output(model, "a mid-gray test input") from None


def predict_tiled(
    model: keras.Model,
    image: Any,
    tile_size: int | Sequence[int] = 256,
    overlap: int | Sequence[int] = 64,
    blend: str = "gaussian",
    tta: str | None = None,
    batch_size: int = 4,
    threshold: float | None = None,
    *,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Predict an image or a volume of any size with the paper's overlap-tile strategy.

    Args:
        model: a Keras model mapping ``(B, h, w, C)`` float32 images in [0, 1] to
            ``(B, h', w', K)`` probabilities, with ``h' = h`` (``padding="same"``) or
            ``h' = h - 2 * margin`` (``padding="valid"``), e.g. from ``zf_unet.build_unet``;
            or a volume model mapping ``(B, d, h, w, C)`` to ``(B, d, h, w, K)``
            (``padding="same"`` only; it may pool each axis differently, e.g. ``(1, 2, 2)``).
        image: for an image model one of
            ``(H, W)`` grayscale image (model with 1 channel);
            ``(H, W, C)`` image, if ``C`` equals the model's input channels;
            ``(N, H, W)`` stack of grayscale images: any other 3-D array when the model has 1
            input channel and the last axis is longer than 4 (a 3-D array whose last axis is
            2..4 but differs from the model's channels is an error, not a stack; pass
            ``(N, H, W, 1)`` for stacks of images 1..4 px wide);
            ``(N, H, W, C)`` stack.
            For a volume model one of ``(D, H, W)`` (model with 1 channel),
            ``(D, H, W, C)``, or a batch ``(N, D, H, W, C)``.
            Every side >= 1, any size. uint8 / uint16 / bool are scaled by the dtype maximum;
            floats must be finite and in [0, 1] (the rule of training,
            :func:`zf_unet.pixels.check_float_range`) and are used as they are.
        tile_size: side of the model's input tile in pixels: an int for every spatial axis,
            or one per axis (``(H, W)``; ``(D, H, W)`` for volumes, e.g. ``(16, 256, 256)``),
            each rounded down to a size the model accepts along that axis (a multiple of the
            axis's divisor, e.g. ``2**(depth-1)``, for ``"same"`` models; for ``"valid"``
            models the output tile is ``tile - 2 * margin``). Shorter axes use the smallest
            accepted tile that covers them (so an int 256 fits a 12-slice volume with a
            12-slice tile). Ignored for models with a fixed input size.
        overlap: minimum overlap in output pixels between neighbouring tiles, an int or one per
            spatial axis; must be smaller than the output tile along every axis split into
            several tiles. Tiles are spread evenly, so the real overlap can be larger.
        blend: weight window over each output tile (the outer product of one 1-D window per
            axis): ``"gaussian"`` (sigma = tile / 8, as in nnU-Net), ``"linear"`` (ramps over
            ``overlap`` pixels at the tile edges) or ``"none"`` (plain average in the
            overlaps). Accumulated predictions are divided by the accumulated weights, so
            blending never changes a constant prediction.
        tta: test-time augmentation: ``None``; ``"flips"`` (identity, horizontal, vertical,
            both: 4 predictions; for volumes also each with a depth flip: 8); ``"d4"`` (the 8
            rotations / reflections of the (H, W) square; tiles are made square in-plane; for
            volumes also each with a depth flip: 16; depth is never rotated). Each tile batch
            is transformed, predicted, transformed back and averaged.
        batch_size: tiles per model call (per TTA transform).
        threshold: ``None`` returns probabilities. Otherwise returns uint8 labels: ``p >
            threshold`` for one class, the argmax over classes (value ignored) for several.
        channels_last: the layout of ``image``: ``True`` = its last axis is the channel axis
            (``(H, W, C)``, ``(N, H, W, C)``, ``(D, H, W, C)``, ``(N, D, H, W, C)``);
            ``False`` = it has none (1-channel models: ``(H, W)``, ``(N, H, W)``,
            ``(D, H, W)``, ``(N, D, H, W)``), e.g. a stack of 3 px wide strips
            ``(N, H, 3)``; ``None`` = read from the shape and the model's channel count as
            listed under ``image`` (:func:`array_layout`): an array that fits both layouts
            is read as listed there (``(..., 1)`` for a 1-channel model: channels-last) or
            refused (a 3-D ``(N, H, 2..4)`` for a 1-channel model: it looks like an RGB(A)
            image), never guessed otherwise.

    Returns:
        float32 ``(H, W, K)`` (``(N, H, W, K)`` for stacks; ``(D, H, W, K)`` /
        ``(N, D, H, W, K)`` for volumes); with ``threshold`` uint8 ``(H, W)`` (``(N, H, W)``,
        ``(D, H, W)``, ``(N, D, H, W)``).

    Memory: the output (float32 ``(*spatial, K)`` per image, which is also the accumulator
    of weighted tile predictions; with ``threshold`` one float32 accumulator for the image
    being predicted plus the label output), one batch of input tiles (float32
    ``(batch_size, *tile_in, C)``) and its predictions (about ``2 + 1`` float32
    ``(batch_size, *tile, K)`` arrays with TTA), the float32 ``(*tile)`` weight window, and
    one 1-D float64 normaliser per axis (the blend normaliser is separable, never a
    full-size weight volume; it is applied a block of at most ``CHUNK_ELEMENTS`` elements at
    a time). The input is never copied or padded as a whole.

    Raises:
        ValueError: ``model`` not a ``keras.Model``; bad ``image`` shape / channels / dtype /
            NaN-Inf pixels (a :class:`DataError` for float values outside [0, 1]); an image
            for a volume model or a volume for an image model, ``tile_size`` too small for
            the model, ``overlap`` not smaller than the tile, per-axis values with the wrong
            number of axes, unknown ``blend`` or ``tta``, non-positive ``batch_size``.
    """
    tile_size, overlap, batch_size = check_tile_args(tile_size, overlap, batch_size)
    registry.BLEND_MODES.check(blend, "blend")
    tta_key(tta)
    threshold = check_threshold("threshold", threshold, allow_none=True)

    geom = model_geometry(model)
    channels, num_classes, nd = geom.channels, geom.num_classes, geom.spatial_axes
    if channels_last is not None:
        channels_last = check_bool("channels_last", channels_last)
    stack, is_stack = as_image_stack(image, channels, nd, channels_last)
    n_img, lengths = stack.shape[0], tuple(int(v) for v in stack.shape[1:-1])
    if min(lengths) < 1:
        what = "H, W" if nd == 2 else "D, H, W"
        raise ValueError(f"image must have {what} >= 1, got shape {np.shape(image)}")
    divisor = np.float32(unit_divisor(stack.dtype))  # float32 division, as the serving graph
    check_finite(stack)
    check_float_range(stack, "image")

    plan = TilePlan.for_geometry(geom, tile_size, overlap, blend)
    outs = [plan.output_tile(lengths[a], a) for a in range(nd)]
    if tta == "d4" and outs[-2] != outs[-1]:
        if geom.fixed_size is not None:
            raise ValueError(
                f"tta='d4' needs a square model input, got fixed size {geom.fixed_size}"
            )
        outs[-2] = outs[-1] = max(outs[-2], outs[-1])
    # Overlap only matters along axes that are split into several tiles.
    plan.check_overlap(lengths, outs)
    ins = [t + 2 * geom.margin for t in outs]

    starts = [plan.tile_starts(lengths[a], outs[a], a) for a in range(nd)]
    wins = [plan.window(outs[a], a) for a in range(nd)]
    weight = plan.tile_weights(*wins)
    inverses = [plan.normaliser(starts[a], wins[a], lengths[a]) for a in range(nd)]

    tiles = [(n, tuple(int(v) for v in st)) for n in range(n_img)
             for st in itertools.product(*starts)]
    if not tiles:  # empty stack (N = 0)
        if threshold is None:
            return np.zeros((0, *lengths, num_classes), dtype=np.float32)
        return np.zeros((0, *lengths), dtype=np.uint8)
    tiles_per_image = math.prod(len(st) for st in starts)
    bs = min(batch_size, len(tiles))
    transforms = tta_transforms(tta, nd)
    predict = _predict_fn(
        model, geom, (bs, *ins, channels), math.ceil(len(tiles) / bs) * len(transforms)
    )
    buf = np.zeros((bs, *ins, channels), dtype=np.float32)

    if threshold is None:
        result = np.zeros((n_img, *lengths, num_classes), dtype=np.float32)
    else:
        label_dtype = np.uint8 if num_classes <= 256 else np.int32
        result = np.zeros((n_img, *lengths), dtype=label_dtype)
    accumulators: dict[int, np.ndarray] = {}

    def _accumulator(n: int) -> np.ndarray:
        if threshold is None:
            return result[n]
        if n not in accumulators:
            accumulators[n] = np.zeros((*lengths, num_classes), dtype=np.float32)
        return accumulators[n]

    def _finish(n: int) -> None:
        """Normalise image ``n`` block by block: every index of the spatial axes before the
        last two, then row chunks (the 2-D normaliser of a block is outer products of
        slices of the 1-D ones; the leading axes multiply in first, in axis order)."""
        acc = _accumulator(n)
        height, width = lengths[-2], lengths[-1]
        rows = max(1, CHUNK_ELEMENTS // max(1, width * num_classes))
        for lead in np.ndindex(*lengths[:-2]):
            for r in range(0, height, rows):
                parts = [inverses[a][i : i + 1] for a, i in enumerate(lead)]
                norm = plan.outer_normaliser(parts + [inverses[-2][r : r + rows],
                                                      inverses[-1]])
                norm = norm.reshape(norm.shape[len(lead):])
                block = acc[lead][r : r + rows]
                block *= norm[..., None]
                if threshold is not None:
                    if num_classes == 1:
                        result[n][lead][r : r + rows] = block[..., 0] > threshold
                    else:
                        result[n][lead][r : r + rows] = np.argmax(block, axis=-1)
        if threshold is not None:
            del accumulators[n]

    for b0 in range(0, len(tiles), bs):
        batch = tiles[b0 : b0 + bs]
        for k, (n, st) in enumerate(batch):
            tile = plan.read_tile(stack[n], st, outs)
            np.divide(tile, divisor, out=buf[k], casting="unsafe")
        pred = _predict_batch(predict, buf, transforms, (bs, *outs, num_classes))
        if not np.isfinite(pred.sum(dtype=np.float64)):  # a NaN model is no result
            raise non_finite_output(model, "its input")
        for k, (n, st) in enumerate(batch):
            dst = tuple(slice(max(0, s0), min(length, s0 + t))
                        for s0, t, length in zip(st, outs, lengths))
            src = tuple(slice(d.start - s0, d.stop - s0) for d, s0 in zip(dst, st))
            p = pred[k][src]
            p *= weight[src]
            _accumulator(n)[dst] += p
            if (b0 + k + 1) % tiles_per_image == 0:  # last tile of image n
                _finish(n)

    return result if is_stack else result[0]
