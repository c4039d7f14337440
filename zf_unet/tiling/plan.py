"""The overlap-tile plan (Ronneberger et al. 2015, Fig. 2), in NumPy and TensorFlow side by side.

:class:`TilePlan` holds the static choices for one model (its geometry, the largest output
tile that ``tile_size`` allows, the overlap and the blend window) and does the arithmetic of
tiling one spatial axis at a time (images have 2 spatial axes, volumes 3; ``tile_size`` and
``overlap`` are an int for every axis or one per axis, and every per-axis method takes the
spatial ``axis``):

- tile size fitting: the largest allowed output tile, or the smallest accepted one that
  covers a short axis (:meth:`~TilePlan.output_tile`);
- tile starts: the fewest tiles ``n`` whose overlap is at least ``overlap``, evenly spread
  (``round(linspace(0, L - tile, n))``), or, when the same ``n`` tiles fit, on the model's
  pooling grid (multiples of its divisor but the last; a tile then computes what a pass
  over the whole image computes away from its edges); one centred tile when ``L <= tile``
  (:meth:`~TilePlan.tile_starts`);
- the 1-D blend windows, the tile weight (their outer product over the axes) and the separable
  normaliser, ``1 / sum of the windows of all tiles covering a position``
  (:meth:`~TilePlan.window`, :meth:`~TilePlan.tile_weights`, :meth:`~TilePlan.normaliser`,
  :meth:`~TilePlan.outer_normaliser`);
- mirrored tile reading: input positions ``start - margin .. start + tile + margin`` mapped
  into the image by :func:`zf_unet.pixels.mirror_index` (:meth:`~TilePlan.input_index`).

Every method ``f`` has its TensorFlow twin ``f_tf`` right next to it (int32 / float64 tensors,
dynamic lengths); ``tests/test_tiling.py`` checks that the two agree. The NumPy execution
runs in :func:`zf_unet.inference.predict_tiled`; the TensorFlow execution (the serving graph
of :mod:`zf_unet.export`) is :meth:`TilePlan.predict_tf` / :meth:`TilePlan.predict_untiled_tf`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np

from zf_unet.checks import check_int, check_tiling
from zf_unet.pixels import mirror_index, mirror_index_tf, scale_to_unit_tf
from zf_unet.models.geometry import ModelGeometry, axis_names
from zf_unet.registry import BLEND_MODES
from zf_unet.tiling.windows import window, window_tf
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("in-graph tiling (the tiled SavedModel)")

# In-graph tiling adds this many output voxels (rounded to whole model batches) into the
# canvas per step: TensorFlow copies a loop-carried canvas at every scatter, so one scatter
# per model batch made a 4096² SavedModel pass ~15 % slower than predict_tiled.
SCATTER_VOXELS = 1 << 21

__all__ = ["TilePlan", "check_tile_args"]

def _ceil_div_tf(a: tf.Tensor, b: Any) -> tf.Tensor:
    """ceil(a / b) for int32 tensors of any sign and positive ``b``."""
    return -tf.math.floordiv(-a, b)


def check_tile_args(tile_size: Any, overlap: Any, batch_size: Any, tiled: bool = True
                    ) -> tuple[int | tuple[int, ...], int | tuple[int, ...], int]:
    """``(tile_size, overlap, batch_size)`` checked: ``tile_size`` and ``overlap`` each an int
    (every spatial axis) or a tuple with one int per spatial axis (e.g. ``(16, 256, 256)`` for
    volumes; ints stay ints, sequences become tuples), ``tile_size`` entries >= 1, ``overlap``
    entries >= 0 and (when ``tiled``) smaller than ``tile_size`` on every axis;
    ``batch_size`` >= 1. ``ValueError`` otherwise. Whether a tuple has as many entries as the
    model has spatial axes is checked by :meth:`TilePlan.for_geometry`."""
    def _is_seq(v: Any) -> bool:
        return isinstance(v, (list, tuple, np.ndarray))

    if not _is_seq(tile_size) and not _is_seq(overlap):
        return check_tiling(tile_size, overlap, batch_size, tiled)
    batch_size = check_int("batch_size", batch_size, 1)
    checked = []
    for name, v, lo in (("tile_size", tile_size, 1), ("overlap", overlap, 0)):
        if _is_seq(v):
            if len(v) not in (2, 3):
                raise ValueError(f"{name} must be an int or one int per spatial axis ((H, W) or "
                                 f"(D, H, W)), got {tuple(v)!r}")
            checked.append(tuple(check_int(name, x, lo) for x in v))
        else:
            checked.append(check_int(name, v, lo))
    tile_size, overlap = checked
    if _is_seq(tile_size) and _is_seq(overlap) and len(tile_size) != len(overlap):
        raise ValueError(f"tile_size={tile_size} and overlap={overlap} must have the same "
                         "number of axes")
    if tiled:
        n = len(tile_size) if _is_seq(tile_size) else len(overlap)
        ts = tile_size if _is_seq(tile_size) else (tile_size,) * n
        ov = overlap if _is_seq(overlap) else (overlap,) * n
        for a, (t, o) in enumerate(zip(ts, ov)):
            if o >= t:
                raise ValueError(f"overlap={overlap} must be smaller than tile_size={tile_size} "
                                 f"on every axis (axis {a}: {o} >= {t})")
    return tile_size, overlap, batch_size


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Static tiling choices for one model; see the module docstring.

    Build it with :meth:`for_geometry`. ``t_max`` is the largest output tile per spatial axis
    (``None``: untiled, one tile as large as the image needs). ``overlap`` is an int (every
    axis) or one int per spatial axis; the per-axis methods take ``axis`` (0 = the first
    spatial axis: height for images, depth for volumes).
    """

    geometry: ModelGeometry
    overlap: int | tuple[int, ...]
    blend: str
    tile_size: int | tuple[int, ...] | None
    t_max: tuple[int, ...] | None

    @classmethod
    def for_geometry(cls, geometry: ModelGeometry, tile_size: int | Sequence[int] | None,
                     overlap: int | Sequence[int], blend: str = "gaussian") -> "TilePlan":
        """The plan for a model of ``geometry``: input tiles of at most ``tile_size`` px
        (``None``: untiled), ``overlap`` output px, a registered ``blend`` window.
        ``tile_size`` / ``overlap``: an int for every spatial axis or one per axis.

        Raises:
            ValueError: unknown ``blend``; ``tile_size`` below the smallest accepted input;
                a per-axis ``tile_size`` / ``overlap`` with the wrong number of entries.
        """
        BLEND_MODES.check(blend, "blend")
        nd = geometry.spatial_axes
        if not isinstance(overlap, (int, np.integer)):
            overlap = tuple(int(o) for o in overlap)
            if len(overlap) != nd:
                raise ValueError(
                    f"overlap={overlap} has {len(overlap)} entries but this model has {nd} "
                    f"spatial axes {axis_names(nd)}; pass one int or {nd} ints"
                )
        else:
            overlap = int(overlap)
        if tile_size is not None and not isinstance(tile_size, (int, np.integer)):
            tile_size = tuple(int(t) for t in tile_size)
        t_max = None if tile_size is None else geometry.max_output_tile(tile_size)
        if t_max is not None and min(t_max) < 1:  # pragma: no cover - guarded by geometry
            raise ValueError(f"tile_size={tile_size} leaves no output pixels for this model")
        return cls(geometry, overlap, blend, tile_size, t_max)

    @property
    def margin(self) -> int:
        """Context pixels read around an output tile on each side."""
        return self.geometry.margin

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for images, 3 for volumes)."""
        return self.geometry.spatial_axes

    def overlap_at(self, axis: int) -> int:
        """The overlap along spatial ``axis``."""
        return self.overlap if isinstance(self.overlap, int) else self.overlap[axis]

    # ------------------------------------------------------------------ tile size fitting
    def output_tile(self, length: int, axis: int) -> int:
        """Output tile along ``axis`` for an axis of ``length`` px."""
        if self.t_max is None:
            return self.geometry.fit_output_tile(length, sys.maxsize, axis)
        return self.geometry.fit_output_tile(length, self.t_max[axis], axis)

    def output_tile_tf(self, length: tf.Tensor, axis: int) -> tf.Tensor:
        """:meth:`output_tile` for a dynamic int32 ``length``: int32 scalar."""
        g = self.geometry
        if g.fixed_size is not None:
            return tf.constant(self.t_max[axis], tf.int32)
        out0, div = g.min_outputs[axis], g.axis_divisors[axis]
        need = out0 + tf.maximum(0, _ceil_div_tf(length - out0, div)) * div
        if self.t_max is None:
            return need
        return tf.minimum(tf.constant(self.t_max[axis], tf.int32), need)

    def check_overlap(self, lengths: Sequence[int] | None = None,
                      tiles: Sequence[int] | None = None) -> None:
        """``ValueError`` unless ``overlap`` is smaller than the output tile: along every
        axis split into several ``tiles`` (``lengths`` px long), or, without them, for the
        largest tile of every axis (what a graph for images of any size needs)."""
        names = axis_names(self.ndim)
        if lengths is None or tiles is None:
            if self.t_max is None:
                return
            if isinstance(self.overlap, int):
                if self.overlap >= min(self.t_max):
                    raise ValueError(
                        f"overlap={self.overlap} must be smaller than the output tile "
                        f"({min(self.t_max)} px after fitting tile_size={self.tile_size} to "
                        "the model)"
                    )
                return
            for a, t in enumerate(self.t_max):
                if self.overlap_at(a) >= t:
                    raise ValueError(
                        f"overlap={self.overlap} must be smaller than the output tile ({t} px "
                        f"along {names[a]} after fitting tile_size={self.tile_size} to the "
                        "model)"
                    )
            return
        for a, (name, length, tile) in enumerate(zip(names, lengths, tiles)):
            if length > tile and self.overlap_at(a) >= tile:
                raise ValueError(
                    f"overlap={self.overlap_at(a)} must be smaller than the output tile ({tile} "
                    f"px along {name} after fitting tile_size={self.tile_size} to the model)"
                )

    # ------------------------------------------------------------------ tile starts
    def tile_starts(self, length: int, tile: int, axis: int = 0) -> np.ndarray:
        """``(n,)`` int64 output tile starts along spatial ``axis`` of ``length`` px: the
        fewest tiles ``n`` whose overlap is at least ``overlap``, spread evenly. When the same
        ``n`` tiles can also start on multiples of the model's divisor along ``axis`` (its
        pooling grid; all but the last, which ends flush with the image), they do: such a tile
        computes what one pass over the whole image computes, away from the tile's edges."""
        if length <= tile:
            return np.array([-((tile - length) // 2)], dtype=np.int64)
        span, step = length - tile, tile - self.overlap_at(axis)
        n = math.ceil(span / step) + 1
        div = int(self.geometry.axis_divisors[axis])
        grid_step = step // div * div  # the longest step on the grid
        if div > 1 and grid_step > 0:
            units = -(-span // div)  # the grid points up to the first one >= span
            n_grid = -(-units * div // grid_step) + 1
            if n_grid <= n:
                k = np.round(np.linspace(0, units, n_grid)).astype(np.int64)
                starts = np.minimum(k * div, span)
                starts[-1] = span
                return np.unique(starts)
        return np.round(np.linspace(0, span, n)).astype(np.int64)

    def tile_starts_tf(self, length: tf.Tensor, tile: tf.Tensor, axis: int = 0) -> tf.Tensor:
        """:meth:`tile_starts` for dynamic int32 scalars: ``[n]`` int32 (float64 linspace,
        round half to even, last start exactly ``length - tile``, as NumPy)."""
        overlap = self.overlap_at(axis)
        div = int(self.geometry.axis_divisors[axis])

        def _single() -> tf.Tensor:
            return tf.reshape(-tf.math.floordiv(tile - length, 2), [1])

        def _even(end: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
            """round(linspace(0, end, n)) as float64, the last one exactly ``end``."""
            delta = tf.cast(end, tf.float64)
            step = delta / tf.cast(tf.maximum(n - 1, 1), tf.float64)
            y = tf.range(n, dtype=tf.float64) * step
            return tf.round(tf.concat([y[:-1], tf.reshape(delta, [1])], axis=0))

        def _spread() -> tf.Tensor:
            span = length - tile
            stride = tf.maximum(tile - overlap, 1)
            n = _ceil_div_tf(span, stride) + 1
            plain = lambda: tf.cast(_even(span, n), tf.int32)  # noqa: E731
            if div == 1:
                return plain()
            grid_step = tf.math.floordiv(stride, div) * div
            units = _ceil_div_tf(span, div)
            n_grid = _ceil_div_tf(units * div, tf.maximum(grid_step, 1)) + 1

            def on_grid() -> tf.Tensor:
                starts = tf.minimum(tf.cast(_even(units, n_grid), tf.int32) * div, span)
                starts = tf.concat([starts[:-1], tf.reshape(span, [1])], axis=0)
                return tf.unique(starts)[0]  # sorted: clipping may repeat the last one

            return tf.cond(tf.logical_and(grid_step > 0, n_grid <= n), on_grid, plain)

        return tf.cond(length <= tile, _single, _spread)

    # ------------------------------------------------------------------ windows
    def window(self, tile: int, axis: int = 0) -> np.ndarray:
        """``(tile,)`` float64 blend window along spatial ``axis``
        (:mod:`zf_unet.tiling.windows`)."""
        return window(tile, self.blend, self.overlap_at(axis))

    def window_tf(self, tile: tf.Tensor, axis: int = 0) -> tf.Tensor:
        """:meth:`window` for a dynamic int32 ``tile``: ``[tile]`` float64."""
        return window_tf(tile, self.blend, self.overlap_at(axis))

    @staticmethod
    def tile_weights(*windows: np.ndarray) -> np.ndarray:
        """``(t_0, ..., t_n, 1)`` float32 weight of one output tile: the outer product of the
        1-D float64 windows of its axes (``tile_weights(wy, wx)`` is ``(th, tw, 1)``)."""
        w = windows[0]
        for v in windows[1:]:
            w = w[..., None] * v
        return w.astype(np.float32)[..., None]

    @staticmethod
    def tile_weights_tf(*windows: tf.Tensor) -> tf.Tensor:
        """:meth:`tile_weights` in TensorFlow: ``[t_0, ..., t_n, 1]`` float32."""
        w = windows[0]
        for v in windows[1:]:
            w = w[..., None] * v
        return tf.cast(w, tf.float32)[..., None]

    @staticmethod
    def outer_normaliser(inverses: Sequence[np.ndarray]) -> np.ndarray:
        """float32 outer product of the per-axis normalisers (multiplied in float64 in axis
        order, as :meth:`outer_normaliser_tf`); with a slice of each for a block."""
        w = inverses[0]
        for v in inverses[1:]:
            w = w[..., None] * v
        return w.astype(np.float32)

    @staticmethod
    def outer_normaliser_tf(inverses: Sequence[tf.Tensor]) -> tf.Tensor:
        """:meth:`outer_normaliser` in TensorFlow: float32 ``[L_0, ..., L_n]``."""
        w = inverses[0]
        for v in inverses[1:]:
            w = w[..., None] * v
        return tf.cast(w, tf.float32)

    # ------------------------------------------------------------------ normaliser
    @staticmethod
    def normaliser(starts: np.ndarray, window: np.ndarray, length: int) -> np.ndarray:
        """``(length,)`` float64: 1 / the sum of ``window`` placed at every start (the tiles
        of one axis); the 2-D normaliser is the outer product of two of these."""
        acc = np.zeros(length, dtype=np.float64)
        for s in starts:
            a, b = max(0, s), min(length, s + len(window))
            acc[a:b] += window[a - s : b - s]
        return 1.0 / acc

    @staticmethod
    def normaliser_tf(starts: tf.Tensor, window: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        """:meth:`normaliser` in TensorFlow: ``[length]`` float64."""
        tile = tf.shape(window)[0]
        pos = starts[:, None] + tf.range(tile)[None, :]
        inside = (pos >= 0) & (pos < length)
        vals = tf.where(inside, tf.broadcast_to(window[None, :], tf.shape(pos)),
                        tf.zeros([], tf.float64))
        acc = tf.math.unsorted_segment_sum(
            tf.reshape(vals, [-1]), tf.reshape(tf.clip_by_value(pos, 0, length - 1), [-1]),
            length)
        return 1.0 / acc

    # ------------------------------------------------------------------ mirrored reading
    def input_index(self, start: int, tile: int, length: int) -> np.ndarray:
        """``(tile + 2 * margin,)`` int64 mirrored input positions of the output tile at
        ``start`` on an axis of ``length`` px."""
        m = self.margin
        return mirror_index(np.arange(start - m, start + tile + m, dtype=np.int64), length)

    def input_index_tf(self, starts: tf.Tensor, tile: tf.Tensor, length: tf.Tensor
                       ) -> tf.Tensor:
        """:meth:`input_index` for ``[B]`` int32 starts: ``[B, tile + 2 * margin]`` int32."""
        m = self.margin
        return mirror_index_tf(starts[:, None] - m + tf.range(tile + 2 * m)[None, :], length)

    def _input_source(self, start: int, tile: int, length: int) -> slice | np.ndarray:
        """A slice when the input tile lies inside the axis, else :meth:`input_index`."""
        a, b = start - self.margin, start + tile + self.margin
        if a >= 0 and b <= length:
            return slice(a, b)
        return self.input_index(start, tile, length)

    def read_tile(self, image: np.ndarray, starts: Sequence[int], tiles: Sequence[int]
                  ) -> np.ndarray:
        """The input of the output tile at ``starts`` (one per spatial axis, e.g.
        ``(y0, x0)`` or ``(z0, y0, x0)``) from an ``(*spatial, C)`` image or volume (any
        dtype, a memmap too): ``(t_0 + 2m, ..., C)``, a view when it lies inside, else a copy
        of just the tile with mirrored borders."""
        srcs = [self._input_source(int(s), t, image.shape[a])
                for a, (s, t) in enumerate(zip(starts, tiles))]
        # Slice first (a view), then gather the other axes at once: only the tile is copied.
        view = image[tuple(src if isinstance(src, slice) else slice(None) for src in srcs)]
        if all(isinstance(src, slice) for src in srcs):
            return view
        idx = [np.arange(view.shape[a]) if isinstance(src, slice) else src
               for a, src in enumerate(srcs)]
        return view[np.ix_(*idx)]

    # ------------------------------------------------------------------ TF execution
    def predict_untiled_tf(self, predict: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor
                           ) -> tf.Tensor:
        """The whole ``[N, *spatial, C]`` image or volume (uint8 / uint16 / float32) in one
        ``predict`` call (float32 ``[B, *spatial', C]`` in [0, 1] -> float32
        ``[B, *spatial'', K]``): each axis mirror-padded to the smallest accepted size,
        centred; output ``[N, *spatial, K]``."""
        nd = self.ndim
        shape = tf.shape(image)
        x, crop = image, [slice(None)]
        for a in range(nd):
            length = shape[1 + a]
            t = self.output_tile_tf(length, a)
            s0 = self.tile_starts_tf(length, t, a)[0]
            idx = self.input_index_tf(tf.reshape(s0, [1]), t, length)[0]
            x = tf.gather(x, idx, axis=1 + a)
            crop.append(slice(-s0, -s0 + length))
        probs = predict(scale_to_unit_tf(x))
        return probs[tuple(crop) + (slice(None),)]

    def predict_tf(self, predict: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor,
                   batch_size: int) -> tf.Tensor:
        """Overlap-tile prediction of an ``[N, *spatial, C]`` image ``[N, H, W, C]`` or volume
        ``[N, D, H, W, C]`` (uint8 / uint16 / float32) in TensorFlow ops: tiles read by
        mirrored indices (no padded copy), ``predict``-ed ``batch_size`` at a time in a
        ``tf.while_loop`` (float32 ``[B, *tile_in, C]`` in [0, 1] -> float32
        ``[B, *tile, K]``), blended into one float32 canvas (whole batches adding up to about
        ``SCATTER_VOXELS`` output voxels per update) and normalised.
        Returns float32 ``[N, *spatial, K]``: ``predict_tiled`` up to float32 rounding."""
        g = self.geometry
        nd = self.ndim
        k, bs = g.num_classes, batch_size
        shape = tf.shape(image)
        n_img = shape[0]
        lengths = [shape[1 + a] for a in range(nd)]
        tiles = [self.output_tile_tf(lengths[a], a) for a in range(nd)]
        starts = [self.tile_starts_tf(lengths[a], tiles[a], a) for a in range(nd)]
        counts = [tf.size(st) for st in starts]
        wins = [self.window_tf(tiles[a], a) for a in range(nd)]
        weight = self.tile_weights_tf(*wins)
        inverses = [self.normaliser_tf(starts[a], wins[a], lengths[a]) for a in range(nd)]
        norm = self.outer_normaliser_tf(inverses)[None, ..., None]

        # Canvas covering every tile: a single centred tile may stick out of a short axis.
        offs = [tf.maximum(0, -st[0]) for st in starts]
        canvas = tf.zeros(tf.stack([n_img] + [tf.maximum(lengths[a], tiles[a])
                                              for a in range(nd)] + [k]), tf.float32)
        per_image = counts[0]
        for c in counts[1:]:
            per_image = per_image * c
        n_tiles = n_img * per_image
        fixed = g.fixed_size

        def _grid_index(lead: tf.Tensor, axes: list) -> tf.Tensor:
            """``[B, l_0, ..., l_n, 1 + nd]`` gather / scatter indices: ``lead`` ``[B]`` and
            one ``[B, l_a]`` position array per axis, broadcast over the tile grid."""
            dims = [tf.shape(lead)[0]] + [tf.shape(ax)[1] for ax in axes]
            grid = tf.stack(dims)
            parts = [tf.broadcast_to(tf.reshape(lead, [-1] + [1] * nd), grid)]
            for a, ax in enumerate(axes):
                shp = [-1] + [1] * nd
                shp[1 + a] = tf.shape(ax)[1]
                parts.append(tf.broadcast_to(tf.reshape(ax, shp), grid))
            return tf.stack(parts, axis=-1)

        # tiles per canvas update: whole model batches, about SCATTER_VOXELS output voxels
        tile_voxels = 1
        for t in tiles:
            tile_voxels = tile_voxels * t
        group = bs * tf.maximum(1, SCATTER_VOXELS // (tile_voxels * bs))
        n_groups = _ceil_div_tf(n_tiles, group)

        def body(b: tf.Tensor, acc: tf.Tensor) -> tuple:
            t = tf.range(b * group, tf.minimum(n_tiles, (b + 1) * group))  # (n, a_0, ..., a_n)
            n = t // per_image
            rest = t % per_image
            tile_starts = [None] * nd
            for a in reversed(range(nd)):
                tile_starts[a] = tf.gather(starts[a], rest % counts[a])
                rest = rest // counts[a]
            src = [self.input_index_tf(tile_starts[a], tiles[a], lengths[a]) for a in range(nd)]
            xs = tf.gather_nd(image, _grid_index(n, src))
            n_here = tf.shape(t)[0]

            def call(j: tf.Tensor, out: tf.TensorArray) -> tuple:
                x = scale_to_unit_tf(xs[j * bs:(j + 1) * bs])
                if fixed is not None:
                    x = tf.ensure_shape(x, [None, *fixed, g.channels])
                return j + 1, out.write(j, predict(x) * weight)

            _, preds = tf.while_loop(
                lambda j, out: j < _ceil_div_tf(n_here, bs), call,
                (tf.constant(0), tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                                                infer_shape=False)),
                parallel_iterations=1)
            dst = [(tile_starts[a] + offs[a])[:, None] + tf.range(tiles[a])[None, :]
                   for a in range(nd)]
            return b + 1, tf.tensor_scatter_nd_add(acc, _grid_index(n, dst), preds.concat())

        _, canvas = tf.while_loop(
            lambda b, acc: b < n_groups, body, (tf.constant(0), canvas),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None] * (1 + nd) + [k])),
            parallel_iterations=1,
        )
        crop = tuple(slice(offs[a], offs[a] + lengths[a]) for a in range(nd))
        return canvas[(slice(None),) + crop + (slice(None),)] * norm
