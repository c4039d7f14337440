"""Streaming ``tf.data`` pipelines: samples read from disk on the fly, with bounded memory.

The in-memory path of :func:`zf_unet.data.make_datasets` stacks every sample into one
tensor; it is the fastest for data that fits. Streaming is for data that does not: the
pipeline holds a list of sample *indices*, shuffles those, and decodes each sample only when
it is needed (``tf.numpy_function`` around :meth:`Source.read`, several in parallel). From
one decoded sample it cuts several random patches, mirrors the borders by index (no padded
copy, :func:`zf_unet.pixels.mirror_index_tf`), and mixes patches of different samples
in a small shuffle buffer. Memory is bounded by the parallel reads, that buffer and the
prefetch, whatever the number of files.

What needs every sample (the classes, class counts for ``class_weights="auto"``, channel
mean/std, image sizes, and the border weight maps) is computed once, in one pass before
training (:func:`scan`, counting into a :class:`zf_unet.data.stats.SampleStats`), one sample
at a time; the weight maps go to the on-disk cache of
:func:`zf_unet.data.cached_border_weight_map` and are read back per sample.

A file that cannot be read mid-epoch stops the run with a :class:`DataError` naming it
(:class:`ReadLog` keeps it, and :func:`zf_unet.train` raises it instead of TensorFlow's
error), or, with ``skip_bad_files``, is skipped and counted.
"""
from __future__ import annotations

import atexit
import logging
import math
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from zf_unet.data.augment_config import Augment
from zf_unet.data.augment_data import augment_dataset, augment_margin
from zf_unet.data.sample_checks import check_binary_for_weights
from zf_unet.data.stats import SampleStats
from zf_unet.data.weightmaps import cached_border_weight_map, default_cache_dir
from zf_unet.errors import DataError
from zf_unet.pixels import mirror_index_tf, to_float_image
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("streaming tf.data pipelines")

__all__ = ["MEMORY_BUDGET", "ReadLog", "SHUFFLE_BUFFER_BYTES", "SampleReader", "disk_cache_file",
           "file_streams", "patch_dataset", "patches_per_sample", "scan", "shuffle_buffer_size",
           "stream_samples", "whole_image_dataset"]

logger = logging.getLogger("zf_unet.data")

#: Bytes of decoded float32 data that ``cache="auto"`` keeps in memory (the modes of
#: ``data.cache``: :data:`zf_unet.registry.CACHE_MODES`).
MEMORY_BUDGET = 2 * 2 ** 30


# --------------------------------------------------------------------------- errors


