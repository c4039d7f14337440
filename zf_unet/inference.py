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

``model_geometry(model)`` reports what the tiler needs to know about a model: how many
times it downsamples (the divisor), the context margin of ``padding="valid"`` models, and
the input channels and number of classes.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Iterator

import keras
import numpy as np

from zf_unet.checks import check_int
from zf_unet.data.io import check_float_range

__all__ = ["BLEND_MODES", "TTA_MODES", "load_model_file", "model_geometry", "predict_files",
           "predict_tiled"]

BLEND_MODES = ("gaussian", "linear", "none")
TTA_MODES = (None, "flips", "d4")

# Number of elements per temporary chunk in whole-image passes (finite check, normalisation).
_CHUNK_ELEMENTS = 1 << 20

_GEOMETRY_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_PREDICT_FN_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------------------------
# Model geometry
# --------------------------------------------------------------------------------------------
def _iter_layers(layer: Any) -> Iterator[Any]:
    """Every layer, with nested models and sequentials expanded."""
    for sub in getattr(layer, "layers", []) or []:
        yield sub
        if getattr(sub, "layers", None):
            yield from _iter_layers(sub)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def _static_dim(d: Any) -> int | None:
    return None if d is None else int(d)


def _probe_output_size(model: keras.Model, size: tuple[int, int], channels: int) -> tuple[int, int]:
    """Spatial output size for a ``size`` input: symbolic first, a real forward pass as fallback."""
    shape = (1, size[0], size[1], channels)
    try:
        out = model.compute_output_shape(shape)
        if out[1] is not None and out[2] is not None:
            return int(out[1]), int(out[2])
    except Exception:  # noqa: BLE001 - some layers cannot compute shapes symbolically
        pass
    y = model(np.zeros(shape, dtype="float32"), training=False)
    return int(y.shape[1]), int(y.shape[2])


