"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) for images of any size.

``predict_tiled(model, image)`` cuts an image of any size (1x1 up to whole-slide scans) into
tiles the model accepts, predicts them in batches, and blends the overlapping tile outputs
with a weight window. The weights are normalised by their sum, so a constant prediction stays
constant and there are no seams. Missing context at the image borders is mirrored ("reflect",
repeated for images smaller than the context), as in the paper.

Memory stays bounded by one batch of tiles plus the float32 output accumulator. The image is
never padded or converted as a whole: every tile is read straight from the input array
(mirrored indices at the borders) and converted to float32 on its own, so a ``np.memmap``
works too. The blend normaliser is separable (two 1-D arrays), because the tiles form a
regular grid and the window is the outer product of two 1-D windows.

The tiling arithmetic (tile sizes, starts, windows, normaliser, mirrored reading) is
:class:`zf_unet.tiling.TilePlan`, shared with the serving export; the model's geometry is
:func:`zf_unet.models.model_geometry` (re-exported here). This module writes no files:
predicting image files into a folder is :func:`zf_unet.file_prediction.predict_files`.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import keras
import numpy as np

from zf_unet import registry
from zf_unet.checks import check_threshold, check_tiling
from zf_unet.data.imageops import unit_divisor
from zf_unet.data.io import check_float_range
from zf_unet.models.geometry import ModelGeometry, model_geometry
from zf_unet.models.loading import load_model_file
from zf_unet.tiling.plan import TilePlan
from zf_unet.tiling.tta import Transform, tta_key, tta_transforms

__all__ = ["BLEND_MODES", "CHUNK_ELEMENTS", "TTA_MODES", "as_image_stack", "check_finite",
           "load_model_file", "model_geometry", "predict_tiled"]

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
def as_image_stack(image: Any, channels: int) -> tuple[np.ndarray, bool]:
    """View ``image`` (see :func:`predict_tiled`) as ``(N, H, W, C)`` (no copy); return it and
    whether it was a stack. ``ValueError`` for shapes / channels that do not fit the model."""
    arr = image if isinstance(image, np.ndarray) else np.asarray(image)
    if arr.ndim == 2:
        if channels != 1:
            raise ValueError(
                f"image is 2-D {arr.shape} (one grayscale image) but the model expects "
                f"{channels} channels; pass (H, W, {channels})"
            )
        return arr[None, :, :, None], False
    if arr.ndim == 3:
        last = arr.shape[-1]
        if last == channels:
            return arr[None], False
        if channels == 1 and last > 4:
            return arr[..., None], True
        if channels == 1:
            raise ValueError(
                f"image of shape {arr.shape} looks like (H, W, C) with C={last} channels, but "
                "the model expects 1 channel. For a stack of grayscale images this narrow, "
                f"pass a 4-D array (N, H, W, 1)"
            )
        raise ValueError(
            f"image of shape {arr.shape} has {last} channels in its last axis but the model "
            f"expects {channels}; pass (H, W, {channels}) or (N, H, W, {channels})"
        )
    if arr.ndim == 4:
        if arr.shape[-1] != channels:
            raise ValueError(
                f"image stack of shape {arr.shape} has {arr.shape[-1]} channels but the model "
                f"expects {channels}"
            )
        return arr, True
    raise ValueError(
        f"image must be (H, W), (H, W, C), (N, H, W) or (N, H, W, C); got ndim={arr.ndim} "
        f"with shape {arr.shape}"
    )