class ReadLog:
    """What the readers of one pipeline met: the first error (raised again by
    :func:`zf_unet.train` in place of TensorFlow's wrapped one) and the skipped samples."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: DataError | None = None
        self.skipped: list[str] = []

    def failed(self, exc: DataError) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc

    def skip(self, name: str, exc: Exception) -> None:
        with self._lock:
            self.skipped.append(name)
        logger.warning("skipped %s (data.skip_bad_files = true): %s", name, exc)


def _as_data_error(name: str, exc: Exception) -> DataError:
    if isinstance(exc, DataError):
        return exc
    return DataError(f"{name}: cannot be read ({type(exc).__name__}: {exc}); expected an "
                     "image / mask pair the training readers can decode")


# --------------------------------------------------------------------------- pre-pass


def scan(source: Any, indices: Sequence[int], result: SampleStats | None = None, *,
         ignore_index: int | None = None, skip_bad_files: bool = False,
         border_weights: bool = False, weight_cache: str | Path | None = None,
         w0: float = 10.0, sigma: float = 5.0) -> SampleStats:
    """Read the samples ``indices`` of ``source`` once, one at a time, and count what
    training needs from all of them (a :class:`SampleStats`; unreadable samples, with
    ``skip_bad_files``, in its ``bad`` / ``bad_indices``); with ``border_weights`` also
    compute each border weight map into ``weight_cache`` (read back by the stream)."""
    out = result or SampleStats(ignore_index)
    for i in indices:
        try:
            sample = source.read(int(i))
            image = to_float_image(sample.image, sample.name)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is named
            name = _name(source, i)  # only here: names() lists every sample
            if not skip_bad_files:
                raise _as_data_error(name, exc) from None
            out.bad.append(name)
            out.bad_indices.append(int(i))
            logger.warning("skipped %s (data.skip_bad_files = true): %s", name, exc)
            continue
        mask = np.asarray(sample.mask, np.uint8)
        out.add(image, mask, sample.name)
        out.scaled += bool(getattr(sample, "scaled_from_255", False))
        if border_weights:
            check_binary_for_weights(mask, ignore_index, sample.name)
            cached_border_weight_map(mask, cache_dir=weight_cache, w0=w0, sigma=sigma,
                                     ignore_index=ignore_index)
    return out


def _name(source: Any, i: int) -> str:
    try:
        return source.names()[int(i)]
    except Exception:  # noqa: BLE001 - a name is only for messages
        return f"sample {int(i)}"


# --------------------------------------------------------------------------- reading


class SampleReader:
    """``reader(i)`` -> ``(image float32 (H, W, C) in [0, 1], mask uint8 (H, W, 1)[, weight
    float32 (H, W, 1)])`` of sample ``i`` of ``source``, for ``tf.numpy_function``.

    A sample that cannot be read is recorded in ``log`` and raised (so ``fit`` stops), or,
    with ``skip_bad_files``, returned as 0 x 0 arrays that :func:`stream_samples` drops.
    """

    def __init__(self, source: Any, channels: int, *, border_weights: bool = False,
                 weight_cache: str | Path | None = None, w0: float = 10.0, sigma: float = 5.0,
                 ignore_index: int | None = None, skip_bad_files: bool = False,
                 log: ReadLog | None = None) -> None:
        self.source, self.channels = source, int(channels)
        self.border_weights, self.weight_cache = border_weights, weight_cache
        self.w0, self.sigma, self.ignore_index = w0, sigma, ignore_index
        self.skip_bad_files = skip_bad_files
        self.log = log or ReadLog()

    @property
    def dtypes(self) -> list[tf.DType]:
        """``Tout`` of the ``numpy_function``."""
        return [tf.float32, tf.uint8] + ([tf.float32] if self.border_weights else [])

    def __call__(self, i: Any) -> tuple[np.ndarray, ...]:
        try:
            sample = self.source.read(int(i))
            image = to_float_image(sample.image, sample.name)
            mask = np.asarray(sample.mask, np.uint8)
            if image.shape[2] != self.channels:
                raise DataError(f"{sample.name}: {image.shape[2]} channel(s), expected "
                                f"{self.channels} like the other images")
            out = [image, mask[..., None]]
            if self.border_weights:
                out.append(cached_border_weight_map(
                    mask, cache_dir=self.weight_cache, w0=self.w0, sigma=self.sigma,
                    ignore_index=self.ignore_index)[..., None].astype(np.float32))
            return tuple(out)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is named
            name = _name(self.source, int(i))  # only here: names() lists every sample
            err = _as_data_error(name, exc)
            if not self.skip_bad_files:
                self.log.failed(err)
                raise err from None
            self.log.skip(name, exc)
            empty = [np.zeros((0, 0, self.channels), np.float32), np.zeros((0, 0, 1), np.uint8)]
            if self.border_weights:
                empty.append(np.zeros((0, 0, 1), np.float32))
            return tuple(empty)


def stream_samples(reader: SampleReader, indices: Sequence[int], *, shuffle: bool, seed: int,
                   input_context: tf.distribute.InputContext | None = None,
                   repeat: bool = False, cache_file: str | None = None) -> tf.data.Dataset:
    """Samples ``indices`` decoded on the fly: ``(image (H, W, C) float32, mask (H, W, 1)
    uint8[, weight (H, W, 1) float32])``. With ``input_context`` every input pipeline (worker)
    reads only its own share of the samples (disjoint files); ``shuffle`` reshuffles the
    indices every epoch; ``cache_file`` caches the decoded samples on disk (``data.cache =
    "disk"``)."""
    idx = np.asarray(list(indices), np.int64)
    if input_context is not None and input_context.num_input_pipelines > 1:
        idx = idx[input_context.input_pipeline_id::input_context.num_input_pipelines]
    ds = tf.data.Dataset.from_tensor_slices(idx)

    def read(i: tf.Tensor) -> tuple:
        out = tf.numpy_function(reader, [i], reader.dtypes, stateful=False)
        out[0].set_shape([None, None, reader.channels])
        for t in out[1:]:
            t.set_shape([None, None, 1])
        return tuple(out)

    if cache_file is not None:
        ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).cache(cache_file)
        if shuffle:  # shuffle whole samples of the cache: a bounded buffer
            ds = ds.shuffle(min(len(idx), 16), seed=seed, reshuffle_each_iteration=True)
    else:
        if shuffle:
            ds = ds.shuffle(max(1, len(idx)), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    if reader.skip_bad_files:
        ds = ds.filter(lambda img, *rest: tf.shape(img)[0] > 0)
    return ds.repeat() if repeat else ds


def file_streams(src: Any, indices: Sequence[int], *, seed: int, border_weights: bool,
                 ignore_index: int | None, skip_bad_files: bool, log: ReadLog,
                 weight_cache: str | Path | None, w0: float, sigma: float,
                 cache_file: str | None) -> tuple[SampleStats, Callable[..., Any]]:
    """``(stats, stream)`` of samples ``indices`` of an indexable source (folder, stacks,
    arrays, TFDS, synthetic): one pre-pass (:func:`scan`), then ``stream(context, shuffle,
    repeat)`` decodes the samples the pre-pass could read on the fly
    (:func:`stream_samples`; ``cache_file`` caches the repeated training stream)."""
    result = scan(src, indices, ignore_index=ignore_index, skip_bad_files=skip_bad_files,
                  border_weights=border_weights, weight_cache=weight_cache, w0=w0, sigma=sigma)
    keep = [i for i in indices if i not in set(result.bad_indices)]
    reader = SampleReader(src, result.channels or 1, border_weights=border_weights,
                          weight_cache=weight_cache, w0=w0, sigma=sigma,
                          ignore_index=ignore_index, skip_bad_files=skip_bad_files, log=log)

    def stream(context: Any = None, shuffle: bool = False, repeat: bool = False) -> Any:
        return stream_samples(reader, keep, shuffle=shuffle, seed=seed, input_context=context,
                              repeat=repeat, cache_file=cache_file if repeat else None)

    return result, stream


# --------------------------------------------------------------------------- patches


def _crop(sample: tuple, seed: tf.Tensor, patch: int, margin: int, count: int) -> tuple:
    """``count`` random ``patch + 2 * margin`` windows of one sample, positions as the
    in-memory path draws them (images smaller than ``patch`` centred in mirrored context)."""
    image = sample[0]
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hh, ww = tf.maximum(h, patch), tf.maximum(w, patch)
    top, left = (hh - h) // 2, (ww - w) // 2
    u = tf.random.stateless_uniform([count, 2], seed=seed, dtype=tf.float32)
    y = tf.cast(u[:, 0] * tf.cast(hh - patch + 1, tf.float32), tf.int32)
    x = tf.cast(u[:, 1] * tf.cast(ww - patch + 1, tf.float32), tf.int32)
    win = patch + 2 * margin
    steps = tf.range(win)
    rows = mirror_index_tf(y[:, None] - top - margin + steps[None, :], h)  # (count, win)
    cols = mirror_index_tf(x[:, None] - left - margin + steps[None, :], w)
    grid = tf.stack([tf.broadcast_to(rows[:, :, None], [count, win, win]),
                     tf.broadcast_to(cols[:, None, :], [count, win, win])], axis=-1)
    out = []
    for t in sample:
        p = tf.gather_nd(t, grid)  # (count, win, win, channels)
        p.set_shape([count, win, win, t.shape[-1]])
        out.append(p)
    return tuple(out)


def patch_dataset(samples: tf.data.Dataset, *, patch: int, batch_size: int, steps: int,
                  patches_per_sample: int, augment: Augment | None, seed: int,
                  jit_compile: bool = True, shuffle_buffer: int = 256) -> tf.data.Dataset:
    """Batches of random ``patch`` x ``patch`` training patches cut from a (repeated) stream of
    samples, ``patches_per_sample`` from each decoded sample, mixed in a shuffle buffer of at
    most ``shuffle_buffer`` patches (:func:`shuffle_buffer_size`), ``steps`` batches per epoch, then augmented (:func:`augment_dataset`). Yields
    float32 ``(image (B, P, P, C), mask (B, P, P, 1)[, weight (B, P, P, 1)])``."""
    margin = augment_margin(patch, augment)
    count = int(patches_per_sample)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True)
    ds = tf.data.Dataset.zip((samples, seeds)).map(
        lambda sample, s: _crop(sample, s, patch, margin, count),
        num_parallel_calls=tf.data.AUTOTUNE)
    channels = sum(int(spec.shape[-1]) for spec in samples.element_spec)
    buffer = shuffle_buffer_size(win=patch + 2 * margin, channels=channels,
                                 patches_per_sample=count, batch_size=batch_size,
                                 limit=shuffle_buffer)
    ds = ds.unbatch().shuffle(buffer, seed=seed + 2, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.take(steps)
    if augment is not None:
        ds = augment_dataset(ds, augment, seed, jit_compile)

    def finish(*batch: tf.Tensor) -> tuple:
        return tuple(tf.cast(t[:, margin:margin + patch, margin:margin + patch, :], tf.float32)
                     for t in batch)

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(steps))


def _tiles(tile: int) -> Callable[..., tuple]:
    """Map: one sample -> its non-overlapping ``tile`` x ``tile`` tiles (mirror-padded at the
    far borders, the rule of the in-memory validation tiles)."""
    def split(*sample: tf.Tensor) -> tuple:
        shape = tf.shape(sample[0])
        h, w = shape[0], shape[1]
        ph, pw = -(-h // tile) * tile, -(-w // tile) * tile
        rows, cols = mirror_index_tf(tf.range(ph), h), mirror_index_tf(tf.range(pw), w)
        out = []
        for t in sample:
            padded = tf.gather(tf.gather(t, rows, axis=0), cols, axis=1)
            c = t.shape[-1]
            blocks = tf.reshape(padded, [ph // tile, tile, pw // tile, tile, c])
            out.append(tf.reshape(tf.transpose(blocks, [0, 2, 1, 3, 4]), [-1, tile, tile, c]))
        return tuple(out)

    return split


def whole_image_dataset(samples: tf.data.Dataset, *, batch_size: int, tile: int | None,
                        sizes: Sequence[tuple[int, int]] | None = None) -> tf.data.Dataset:
    """Validation batches from a stream of samples: whole images, or their ``tile`` x
    ``tile`` tiles; float32 ``(image, mask[, weight])``. With the samples' ``(H, W)``
    ``sizes`` the dataset knows its number of batches (Keras then runs validation without
    a "ran out of data" warning)."""
    def as_float(*t: tf.Tensor) -> tuple:
        return tuple(tf.cast(x, tf.float32) for x in t)

    ds = samples
    if tile is not None:
        ds = ds.map(_tiles(int(tile)), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    ds = ds.map(as_float, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if sizes is not None:
        items = len(sizes) if tile is None else sum(
            math.ceil(h / tile) * math.ceil(w / tile) for h, w in sizes)
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(items / batch_size)))
    return ds


def disk_cache_file(cache_dir: str | Path | None = None) -> str:
    """A new file name for ``tf.data``'s on-disk cache of decoded samples (``data.cache =
    "disk"``) under ``cache_dir`` (default: beside the weight-map cache), removed with its
    index and lock files when the process exits."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent
    folder = root / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="stream-", dir=folder))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return str(path / "samples")


#: Bytes the patch shuffle buffer of :func:`patch_dataset` may hold.
SHUFFLE_BUFFER_BYTES = 256 * 2 ** 20


def shuffle_buffer_size(*, win: int, channels: int, patches_per_sample: int, batch_size: int,
                        limit: int = 256) -> int:
    """Patches in the shuffle buffer: enough to mix the patches of 8 samples and fill 4
    batches, at most ``limit`` and at most :data:`SHUFFLE_BUFFER_BYTES` of float32 windows of
    ``win`` x ``win`` x ``channels`` (image, mask and weight channels together)."""
    want = max(8 * patches_per_sample, 4 * batch_size)
    fit = SHUFFLE_BUFFER_BYTES // max(1, win * win * channels * 4)
    return int(max(batch_size, min(want, limit, fit)))


def patches_per_sample(steps: int, batch_size: int, n_samples: int) -> int:
    """Patches to cut from each decoded sample so one pass over the samples fills an epoch
    (at least 1, at most 64)."""
    return int(min(64, max(1, math.ceil(steps * batch_size / max(1, n_samples)))))
