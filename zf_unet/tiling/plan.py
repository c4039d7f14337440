"""The overlap-tile plan (Ronneberger et al. 2015, Fig. 2), in NumPy and TensorFlow side by side.

:class:`TilePlan` holds the static choices for one model (its geometry, the largest output
tile that ``tile_size`` allows, the overlap and the blend window) and does the arithmetic of
tiling one spatial axis at a time:

- tile size fitting: the largest allowed output tile, or the smallest accepted one that
  covers a short axis (:meth:`~TilePlan.output_tile`);
- tile starts: evenly spread, ``round(linspace(0, L - tile, n))`` with the fewest tiles ``n``
  whose overlap is at least ``overlap``; one centred tile when ``L <= tile``
  (:meth:`~TilePlan.tile_starts`);
- the 1-D blend windows and the separable normaliser, ``1 / sum of the windows of all tiles
  covering a position`` (:meth:`~TilePlan.window`, :meth:`~TilePlan.normaliser`);
- mirrored tile reading: input positions ``start - margin .. start + tile + margin`` mapped
  into the image by :func:`zf_unet.data.imageops.mirror_index` (:meth:`~TilePlan.input_index`).

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
import tensorflow as tf

from zf_unet.data.imageops import mirror_index, mirror_index_tf, scale_to_unit_tf
from zf_unet.models.geometry import ModelGeometry
from zf_unet.registry import BLEND_MODES
from zf_unet.tiling.windows import window, window_tf

__all__ = ["TilePlan"]

_AXIS_NAMES = ("height", "width", "depth")


def _ceil_div_tf(a: tf.Tensor, b: Any) -> tf.Tensor:
    """ceil(a / b) for int32 tensors of any sign and positive ``b``."""
    return -tf.math.floordiv(-a, b)


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Static tiling choices for one model; see the module docstring.

    Build it with :meth:`for_geometry`. ``t_max`` is the largest output tile per spatial axis
    (``None``: untiled, one tile as large as the image needs).
    """

    geometry: ModelGeometry
    overlap: int
    blend: str
    tile_size: int | None
    t_max: tuple[int, ...] | None

    @classmethod
    def for_geometry(cls, geometry: ModelGeometry, tile_size: int | None, overlap: int,
                     blend: str = "gaussian") -> "TilePlan":
        """The plan for a model of ``geometry``: input tiles of at most ``tile_size`` px
        (``None``: untiled), ``overlap`` output px, a registered ``blend`` window.

        Raises:
            ValueError: unknown ``blend``; ``tile_size`` below the smallest accepted input.
        """
        BLEND_MODES.check(blend, "blend")
        t_max = None if tile_size is None else geometry.max_output_tile(tile_size)
        if t_max is not None and min(t_max) < 1:  # pragma: no cover - guarded by geometry
            raise ValueError(f"tile_size={tile_size} leaves no output pixels for this model")
        return cls(geometry, overlap, blend, tile_size, t_max)

    @property
    def margin(self) -> int:
        """Context pixels read around an output tile on each side."""
        return self.geometry.margin

    # ------------------------------------------------------------------ tile size fitting
    def output_tile(self, length: int, axis: int) -> int:
        """Output tile along ``axis`` for an axis of ``length`` px."""
        if self.t_max is None:
            return self.geometry.fit_output_tile(length, sys.maxsize)
        return self.geometry.fit_output_tile(length, self.t_max[axis])

    def output_tile_tf(self, length: tf.Tensor, axis: int) -> tf.Tensor:
        """:meth:`output_tile` for a dynamic int32 ``length``: int32 scalar."""
        g = self.geometry
        if g.fixed_size is not None:
            return tf.constant(self.t_max[axis], tf.int32)
        need = g.min_output + tf.maximum(0, _ceil_div_tf(length - g.min_output, g.divisor)) \
            * g.divisor
        if self.t_max is None:
            return need
        return tf.minimum(tf.constant(self.t_max[axis], tf.int32), need)

    def check_overlap(self, lengths: Sequence[int] | None = None,
                      tiles: Sequence[int] | None = None) -> None:
        """``ValueError`` unless ``overlap`` is smaller than the output tile: along every
        axis split into several ``tiles`` (``lengths`` px long), or, without them, for the
        smallest largest tile (what a graph for images of any size needs)."""
        if lengths is None or tiles is None:
            if self.t_max is not None and self.overlap >= min(self.t_max):
                raise ValueError(
                    f"overlap={self.overlap} must be smaller than the output tile "
                    f"({min(self.t_max)} px after fitting tile_size={self.tile_size} to the "
                    "model)"
                )
            return
        for name, length, tile in zip(_AXIS_NAMES, lengths, tiles):
            if length > tile and self.overlap >= tile:
                raise ValueError(
                    f"overlap={self.overlap} must be smaller than the output tile ({tile} px "
                    f"along {name} after fitting tile_size={self.tile_size} to the model)"
                )

    # ------------------------------------------------------------------ tile starts
    def tile_starts(self, length: int, tile: int) -> np.ndarray:
        """``(n,)`` int64 output tile starts along an axis of ``length`` px."""
        if length <= tile:
            return np.array([-((tile - length) // 2)], dtype=np.int64)
        n = math.ceil((length - tile) / (tile - self.overlap)) + 1
        return np.round(np.linspace(0, length - tile, n)).astype(np.int64)

    def tile_starts_tf(self, length: tf.Tensor, tile: tf.Tensor) -> tf.Tensor:
        """:meth:`tile_starts` for dynamic int32 scalars: ``[n]`` int32 (float64 linspace,
        round half to even, last start exactly ``length - tile``, as NumPy)."""

        def _single() -> tf.Tensor:
            return tf.reshape(-tf.math.floordiv(tile - length, 2), [1])

        def _spread() -> tf.Tensor:
            stride = tf.maximum(tile - self.overlap, 1)
            n = _ceil_div_tf(length - tile, stride) + 1
            delta = tf.cast(length - tile, tf.float64)
            step = delta / tf.cast(tf.maximum(n - 1, 1), tf.float64)
            y = tf.range(n, dtype=tf.float64) * step
            y = tf.concat([y[:-1], tf.reshape(delta, [1])], axis=0)
            return tf.cast(tf.round(y), tf.int32)

        return tf.cond(length <= tile, _single, _spread)

    # ------------------------------------------------------------------ windows
    def window(self, tile: int) -> np.ndarray:
        """``(tile,)`` float64 blend window (:mod:`zf_unet.tiling.windows`)."""
        return window(tile, self.blend, self.overlap)

    def window_tf(self, tile: tf.Tensor) -> tf.Tensor:
        """:meth:`window` for a dynamic int32 ``tile``: ``[tile]`` float64."""
        return window_tf(tile, self.blend, self.overlap)

    @staticmethod
    def tile_weights(wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
        """``(th, tw, 1)`` float32 weight of one output tile: the outer product of the 1-D
        windows."""
        return (wy[:, None] * wx[None, :]).astype(np.float32)[:, :, None]

    @staticmethod
    def tile_weights_tf(wy: tf.Tensor, wx: tf.Tensor) -> tf.Tensor:
        """:meth:`tile_weights` in TensorFlow: ``[th, tw, 1]`` float32."""
        return tf.cast(wy[:, None] * wx[None, :], tf.float32)[:, :, None]

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
        """The ``(th + 2m, tw + 2m, C)`` input of the output tile at ``starts = (y0, x0)``
        from an ``(H, W, C)`` image (any dtype, a memmap too): a view when it lies inside,
        else a copy of just the tile with mirrored borders."""
        rsrc = self._input_source(int(starts[0]), tiles[0], image.shape[0])
        csrc = self._input_source(int(starts[1]), tiles[1], image.shape[1])
        if isinstance(rsrc, slice) or isinstance(csrc, slice):
            # Slice first (a view), then gather: only the tile itself is copied.
            return image[rsrc][:, csrc] if isinstance(rsrc, slice) else image[:, csrc][rsrc]
        return image[np.ix_(rsrc, csrc)]

    # ------------------------------------------------------------------ TF execution
    def predict_untiled_tf(self, predict: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor
                           ) -> tf.Tensor:
        """The whole ``[N, H, W, C]`` image (uint8 / uint16 / float32) in one ``predict``
        call (float32 ``[B, h, w, C]`` in [0, 1] -> float32 ``[B, h', w', K]``): each axis
        mirror-padded to the smallest accepted size, centred; output ``[N, H, W, K]``."""
        shape = tf.shape(image)
        h, w = shape[1], shape[2]
        th, tw = self.output_tile_tf(h, 0), self.output_tile_tf(w, 1)
        y0, x0 = self.tile_starts_tf(h, th)[0], self.tile_starts_tf(w, tw)[0]
        rows = self.input_index_tf(tf.reshape(y0, [1]), th, h)[0]
        cols = self.input_index_tf(tf.reshape(x0, [1]), tw, w)[0]
        x = tf.gather(tf.gather(image, rows, axis=1), cols, axis=2)
        probs = predict(scale_to_unit_tf(x))
        return probs[:, -y0 : -y0 + h, -x0 : -x0 + w, :]

    def predict_tf(self, predict: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor,
                   batch_size: int) -> tf.Tensor:
        """Overlap-tile prediction of an ``[N, H, W, C]`` image (uint8 / uint16 / float32)
        in TensorFlow ops: tiles read by mirrored indices (no padded copy), ``predict``-ed
        ``batch_size`` at a time in a ``tf.while_loop`` (float32 ``[B, h, w, C]`` in [0, 1]
        -> float32 ``[B, th, tw, K]``), blended into one float32 canvas and normalised.
        Returns float32 ``[N, H, W, K]``: ``predict_tiled`` up to float32 rounding."""
        g = self.geometry
        k, bs = g.num_classes, batch_size
        shape = tf.shape(image)
        n_img, h, w = shape[0], shape[1], shape[2]
        th, tw = self.output_tile_tf(h, 0), self.output_tile_tf(w, 1)
        ys, xs = self.tile_starts_tf(h, th), self.tile_starts_tf(w, tw)
        ny, nx = tf.size(ys), tf.size(xs)
        wy, wx = self.window_tf(th), self.window_tf(tw)
        weight2d = self.tile_weights_tf(wy, wx)
        inv_y, inv_x = self.normaliser_tf(ys, wy, h), self.normaliser_tf(xs, wx, w)
        norm2d = tf.cast(inv_y[:, None] * inv_x[None, :], tf.float32)[None, :, :, None]

        # Canvas covering every tile: a single centred tile may stick out of a short axis.
        off_y, off_x = tf.maximum(0, -ys[0]), tf.maximum(0, -xs[0])
        canvas = tf.zeros(tf.stack([n_img, tf.maximum(h, th), tf.maximum(w, tw), k]),
                          tf.float32)
        n_tiles = n_img * ny * nx
        n_batches = _ceil_div_tf(n_tiles, bs)
        fixed = g.fixed_size

        def body(b: tf.Tensor, acc: tf.Tensor) -> tuple:
            t = tf.range(b * bs, tf.minimum(n_tiles, (b + 1) * bs))  # tile order (n, y, x)
            n = t // (ny * nx)
            ty0 = tf.gather(ys, (t // nx) % ny)
            tx0 = tf.gather(xs, t % nx)
            rows = self.input_index_tf(ty0, th, h)  # [B, th + 2m]
            cols = self.input_index_tf(tx0, tw, w)  # [B, tw + 2m]
            grid = tf.stack([tf.size(t), tf.shape(rows)[1], tf.shape(cols)[1]])
            idx = tf.stack([
                tf.broadcast_to(n[:, None, None], grid),
                tf.broadcast_to(rows[:, :, None], grid),
                tf.broadcast_to(cols[:, None, :], grid),
            ], axis=-1)
            tiles = scale_to_unit_tf(tf.gather_nd(image, idx))
            if fixed is not None:
                tiles = tf.ensure_shape(tiles, [None, fixed[0], fixed[1], g.channels])
            pred = predict(tiles) * weight2d
            ogrid = tf.stack([tf.size(t), th, tw])
            oidx = tf.stack([
                tf.broadcast_to(n[:, None, None], ogrid),
                tf.broadcast_to((ty0 + off_y)[:, None, None] + tf.range(th)[None, :, None],
                                ogrid),
                tf.broadcast_to((tx0 + off_x)[:, None, None] + tf.range(tw)[None, None, :],
                                ogrid),
            ], axis=-1)
            return b + 1, tf.tensor_scatter_nd_add(acc, oidx, pred)

        _, canvas = tf.while_loop(
            lambda b, acc: b < n_batches, body, (tf.constant(0), canvas),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, None, k])),
            parallel_iterations=1,
        )
        return canvas[:, off_y : off_y + h, off_x : off_x + w, :] * norm2d