def check_finite(stack: np.ndarray) -> None:
    """``ValueError`` naming the first NaN / Inf pixel of a float ``(N, H, W, C)`` stack
    (checked a chunk at a time; other dtypes pass)."""
    if not np.issubdtype(stack.dtype, np.floating):
        return
    n, h, w, c = stack.shape
    rows = max(1, CHUNK_ELEMENTS // max(1, w * c))
    for i in range(n):
        for r in range(0, h, rows):
            chunk = stack[i, r : r + rows]
            if not np.isfinite(chunk).all():
                bad = np.argwhere(~np.isfinite(chunk))[0]
                where = (i, r + int(bad[0]), int(bad[1]), int(bad[2]))
                raise ValueError(
                    f"image contains NaN or Inf pixels (first at (n, y, x, c) = {where}); "
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
    so caching them does not keep the model alive."""
    import tensorflow as tf

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
    model_ref = weakref.ref(model)

    def _make(spec_shape: tuple) -> Callable:
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
        fixed = geom.fixed_size or (None, None)
        entry["generic"] = _make((None, fixed[0], fixed[1], geom.channels))
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


def predict_tiled(
    model: keras.Model,
    image: Any,
    tile_size: int = 256,
    overlap: int = 64,
    blend: str = "gaussian",
    tta: str | None = None,
    batch_size: int = 4,
    threshold: float | None = None,
) -> np.ndarray:
    """Predict an image of any size with the paper's overlap-tile strategy.

    Args:
        model: a Keras model mapping ``(B, h, w, C)`` float32 images in [0, 1] to
            ``(B, h', w', K)`` probabilities, with ``h' = h`` (``padding="same"``) or
            ``h' = h - 2 * margin`` (``padding="valid"``), e.g. from ``zf_unet.build_unet``.
        image: one of
            ``(H, W)`` grayscale image (model with 1 channel);
            ``(H, W, C)`` image, if ``C`` equals the model's input channels;
            ``(N, H, W)`` stack of grayscale images: any other 3-D array when the model has 1
            input channel and the last axis is longer than 4 (a 3-D array whose last axis is
            2..4 but differs from the model's channels is an error, not a stack; pass
            ``(N, H, W, 1)`` for stacks of images 1..4 px wide);
            ``(N, H, W, C)`` stack.
            ``H``, ``W`` >= 1, any size. uint8 / uint16 / bool are scaled by the dtype maximum;
            floats must be finite and in [0, 1] (the rule of training,
            :func:`zf_unet.data.io.check_float_range`) and are used as they are.
        tile_size: side of the model's input tile in pixels, rounded down to a size the model
            accepts (a multiple of ``2**(depth-1)`` for ``"same"`` models; for ``"valid"``
            models the output tile is ``tile - 2 * margin``). Smaller images use the smallest
            accepted tile that covers them. Ignored for models with a fixed input size.
        overlap: minimum overlap in output pixels between neighbouring tiles; must be smaller
            than the output tile. Tiles are spread evenly, so the real overlap can be larger.
        blend: weight window over each output tile: ``"gaussian"`` (sigma = tile / 8, as in
            nnU-Net), ``"linear"`` (ramps over ``overlap`` pixels at the tile edges) or
            ``"none"`` (plain average in the overlaps). Accumulated predictions are divided by
            the accumulated weights, so blending never changes a constant prediction.
        tta: test-time augmentation: ``None``; ``"flips"`` (identity, horizontal, vertical,
            both: 4 predictions); ``"d4"`` (the 8 rotations / reflections of the square; tiles
            are made square). Each tile batch is transformed, predicted, transformed back and
            averaged.
        batch_size: tiles per model call (per TTA transform).
        threshold: ``None`` returns probabilities. Otherwise returns uint8 labels: ``p >
            threshold`` for one class, the argmax over classes (value ignored) for several.

    Returns:
        float32 ``(H, W, K)`` (or ``(N, H, W, K)`` for stacks); with ``threshold`` uint8
        ``(H, W)`` (or ``(N, H, W)``).

    Raises:
        ValueError: ``model`` not a ``keras.Model``; bad ``image`` shape / channels / dtype /
            NaN-Inf pixels (a :class:`DataError` for float values outside [0, 1]), ``tile_size`` too
            small for the model, ``overlap`` not smaller than the tile, unknown ``blend`` or
            ``tta``, non-positive ``batch_size``.
    """
    tile_size, overlap, batch_size = check_tiling(tile_size, overlap, batch_size)
    registry.BLEND_MODES.check(blend, "blend")
    tta_key(tta)
    threshold = check_threshold("threshold", threshold, allow_none=True)

    geom = model_geometry(model)
    channels, num_classes = geom.channels, geom.num_classes
    stack, is_stack = as_image_stack(image, channels)
    n_img, height, width, _ = stack.shape
    if height < 1 or width < 1:
        raise ValueError(f"image must have H, W >= 1, got shape {np.shape(image)}")
    divisor = np.float32(unit_divisor(stack.dtype))  # float32 division, as the serving graph
    check_finite(stack)
    check_float_range(stack, "image")

    plan = TilePlan.for_geometry(geom, tile_size, overlap, blend)
    out_h, out_w = plan.output_tile(height, 0), plan.output_tile(width, 1)
    if tta == "d4" and out_h != out_w:
        if geom.fixed_size is not None:
            raise ValueError(
                f"tta='d4' needs a square model input, got fixed size {geom.fixed_size}"
            )
        out_h = out_w = max(out_h, out_w)
    # Overlap only matters along axes that are split into several tiles.
    plan.check_overlap((height, width), (out_h, out_w))
    in_h, in_w = out_h + 2 * geom.margin, out_w + 2 * geom.margin

    ys, xs = plan.tile_starts(height, out_h), plan.tile_starts(width, out_w)
    wy, wx = plan.window(out_h), plan.window(out_w)
    weight2d = plan.tile_weights(wy, wx)
    inv_ry, inv_rx = plan.normaliser(ys, wy, height), plan.normaliser(xs, wx, width)

    tiles = [(n, int(y0), int(x0)) for n in range(n_img) for y0 in ys for x0 in xs]
    if not tiles:  # empty stack (N = 0)
        if threshold is None:
            result = np.zeros((0, height, width, num_classes), dtype=np.float32)
        else:
            result = np.zeros((0, height, width), dtype=np.uint8)
        return result
    tiles_per_image = len(ys) * len(xs)
    bs = min(batch_size, len(tiles))
    transforms = tta_transforms(tta)
    predict = _predict_fn(
        model, geom, (bs, in_h, in_w, channels), math.ceil(len(tiles) / bs) * len(transforms)
    )
    buf = np.zeros((bs, in_h, in_w, channels), dtype=np.float32)

    if threshold is None:
        result = np.zeros((n_img, height, width, num_classes), dtype=np.float32)
        accumulators: dict[int, np.ndarray] = {}
    else:
        label_dtype = np.uint8 if num_classes <= 256 else np.int32
        result = np.zeros((n_img, height, width), dtype=label_dtype)
        accumulators = {}

    def _accumulator(n: int) -> np.ndarray:
        if threshold is None:
            return result[n]
        if n not in accumulators:
            accumulators[n] = np.zeros((height, width, num_classes), dtype=np.float32)
        return accumulators[n]

    def _finish(n: int) -> None:
        acc = _accumulator(n)
        rows = max(1, CHUNK_ELEMENTS // max(1, width * num_classes))
        for r in range(0, height, rows):
            norm = (inv_ry[r : r + rows, None] * inv_rx[None, :]).astype(np.float32)
            block = acc[r : r + rows]
            block *= norm[:, :, None]
            if threshold is not None:
                if num_classes == 1:
                    result[n, r : r + rows] = block[..., 0] > threshold
                else:
                    result[n, r : r + rows] = np.argmax(block, axis=-1)
        if threshold is not None:
            del accumulators[n]

    for b0 in range(0, len(tiles), bs):
        batch = tiles[b0 : b0 + bs]
        for k, (n, y0, x0) in enumerate(batch):
            tile = plan.read_tile(stack[n], (y0, x0), (out_h, out_w))
            np.divide(tile, divisor, out=buf[k], casting="unsafe")
        pred = _predict_batch(predict, buf, transforms, (bs, out_h, out_w, num_classes))
        for k, (n, y0, x0) in enumerate(batch):
            a, b = max(0, y0), min(height, y0 + out_h)
            c, d = max(0, x0), min(width, x0 + out_w)
            p = pred[k, a - y0 : b - y0, c - x0 : d - x0]
            p *= weight2d[a - y0 : b - y0, c - x0 : d - x0]
            _accumulator(n)[a:b, c:d] += p
            if (b0 + k + 1) % tiles_per_image == 0:  # last tile of image n
                _finish(n)

    return result if is_stack else result[0]
