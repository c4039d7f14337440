"""What the tiler, the serving export and model-file loading need to know about a model.

``model_geometry(model)`` measures it once (cached per model) and returns a frozen
:class:`ModelGeometry`: how many times the model downsamples (the divisor between accepted
input sizes), the context margin of ``padding="valid"`` models, a fixed input size if it has
one, and its input channels and number of classes. The helpers on :class:`ModelGeometry`
work one spatial axis at a time.

Image models take ``(B, H, W, C)``; volume models take ``(B, D, H, W, C)`` (3 spatial axes,
``padding="same"`` only) and may downsample each axis by its own factor (e.g.
``MaxPooling3D(pool_size=(1, 2, 2))``): their per-axis divisors are ``divisors``.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Iterator, Sequence

import keras
import numpy as np

__all__ = ["ModelGeometry", "axis_names", "model_geometry", "output_size", "valid_input_sizes"]

_GEOMETRY_CACHE: "weakref.WeakKeyDictionary[Any, ModelGeometry]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class ModelGeometry:
    """The tiling geometry of an image model (all plain Python values).

    - ``depth``: resolution levels = number of stride-2 downsamplings + 1.
    - ``divisor``: product of the downsampling strides (``2**(depth-1)`` for a U-Net); the
      step between accepted input sizes.
    - ``margin``: context pixels lost on each side (0 for ``padding="same"``; for
      ``padding="valid"`` measured as ``(input - output) / 2`` on the model itself).
    - ``padding``: ``"same"`` or ``"valid"``.
    - ``min_input``: the smallest accepted input side; accepted sides are
      ``min_input + k * divisor``.
    - ``fixed_size``: the spatial input size ``(H, W)`` when it is fixed (then only that size
      is accepted), else ``None``.
    - ``channels``: input channels; ``num_classes``: output channels.
    - ``divisors``: volume models only: the divisor of each spatial axis ``(D, H, W)``, e.g.
      ``(1, 4, 4)`` for two ``(1, 2, 2)`` poolings; ``None`` for image models (both axes use
      ``divisor``). For volume models ``divisor`` is ``max(divisors)`` (the in-plane divisor of
      a U-Net that pools only in-plane), ``min_input`` is ``divisor`` and ``depth`` counts
      every downsampling layer, whatever axes it pools; use the per-axis helpers
      (:attr:`axis_divisors`, :attr:`min_inputs`) for tiling.

    ``geom["margin"]`` and ``dict(geom)`` work as with the dict it replaces; ``divisors`` is a
    key only for volume models (image-model dicts keep their 8 keys).
    """

    depth: int
    divisor: int
    margin: int
    padding: str
    min_input: int
    fixed_size: tuple[int, ...] | None
    channels: int
    num_classes: int
    divisors: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ dict compatibility
    def __getitem__(self, key: str) -> Any:
        """The field ``key`` (``geom["margin"]``); ``KeyError`` for other names."""
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        """The field names, in declaration order (``divisors`` only when set)."""
        return tuple(f.name for f in dataclasses.fields(self)
                     if f.name != "divisors" or self.divisors is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def as_dict(self) -> dict[str, Any]:
        """The fields as a new ``dict`` (field order; ``fixed_size`` stays a tuple)."""
        return {k: getattr(self, k) for k in self.keys()}

    # ------------------------------------------------------------------ per-axis helpers
    @property
    def spatial_axes(self) -> int:
        """Number of spatial axes: 2 (height, width) for image models, 3 (depth, height,
        width) for volume models."""
        if self.divisors is not None:
            return len(self.divisors)
        return 2 if self.fixed_size is None else len(self.fixed_size)

    @property
    def axis_divisors(self) -> tuple[int, ...]:
        """The step between accepted input sizes, per spatial axis."""
        if self.divisors is not None:
            return tuple(self.divisors)
        return (self.divisor,) * self.spatial_axes

    @property
    def min_inputs(self) -> tuple[int, ...]:
        """The smallest accepted input per spatial axis (the fixed size if there is one)."""
        if self.fixed_size is not None:
            return tuple(self.fixed_size)
        if self.divisors is not None:  # volume models: padding "same", margin 0
            return tuple(self.divisors)
        return (self.min_input,) * self.spatial_axes

    @property
    def min_output(self) -> int:
        """Output side of the smallest accepted input: ``min_input - 2 * margin``."""
        return self.min_input - 2 * self.margin

    @property
    def min_outputs(self) -> tuple[int, ...]:
        """:attr:`min_output` per spatial axis."""
        return tuple(s - 2 * self.margin for s in self.min_inputs)

    def max_output_tile(self, tile_size: int | Sequence[int]) -> tuple[int, ...]:
        """Largest output tile per spatial axis whose input tile is <= ``tile_size`` (an int
        for every axis, or one per spatial axis); the fixed size minus the margins for
        fixed-size models. ``ValueError`` when ``tile_size`` is below the smallest accepted
        input along some axis, or has the wrong number of entries."""
        if self.fixed_size is not None:
            return tuple(f - 2 * self.margin for f in self.fixed_size)
        nd = self.spatial_axes
        if isinstance(tile_size, (int, np.integer)):
            sizes, per_axis = (int(tile_size),) * nd, False
        else:
            sizes, per_axis = tuple(int(t) for t in tile_size), True
            if len(sizes) != nd:
                raise ValueError(
                    f"tile_size={tuple(tile_size)} has {len(sizes)} entries but this model "
                    f"has {nd} spatial axes {axis_names(nd)}; pass one int or {nd} ints"
                )
        out = []
        for a, (t, s0, div) in enumerate(zip(sizes, self.min_inputs, self.axis_divisors)):
            if t < s0:
                where = f" along {axis_names(nd)[a]}" if per_axis or nd != 2 else ""
                raise ValueError(
                    f"tile_size={t} is too small for this model{where}: its smallest accepted "
                    f"input is {s0} px (accepted sizes are {s0} + k * {div})"
                )
            out.append(s0 + (t - s0) // div * div - 2 * self.margin)
        return tuple(out)

    def fit_output_tile(self, length: int, t_max: int, axis: int = 0) -> int:
        """Output tile for spatial ``axis`` of ``length`` px: ``t_max`` (the largest allowed),
        or the smallest accepted one that covers the whole axis when that is smaller."""
        if self.fixed_size is not None:
            return t_max
        out0, div = self.min_outputs[axis], self.axis_divisors[axis]
        need = out0 + max(0, math.ceil((length - out0) / div)) * div
        return min(t_max, need)


def axis_names(spatial_axes: int) -> tuple[str, ...]:
    """Names of the spatial axes: ``("height", "width")`` or ``("depth", "height", "width")``."""
    return ("depth", "height", "width")[-spatial_axes:] if spatial_axes <= 3 else tuple(
        f"axis {i}" for i in range(spatial_axes))


def output_size(size: int, depth: int, padding: str = "same") -> int | None:
    """Output side length for an input side ``size``; ``None`` if the U-Net cannot process it.

    ``same``: ``size`` must be divisible by ``2**(depth-1)`` (output = input).
    ``valid``: every convolution trims 2 px and every pooled map must have an even size
    (the paper's 572 -> 388 at depth 5).
    """
    if size is None or size < 1:
        return None
    if padding == "same":
        return size if size % (2 ** (depth - 1)) == 0 else None
    s = size
    for _ in range(depth - 1):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth - 1):
        s = 2 * s - 4
    return s if s > 0 else None


def valid_input_sizes(depth: int, padding: str = "same", near: int = 256, count: int = 1) -> list[int]:
    """The ``count`` valid input sizes nearest to ``near`` below it and above it (sorted)."""
    below, above = [], []
    s = near
    while s >= 1 and len(below) < count:
        if output_size(s, depth, padding):
            below.append(s)
        s -= 1
    s = near + 1
    while len(above) < count and s < near + 4096 * 2**depth:
        if output_size(s, depth, padding):
            above.append(s)
        s += 1
    return sorted(set(below + above))


# --------------------------------------------------------------------------------------------
# Measuring a model
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


def _probe_output_size(model: keras.Model, size: tuple[int, ...], channels: int
                       ) -> tuple[int, ...]:
    """Spatial output size for a ``size`` input (2 or 3 spatial axes): symbolic first, a
    real forward pass as fallback."""
    shape = (1, *size, channels)
    try:
        out = model.compute_output_shape(shape)
        if all(d is not None for d in out[1:-1]):
            return tuple(int(d) for d in out[1:-1])
    except Exception:  # noqa: BLE001 - some layers cannot compute shapes symbolically
        pass
    y = model(np.zeros(shape, dtype="float32"), training=False)
    return tuple(int(d) for d in y.shape[1:-1])


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else (int(v[0]),) * n
    return (int(v),) * n


def _volume_downsampling(model: keras.Model) -> tuple[tuple[int, int, int], int, list[str]]:
    """``(per-axis divisors (D, H, W), number of downsampling layers, names of valid-padding
    Conv3D layers wider than 1)`` of a volume model (nested models included)."""
    divisors, n_down, valid = [1, 1, 1], 0, []
    for layer in _iter_layers(model):
        if "Transpose" in type(layer).__name__:
            continue
        strides = None
        if isinstance(layer, (keras.layers.MaxPooling3D, keras.layers.AveragePooling3D)):
            strides = _ntuple(layer.strides if layer.strides is not None else layer.pool_size,
                              3)
        elif isinstance(layer, keras.layers.Conv3D):
            strides = _ntuple(layer.strides, 3)
            if layer.padding == "valid" and max(_ntuple(layer.kernel_size, 3)) > 1:
                valid.append(layer.name)
        if strides is not None and max(strides) > 1:
            divisors = [d * s for d, s in zip(divisors, strides)]
            n_down += 1
    return (divisors[0], divisors[1], divisors[2]), n_down, valid


def _volume_geometry(model: keras.Model, in_shape: tuple, out_shape: tuple, channels: int,
                     num_classes: int) -> ModelGeometry:
    """The geometry of a ``(B, D, H, W, C)`` model (padding "same" only)."""
    divisors, n_down, valid = _volume_downsampling(model)
    if valid:
        raise ValueError(
            "3-D (volume) models must use padding='same' (output = input); layer(s) "
            f"{', '.join(valid[:3])} use padding='valid'"
        )
    fixed = tuple(_static_dim(d) for d in in_shape[1:4])
    if all(d is not None for d in fixed):
        probe = fixed
    elif any(d is not None for d in fixed):
        raise ValueError(
            f"model input_shape={in_shape!r} fixes only some spatial sides; use "
            "(None, None, None, C) or a fully fixed size"
        )
    else:
        probe = tuple(d * max(1, math.ceil(8 / d)) for d in divisors)
    out = _probe_output_size(model, probe, channels)
    if tuple(out) != tuple(probe):
        raise ValueError(
            f"model maps a {probe} volume to {out}; predict_tiled needs output = input for "
            "3-D models (padding='same')"
        )
    divisor = max(divisors)
    return ModelGeometry(
        depth=n_down + 1, divisor=divisor, margin=0, padding="same",
        min_input=min(fixed) if probe is fixed else divisor,
        fixed_size=fixed if probe is fixed else None, channels=channels,
        num_classes=num_classes, divisors=divisors,
    )


def _downsampling(model: keras.Model) -> tuple[int, int, bool]:
    """``(divisor, number of downsamplings, has a valid-padding conv wider than 1)``."""
    divisor, n_down, valid_conv = 1, 0, False
    if any(type(layer).__name__ == "BackbonePreprocessing" for layer in _iter_layers(model)):
        # A model on a pretrained encoder (zf_unet.models.backbones): 5 stride-2 steps; its
        # padded "valid" convolutions and strided shortcuts would miscount.
        return 32, 5, False
    for layer in _iter_layers(model):
        if "Transpose" in type(layer).__name__:
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
    return divisor, n_down, valid_conv


def _free_size_geometry(model: keras.Model, depth: int, divisor: int, valid_conv: bool,
                        channels: int) -> tuple[int, str, int]:
    """``(margin, padding, min_input)`` of a model that takes any input size."""
    if valid_conv:
        s0 = next((s for s in range(1, 64 * divisor + 4096) if output_size(s, depth, "valid")),
                  None)
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
        return margins.pop(), "valid", s0
    s = divisor * max(1, math.ceil(16 / divisor))
    oh, ow = _probe_output_size(model, (s, s), channels)
    if (oh, ow) != (s, s):
        raise ValueError(
            f"model maps a {s}x{s} input to {oh}x{ow}, but it has no valid-padding "
            "convolution; predict_tiled needs output = input - 2 * margin"
        )
    return 0, "same", divisor


def model_geometry(model: keras.Model) -> ModelGeometry:
    """What the tiler needs to know about ``model``, as a frozen :class:`ModelGeometry`
    (measured once per model and cached).

    Raises:
        ValueError: ``model`` is not a ``keras.Model``, not a single-input image / volume
            model, a volume model with ``padding="valid"`` convolutions, or its
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
        return cached

    in_shape = model.input_shape
    out_shape = model.output_shape
    if isinstance(in_shape, list) or len(in_shape) not in (4, 5):
        raise ValueError(
            f"model must take one (batch, H, W, C) image input or one (batch, D, H, W, C) "
            f"volume input, got input_shape={in_shape!r}"
        )
    if isinstance(out_shape, list) or len(out_shape) != len(in_shape):
        expect = "(batch, H, W, K)" if len(in_shape) == 4 else "(batch, D, H, W, K)"
        raise ValueError(
            f"model must have one {expect} output, got output_shape={out_shape!r}"
        )
    channels = _static_dim(in_shape[-1])
    num_classes = _static_dim(out_shape[-1])
    if channels is None or num_classes is None:
        raise ValueError(
            f"model needs static channel counts, got input_shape={in_shape!r}, "
            f"output_shape={out_shape!r}"
        )
    if len(in_shape) == 5:
        geom = _volume_geometry(model, in_shape, out_shape, channels, num_classes)
        try:
            _GEOMETRY_CACHE[model] = geom
        except TypeError:  # pragma: no cover
            pass
        return geom
    divisor, n_down, valid_conv = _downsampling(model)
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
        geom = ModelGeometry(
            depth=depth, divisor=divisor, margin=dh // 2, padding="valid" if dh else "same",
            min_input=min(fixed), fixed_size=fixed, channels=channels, num_classes=num_classes,
        )
    elif fixed[0] is not None or fixed[1] is not None:
        raise ValueError(
            f"model input_shape={in_shape!r} fixes only one spatial side; use (None, None, C) "
            "or a fully fixed size"
        )
    else:
        margin, padding, min_input = _free_size_geometry(model, depth, divisor, valid_conv,
                                                         channels)
        geom = ModelGeometry(
            depth=depth, divisor=divisor, margin=margin, padding=padding, min_input=min_input,
            fixed_size=None, channels=channels, num_classes=num_classes,
        )
    try:
        _GEOMETRY_CACHE[model] = geom
    except TypeError:  # pragma: no cover
        pass
    return geom
