"""What the tiler, the serving export and model-file loading need to know about a model.

``model_geometry(model)`` measures it once (cached per model) and returns a frozen
:class:`ModelGeometry`: how many times the model downsamples (the divisor between accepted
input sizes), the context margin of ``padding="valid"`` models, a fixed input size if it has
one, and its input channels and number of classes. The helpers on :class:`ModelGeometry`
work one spatial axis at a time, so a third spatial axis is an extension, not a rewrite.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Iterator

import keras
import numpy as np

__all__ = ["ModelGeometry", "model_geometry"]

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

    ``geom["margin"]`` and ``dict(geom)`` work as with the dict it replaces.
    """

    depth: int
    divisor: int
    margin: int
    padding: str
    min_input: int
    fixed_size: tuple[int, ...] | None
    channels: int
    num_classes: int

    # ------------------------------------------------------------------ dict compatibility
    def __getitem__(self, key: str) -> Any:
        """The field ``key`` (``geom["margin"]``); ``KeyError`` for other names."""
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        """The field names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def as_dict(self) -> dict[str, Any]:
        """The fields as a new ``dict`` (field order; ``fixed_size`` stays a tuple)."""
        return {k: getattr(self, k) for k in self.keys()}

    # ------------------------------------------------------------------ per-axis helpers
    @property
    def spatial_axes(self) -> int:
        """Number of spatial axes (2: height and width)."""
        return 2 if self.fixed_size is None else len(self.fixed_size)

    @property
    def min_output(self) -> int:
        """Output side of the smallest accepted input: ``min_input - 2 * margin``."""
        return self.min_input - 2 * self.margin

    def max_output_tile(self, tile_size: int) -> tuple[int, ...]:
        """Largest output tile per spatial axis whose input tile is <= ``tile_size`` (the
        fixed size minus the margins for fixed-size models). ``ValueError`` when
        ``tile_size`` is below the smallest accepted input."""
        if self.fixed_size is not None:
            return tuple(f - 2 * self.margin for f in self.fixed_size)
        s0, div = self.min_input, self.divisor
        if tile_size < s0:
            raise ValueError(
                f"tile_size={tile_size} is too small for this model: its smallest accepted "
                f"input is {s0} px (accepted sizes are {s0} + k * {div})"
            )
        t_out = s0 + (tile_size - s0) // div * div - 2 * self.margin
        return (t_out,) * self.spatial_axes

    def fit_output_tile(self, length: int, t_max: int) -> int:
        """Output tile for an axis of ``length`` px: ``t_max`` (the largest allowed), or the
        smallest accepted one that covers the whole axis when that is smaller."""
        if self.fixed_size is not None:
            return t_max
        out0, div = self.min_output, self.divisor
        need = out0 + max(0, math.ceil((length - out0) / div)) * div
        return min(t_max, need)


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


def _downsampling(model: keras.Model) -> tuple[int, int, bool]:
    """``(divisor, number of downsamplings, has a valid-padding conv wider than 1)``."""
    divisor, n_down, valid_conv = 1, 0, False
    if any(type(layer).__name__ == "BackbonePreprocessing" for layer in model.layers):
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
        from zf_unet.models.unet import output_size

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
        return cached

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