def model_geometry(model: keras.Model) -> dict:
    """What the tiler needs to know about ``model``.

    Returns a dict with:

    - ``depth``: resolution levels = number of stride-2 downsamplings (``enc{i}_pool``) + 1.
    - ``divisor``: product of the downsampling strides (``2**(depth-1)`` for a U-Net); the step
      between accepted input sizes.
    - ``margin``: context pixels lost on each side (0 for ``padding="same"``; for
      ``padding="valid"`` measured as ``(input - output) / 2`` on the model itself).
    - ``padding``: ``"same"`` or ``"valid"``.
    - ``min_input``: the smallest accepted input side; accepted sides are
      ``min_input + k * divisor``.
    - ``fixed_size``: ``(H, W)`` when the model's input size is fixed (then only that size is
      accepted), else ``None``.
    - ``channels``: input channels; ``num_classes``: output channels.

    Raises:
        ValueError: ``model`` is not a ``keras.Model``, not a single-input image model, or its
            output size does not follow ``output = input - 2 * margin`` (e.g. a model that
            changes resolution).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"model: expected a keras.Model (e.g. from zf_unet.build_unet or "
                         f"load_model_file), got {type(model).__name__}")
    try:
        cached = _GEOMETRY_CACHE.get(model)
    except TypeError:  # pragma: no cover - unhashable / not weak-referenceable
        cached = None
    if cached is not None:
        return dict(cached)

    in_shape = model.input_shape
    out_shape = model.output_shape
    if isinstance(in_shape, list) or len(in_shape) != 4:
        raise ValueError(
            f"model must take one (batch, H, W, C) image input, got input_shape={in_shape!r}"
        )
    if isinstance(out_shape, list) or len(out_shape) != 4:
        raise ValueError(
            f"model must have one (batch, H, W, K) output, got output_shape={out_shape!r}"
        )
    channels = _static_dim(in_shape[-1])
    num_classes = _static_dim(out_shape[-1])
    if channels is None or num_classes is None:
        raise ValueError(
            f"model needs static channel counts, got input_shape={in_shape!r}, "
            f"output_shape={out_shape!r}"
        )

    divisor, n_down, valid_conv = 1, 0, False
    for layer in _iter_layers(model):
        name = type(layer).__name__
        if "Transpose" in name:
            continue
        if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            s = _pair(layer.strides if layer.strides is not None else layer.pool_size)[0]
            if s > 1:
                divisor *= s
                n_down += 1
        elif isinstance(layer, keras.layers.Conv2D):
            s = _pair(layer.strides)[0]
            if s > 1:
                divisor *= s
                n_down += 1
            if layer.padding == "valid" and max(_pair(layer.kernel_size)) > 1:
                valid_conv = True
    depth = n_down + 1

    fixed = (_static_dim(in_shape[1]), _static_dim(in_shape[2]))
    if fixed[0] is not None and fixed[1] is not None:
        out_hw = (_static_dim(out_shape[1]), _static_dim(out_shape[2]))
        if None in out_hw:
            out_hw = _probe_output_size(model, fixed, channels)
        dh, dw = fixed[0] - out_hw[0], fixed[1] - out_hw[1]
        if dh != dw or dh < 0 or dh % 2:
            raise ValueError(
                f"model maps a fixed {fixed} input to a {out_hw} output; predict_tiled needs "
                "output = input - 2 * margin on both axes"
            )
        geom = dict(
            depth=depth, divisor=divisor, margin=dh // 2, padding="valid" if dh else "same",
            min_input=min(fixed), fixed_size=fixed, channels=channels, num_classes=num_classes,
        )
    elif fixed[0] is not None or fixed[1] is not None:
        raise ValueError(
            f"model input_shape={in_shape!r} fixes only one spatial side; use (None, None, C) "
            "or a fully fixed size"
        )
    else:
        if valid_conv:
            from zf_unet.models.unet import output_size

            s0 = next(
                (s for s in range(1, 64 * divisor + 4096) if output_size(s, depth, "valid")), None
            )
            if s0 is None:  # pragma: no cover - output_size always finds one
                raise ValueError("could not find an input size this valid-padding model accepts")
            margins = set()
            for s in (s0, s0 + divisor):
                oh, ow = _probe_output_size(model, (s, s), channels)
                if oh != ow or (s - oh) % 2 or oh <= 0:
                    raise ValueError(
                        f"model maps a {s}x{s} input to {oh}x{ow}; predict_tiled needs "
                        "output = input - 2 * margin"
                    )
                margins.add((s - oh) // 2)
            if len(margins) != 1:
                raise ValueError(
                    f"model's context margin is not constant ({sorted(margins)}); cannot tile it"
                )
            margin, padding, min_input = margins.pop(), "valid", s0
        else:
            s = divisor * max(1, math.ceil(16 / divisor))
            oh, ow = _probe_output_size(model, (s, s), channels)
            if (oh, ow) != (s, s):
                raise ValueError(
                    f"model maps a {s}x{s} input to {oh}x{ow}, but it has no valid-padding "
                    "convolution; predict_tiled needs output = input - 2 * margin"
                )
            margin, padding, min_input = 0, "same", divisor
        geom = dict(
            depth=depth, divisor=divisor, margin=margin, padding=padding, min_input=min_input,
            fixed_size=None, channels=channels, num_classes=num_classes,
        )
    try:
        _GEOMETRY_CACHE[model] = dict(geom)
    except TypeError:  # pragma: no cover
        pass
    return geom


# --------------------------------------------------------------------------------------------
# Tiling plan
# --------------------------------------------------------------------------------------------
def _max_output_tile(geom: dict, tile_size: int) -> tuple[int, int]:
    """Largest output tile (per axis) whose input tile is <= ``tile_size``."""
    if geom["fixed_size"] is not None:
        fh, fw = geom["fixed_size"]
        return fh - 2 * geom["margin"], fw - 2 * geom["margin"]
    s0, div = geom["min_input"], geom["divisor"]
    if tile_size < s0:
        raise ValueError(
            f"tile_size={tile_size} is too small for this model: its smallest accepted input "
            f"is {s0} px (accepted sizes are {s0} + k * {div})"
        )
    t_in = s0 + (tile_size - s0) // div * div
    t_out = t_in - 2 * geom["margin"]
    return t_out, t_out


def _fit_output_tile(geom: dict, length: int, t_max: int) -> int:
    """Output tile for an axis of ``length`` px: the largest allowed, or the smallest accepted
    one that covers the whole axis when the image is smaller than that."""
    if geom["fixed_size"] is not None:
        return t_max
    out0 = geom["min_input"] - 2 * geom["margin"]
    div = geom["divisor"]
    need = out0 + max(0, math.ceil((length - out0) / div)) * div
    return min(t_max, need)


def _tile_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Output-tile start positions along one axis (evenly spread, overlap >= ``overlap``)."""
    if length <= tile:
        return np.array([-((tile - length) // 2)], dtype=np.int64)
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


def _window(tile: int, blend: str, overlap: int) -> np.ndarray:
    """1-D blend weights (float64, all > 0, max 1)."""
    i = np.arange(tile, dtype=np.float64)
    if blend == "gaussian":
        sigma = tile / 8.0  # nnU-Net's choice
        w = np.exp(-0.5 * ((i - (tile - 1) / 2.0) / sigma) ** 2)
        w /= w.max()
        return np.maximum(w, 1e-6)
    if blend == "linear":
        return np.minimum(1.0, np.minimum(i + 1, tile - i) / (overlap + 1.0))
    return np.ones(tile, dtype=np.float64)


def _mirror_index(idx: np.ndarray, length: int) -> np.ndarray:
    """Map any integer positions into ``[0, length)`` by (repeated) mirror reflection without
    repeating the edge pixel, i.e. ``np.pad(mode="reflect")`` applied as often as needed."""
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    m = np.mod(idx, period)
    return np.where(m >= length, period - m, m)


def _axis_source(start: int, size: int, length: int) -> slice | np.ndarray:
    if start >= 0 and start + size <= length:
        return slice(start, start + size)
    return _mirror_index(np.arange(start, start + size), length)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------
def _as_stack(image: Any, channels: int) -> tuple[np.ndarray, bool]:
    """View ``image`` as ``(N, H, W, C)`` (no copy); return it and whether it was a stack."""
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


def _scale_for(dtype: np.dtype) -> float:
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.unsignedinteger):
        return 1.0 / float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise ValueError(
        f"image dtype {dtype} is not supported: use uint8 / uint16 (scaled by the dtype maximum) "
        "or float in [0, 1]"
    )


def _check_finite(stack: np.ndarray) -> None:
    if not np.issubdtype(stack.dtype, np.floating):
        return
    n, h, w, c = stack.shape
    rows = max(1, _CHUNK_ELEMENTS // max(1, w * c))
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
def _tta_transforms(tta: str | None) -> list[tuple[Callable, Callable]]:
    """(forward, inverse) pairs acting on (B, H, W, C) arrays."""
    ident = (lambda x: x, lambda y: y)
    if tta is None:
        return [ident]
    flips = [
        ident,
        (lambda x: x[:, :, ::-1], lambda y: y[:, :, ::-1]),  # horizontal
        (lambda x: x[:, ::-1], lambda y: y[:, ::-1]),  # vertical
        (lambda x: x[:, ::-1, ::-1], lambda y: y[:, ::-1, ::-1]),  # both (= rot180)
    ]
    if tta == "flips":
        return flips
    out = []
    for k in range(4):
        out.append(
            (
                lambda x, k=k: np.rot90(x, k, axes=(1, 2)),
                lambda y, k=k: np.rot90(y, -k, axes=(1, 2)),
            )
        )
        out.append(
            (
                lambda x, k=k: np.rot90(x[:, :, ::-1], k, axes=(1, 2)),
                lambda y, k=k: np.rot90(y, -k, axes=(1, 2))[:, :, ::-1],
            )
        )
    return out


# Batches of one shape that justify tracing a graph specialised to that shape (about 10-20 %
# faster on CPU than the shape-generic graph, but each new shape costs a trace).
_SPECIALISE_AFTER_CALLS = 32
_SPECIALISED_PER_MODEL = 4


def _predict_fn(model: keras.Model, geom: dict, shape: tuple, calls: int) -> Callable:
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
        fixed = geom["fixed_size"] or (None, None)
        entry["generic"] = _make((None, fixed[0], fixed[1], geom["channels"]))
    return entry["generic"]


def _predict_batch(predict: Callable, x: np.ndarray, transforms, expect: tuple) -> np.ndarray:
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
    tile_size = check_int("tile_size", tile_size, 1)
    overlap = check_int("overlap", overlap, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    if overlap >= tile_size:
        raise ValueError(f"overlap={overlap} must be smaller than tile_size={tile_size}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be None or a number, got {threshold!r}") from None
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold!r}")

    geom = model_geometry(model)
    channels, num_classes, margin = geom["channels"], geom["num_classes"], geom["margin"]
    stack, is_stack = _as_stack(image, channels)
    n_img, height, width, _ = stack.shape
    if height < 1 or width < 1:
        raise ValueError(f"image must have H, W >= 1, got shape {np.shape(image)}")
    scale = np.float32(_scale_for(stack.dtype))
    _check_finite(stack)
    check_float_range(stack, "image")

    t_max = _max_output_tile(geom, tile_size)
    if t_max[0] < 1 or t_max[1] < 1:  # pragma: no cover - guarded by model_geometry
        raise ValueError(f"tile_size={tile_size} leaves no output pixels for this model")
    if geom["fixed_size"] is None:
        out_h = _fit_output_tile(geom, height, t_max[0])
        out_w = _fit_output_tile(geom, width, t_max[1])
        if tta == "d4" and out_h != out_w:
            out_h = out_w = max(out_h, out_w)
    else:
        out_h, out_w = t_max
        if tta == "d4" and out_h != out_w:
            raise ValueError(
                f"tta='d4' needs a square model input, got fixed size {geom['fixed_size']}"
            )
    # Overlap only matters along axes that are split into several tiles.
    for axis, length, tile in (("height", height, out_h), ("width", width, out_w)):
        if length > tile and overlap >= tile:
            raise ValueError(
                f"overlap={overlap} must be smaller than the output tile ({tile} px along "
                f"{axis} after fitting tile_size={tile_size} to the model)"
            )
    in_h, in_w = out_h + 2 * margin, out_w + 2 * margin

    ys = _tile_starts(height, out_h, overlap)
    xs = _tile_starts(width, out_w, overlap)
    wy, wx = _window(out_h, blend, overlap), _window(out_w, blend, overlap)
    weight2d = (wy[:, None] * wx[None, :]).astype(np.float32)[:, :, None]

    # Separable normaliser: sum over the tile grid of wy(y - y0) * wx(x - x0).
    def _norm1d(starts: np.ndarray, w: np.ndarray, length: int) -> np.ndarray:
        acc = np.zeros(length, dtype=np.float64)
        for s in starts:
            a, b = max(0, s), min(length, s + len(w))
            acc[a:b] += w[a - s : b - s]
        return acc

    inv_ry = 1.0 / _norm1d(ys, wy, height)
    inv_rx = 1.0 / _norm1d(xs, wx, width)

    tiles = [(n, int(y0), int(x0)) for n in range(n_img) for y0 in ys for x0 in xs]
    if not tiles:  # empty stack (N = 0)
        if threshold is None:
            result = np.zeros((0, height, width, num_classes), dtype=np.float32)
        else:
            result = np.zeros((0, height, width), dtype=np.uint8)
        return result
    tiles_per_image = len(ys) * len(xs)
    bs = min(batch_size, len(tiles))
    transforms = _tta_transforms(tta)
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
        rows = max(1, _CHUNK_ELEMENTS // max(1, width * num_classes))
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
            rsrc = _axis_source(y0 - margin, in_h, height)
            csrc = _axis_source(x0 - margin, in_w, width)
            img = stack[n]
            if isinstance(rsrc, slice) or isinstance(csrc, slice):
                # Slice first (a view), then gather: only the tile itself is copied.
                tile = img[rsrc][:, csrc] if isinstance(rsrc, slice) else img[:, csrc][rsrc]
            else:
                tile = img[np.ix_(rsrc, csrc)]
            np.multiply(tile, scale, out=buf[k], casting="unsafe")
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


# --------------------------------------------------------------------------- files

#: What :func:`predict_files` writes for an input named ``NAME`` (``_mask.tif`` for stacks,
#: ``_cells.tif`` with ``cells``). A folder listing skips files that end like this when
#: ``NAME`` is another image in the same listing.
OUTPUT_ENDINGS = ("_prob.tif", "_mask.png", "_mask.tif", "_overlay.png", "_cells.tif")
#: Long side (px) of the overlay PNG; larger images are shown at every k-th pixel.
OVERLAY_MAX_SIDE = 2048


def load_model_file(path: Any, *, image_model: bool = True) -> keras.Model:
    """Load a ``.keras`` file (compile-free) with errors that name the file.

    Args:
        path: the ``.keras`` file, or ``"pretrained:NAME"`` for a model of
            :func:`zf_unet.hub.list_pretrained` (sha256-checked).
        image_model: also check that it is a single-input image model that
            :func:`predict_tiled` can use (see :func:`model_geometry`).

    Raises:
        DataError: missing file, a file Keras cannot load (not a ``.keras`` archive, another
            library's model, a corrupt download), or not an image model.
    """
    from pathlib import Path

    from zf_unet.errors import DataError

    text = str(path)
    if text.startswith("pretrained:"):
        from zf_unet.hub import load_pretrained

        model = load_pretrained(text[len("pretrained:"):])
    else:
        p = Path(text)
        if not p.exists():
            raise DataError(f"{p}: model file not found (expected a .keras file)")
        if not p.is_file():
            raise DataError(f"{p}: is a folder; expected a .keras model file")
        if p.suffix.lower() != ".keras":
            raise DataError(f"{p}: expected a .keras model file (Keras 3 format), got "
                            f"{p.suffix or 'no extension'!r}")
        try:
            model = keras.saving.load_model(p, compile=False)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a bad model file
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise DataError(f"{p}: cannot load as a Keras model; expected a .keras file saved "
                            f"by model.save() ({type(exc).__name__}: {first})") from None
    if image_model:
        try:
            model_geometry(model)
        except ValueError as exc:
            raise DataError(f"{text}: not an image segmentation model that zf_unet can use: "
                            f"{exc}") from None
    return model


def _output_name(path: Any, shared: bool) -> str:
    """Base name of ``path``'s outputs: its stem, or ``stem_ext`` (``a_png``) when several
    inputs share the stem."""
    return f"{path.stem}_{path.suffix.lstrip('.').lower()}" if shared else path.stem


def _list_folder(folder: Any) -> list:
    """The images of ``folder`` that :func:`predict_files` predicts (sorted by name): hidden
    files and files that look like its own outputs of another listed image are skipped."""
    from zf_unet.data.io import IMAGE_EXTENSIONS
    from zf_unet.errors import DataError

    found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS
                   and not f.name.startswith(".") and f.is_file())
    if not found:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    names = {f.stem.casefold() for f in found}
    names |= {_output_name(f, True).casefold() for f in found}
    kept, skipped = [], []
    for f in found:
        low = f.name.casefold()
        ending = next((e for e in OUTPUT_ENDINGS if low.endswith(e)), None)
        if ending is not None and low[: -len(ending)] in names:
            skipped.append(f.name)
        else:
            kept.append(f)
    if skipped:
        import logging

        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        logging.getLogger("zf_unet").info("%s: skipped %d file(s) named like predict outputs "
                                          "of images in this folder (%s)", folder,
                                          len(skipped), shown)
    return kept


def _collect_inputs(inputs: list) -> list:
    """Input files: files as given, folders listed by :func:`_list_folder`; a file given
    twice (also through its folder) is predicted once."""
    from pathlib import Path

    from zf_unet.errors import DataError

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files, seen = [], set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _list_folder(p)
        elif p.is_file():
            found = [p]
        else:
            raise DataError(f"{p}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        raise DataError("inputs: no files given; expected image files or folders")
    return files


def _read_input(path: Any) -> np.ndarray:
    """An input of :func:`predict_files`: ``(H, W, C)`` image or ``(N, H, W, C)`` stack."""
    from zf_unet.data.io import read_image, read_stack

    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    arr = read_stack(path) if is_tiff else read_image(path)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _check_input(model: keras.Model, path: Any, arr: np.ndarray) -> None:
    """Raise a :class:`DataError` naming ``path`` if ``predict_tiled`` would refuse ``arr``."""
    from zf_unet.errors import DataError

    geom = model_geometry(model)
    try:
        stack, _ = _as_stack(arr, geom["channels"])
        _scale_for(stack.dtype)
        _check_finite(stack)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    check_float_range(stack, str(path))


def _plan_outputs(paths: list, stacks: list, out: Any, cells: bool, prob: bool = True) -> list:
    """``[[output paths of input i], ...]`` (``[prob?, mask, cells?, overlay]``); DataError if
    two inputs would share outputs."""
    from collections import Counter

    from zf_unet.errors import DataError

    stems = Counter(p.stem.casefold() for p in paths)
    names = [_output_name(p, stems[p.stem.casefold()] > 1) for p in paths]
    owner: dict = {}
    for p, name in zip(paths, names):
        other = owner.setdefault(name.casefold(), p)
        if other is not p:
            raise DataError(f"{other} and {p}: both would write {name}_*.* to {out}; expected "
                            "inputs with different names (rename one, or predict them into "
                            "different --out folders)")
    plans = []
    for name, stack in zip(names, stacks):
        files = [out / f"{name}_prob.tif"] if prob else []
        files.append(out / f"{name}_mask.{'tif' if stack else 'png'}")
        if cells:
            files.append(out / f"{name}_cells.tif")
        plans.append(files + [out / f"{name}_overlay.png"])
    return plans


def _check_outputs(plans: list, paths: list, out: Any, overwrite: bool) -> None:
    """Refuse (before any write) outputs that would replace an input, a folder, or, unless
    ``overwrite``, any existing file."""
    from zf_unet.errors import DataError, OutputExistsError

    inputs = {p.resolve() for p in paths}
    planned = [f for files in plans for f in files]
    clash = [f for f in planned if f.resolve() in inputs]
    if clash:
        raise DataError(f"{clash[0]}: is an input of this call and would be replaced by a "
                        "prediction; expected an --out folder that does not hold the inputs' "
                        "output names (or leave that file out)")
    folders = [f for f in planned if f.is_dir()]
    if folders:
        raise DataError(f"{folders[0]}: is a folder where predict writes a file; expected "
                        "another --out folder")
    existing = [f for f in planned if f.exists() or f.is_symlink()]
    if existing and not overwrite:
        shown = ", ".join(f.name for f in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise OutputExistsError(
            f"{out}: {len(existing)} output file(s) exist already ({shown}{more}); predict "
            "replaces files only when asked: pass --overwrite (overwrite=True) to replace "
            "them, or choose another --out folder"
        )


def _labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """``uint8`` labels of ``(..., H, W, K)`` probabilities, a few rows at a time (no full-size
    temporaries): 0/255 (``p > threshold``) for one class, the argmax for several."""
    k, width = probs.shape[-1], probs.shape[-2]
    labels = np.empty(probs.shape[:-1], np.uint8)
    flat_p, flat_l = probs.reshape(-1, width, k), labels.reshape(-1, width)
    rows = max(1, _CHUNK_ELEMENTS // max(1, width * k))
    for r in range(0, flat_p.shape[0], rows):
        block = flat_p[r : r + rows]
        if k == 1:
            flat_l[r : r + rows] = (block[..., 0] > threshold) * np.uint8(255)
        else:
            flat_l[r : r + rows] = np.argmax(block, axis=-1)
    return labels


def _overlay_rgb(image: np.ndarray, labels: np.ndarray,
                 colors: np.ndarray | None = None) -> np.ndarray:
    """``uint8`` RGB overlay of an ``(H, W, C)`` image and its ``(H, W)`` labels, at every k-th
    pixel so that the long side is at most ``OVERLAY_MAX_SIDE``. Without ``colors`` (binary
    models) label 0 is tinted red; with ``colors`` (``(K, 3)`` uint8, several classes) every
    pixel gets its class's colour and a legend strip naming the class ids is added below."""
    from zf_unet.plots import label_overlay, legend_strip, overlay

    step = max(1, math.ceil(max(labels.shape) / OVERLAY_MAX_SIDE))
    img, lab = image[::step, ::step], labels[::step, ::step]
    view = img[..., :3] if img.shape[-1] >= 3 else img[..., :1]  # RGB(A) or the first channel
    scaled = view.astype(np.float32) * np.float32(_scale_for(img.dtype))
    if colors is None:
        return (overlay(scaled, lab) * 255).astype(np.uint8)
    rgb = label_overlay(scaled, lab, colors)
    del scaled
    strip = legend_strip(colors, max(rgb.shape[1], 160))
    width = max(rgb.shape[1], strip.shape[1])
    out = np.full((rgb.shape[0] + strip.shape[0], width, 3), 255, np.uint8)
    out[: rgb.shape[0], : rgb.shape[1]] = rgb
    out[rgb.shape[0]:, : strip.shape[1]] = strip
    return out


def predict_files(model: keras.Model, inputs: list, out_dir: Any, *, tile_size: int = 256,
                  overlap: int = 64, tta: str | None = None, threshold: float = 0.5,
                  batch_size: int = 4, cells: float | None = None,
                  overwrite: bool = False, palette: Any = None, prob: bool = True) -> list:
    """Predict image files, folders of images and multi-page TIFF stacks into ``out_dir``.

    For every input ``NAME.ext`` it writes ``NAME_prob.tif`` (float32 probabilities,
    ``(H, W, K)`` or a stack), ``NAME_mask.png`` (labels; a binary model's mask is 0/255 with
    255 = class 1, ``p > threshold``, the ISBI convention; a stack gives ``NAME_mask.tif``)
    and ``NAME_overlay.png`` (first slice; images longer than ``OVERLAY_MAX_SIDE`` = 2048 px
    are shown at every k-th pixel). A binary model's overlay tints label 0 red; a model with
    K > 1 classes (mask = argmax class ids, uint8) blends every pixel with its class's colour
    and adds a legend strip below naming the class ids with their colours. ``palette``
    chooses those colours (K > 1 only): a matplotlib colormap name (``"tab10"``) or hex
    colours (``"#ff0000,#00ff00,..."`` or a list), default ``tab10`` (``tab20`` above 10
    classes); see :func:`zf_unet.plots.class_colors`. ``prob=False`` skips
    ``NAME_prob.tif``. With ``cells`` (a seed threshold in (0, 1)), a binary model also gets
    ``NAME_cells.tif``: uint32 cell labels from ``zf_unet.watershed_cells`` (0 = none).
    Returns the list of written paths.

    Names: ``NAME`` is the file name without extension. When several inputs share it
    (``a.png`` and ``a.tif``), ``NAME`` keeps the extension: ``a_png_mask.png``,
    ``a_tif_mask.png``. Two inputs that would still share outputs (``a.png`` in two folders)
    are an error.

    Folders: every image file (``.png .tif .tiff .jpg .jpeg``, not hidden) is an input,
    except files named like predict's outputs of another image in the same folder
    (``X_prob.tif``, ``X_mask.png``, ``X_mask.tif``, ``X_overlay.png``, ``X_cells.tif`` when
    ``X.*`` is there too), so predicting into the input folder does not feed the results of
    an earlier run back in. A ground-truth ``X_mask.png`` next to ``X.png`` is skipped too
    (give it as a file to predict it).

    Nothing is overwritten unless asked: every input is read and checked (readable, channels,
    dtype, finite values, float images in [0, 1]), then the output names, all before the
    first write. An existing output file (an earlier run's result, a ground-truth mask) is
    an error unless ``overwrite=True``; an output that is an input of the same call is
    always an error. Each output file is replaced atomically.

    Raises:
        DataError: a missing, unreadable or unusable input (the message names the file), or
            two inputs with the same outputs.
        OutputExistsError: output files exist and ``overwrite`` is False (names them).
        ValueError: bad ``tile_size`` / ``overlap`` / ``tta`` / ``batch_size`` for the model,
            ``threshold`` not in (0, 1), ``cells`` outside (0, 1) or given for a
            multi-class model, or a bad ``palette`` (or one given for a binary model).
    """
    from pathlib import Path

    import tifffile
    from PIL import Image

    from zf_unet.errors import DataError
    from zf_unet.io_utils import atomic_path

    # Arguments first (cheap): tile size, overlap and TTA surface on a tiny probe.
    geom = model_geometry(model)
    predict_tiled(model, np.zeros((1, 1, geom["channels"]), np.float32), tile_size=tile_size,
                  overlap=overlap, tta=tta, batch_size=batch_size)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}: expected a probability between 0 and 1 "
                         "(the mask is p > threshold, so other values give a constant mask)")
    if cells is not None:
        from zf_unet.postprocess import watershed_cells

        if geom["num_classes"] != 1:
            raise ValueError(f"cells: cell labels need a binary (1-class) model, this one has "
                             f"{geom['num_classes']} classes")
        watershed_cells(np.zeros((2, 2), np.float32), seed_threshold=cells)  # checks the value
    colors = None
    if geom["num_classes"] > 1:
        from zf_unet.plots import class_colors

        colors = class_colors(geom["num_classes"], palette)
    elif palette is not None:
        raise ValueError("palette: colours the classes of a multi-class model; a binary "
                         "model's overlay tints class 0 red (leave --palette out)")
    # Then every input, then the outputs: all before anything is written.
    paths = _collect_inputs(inputs)
    stacks = []
    for path in paths:
        arr = _read_input(path)
        _check_input(model, path, arr)
        stacks.append(arr.ndim == 4)
        del arr
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; expected an output folder")
    plans = _plan_outputs(paths, stacks, out, cells is not None, bool(prob))
    _check_outputs(plans, paths, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, stack, files in zip(paths, stacks, plans):
        arr = _read_input(path)
        probs = predict_tiled(model, arr, tile_size=tile_size, overlap=overlap, tta=tta,
                              batch_size=batch_size)
        labels = _labels(probs, threshold)
        files = list(files)
        if prob:
            prob_path = files.pop(0)
            with atomic_path(prob_path) as tmp:
                tifffile.imwrite(tmp, probs, photometric="minisblack")
            written.append(prob_path)
        mask_path, ov_path = files[0], files[-1]
        with atomic_path(mask_path) as tmp:
            if stack:
                tifffile.imwrite(tmp, labels, photometric="minisblack")
            else:
                Image.fromarray(labels).save(tmp, format="PNG")
        written.append(mask_path)
        if cells is not None:
            maps = probs[..., 0] if stack else probs[None, ..., 0]
            del probs
            cell_labels = np.stack([watershed_cells(m, seed_threshold=cells) for m in maps])
            del maps
            with atomic_path(files[1]) as tmp:
                tifffile.imwrite(tmp, (cell_labels if stack else cell_labels[0]).astype(
                    np.uint32, copy=False), photometric="minisblack")
            written.append(files[1])
            del cell_labels
        else:
            del probs
        rgb = _overlay_rgb(arr[0] if stack else arr, labels[0] if stack else labels, colors)
        with atomic_path(ov_path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        written.append(ov_path)
        del arr, labels, rgb
    return written
