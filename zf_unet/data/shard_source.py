"""Read TFRecord shards (``zf-unet pack``): :class:`ShardSource`, the data source of kind
``shards``, as a ``tf.data.Dataset`` for training or sample by sample (the format:
:mod:`zf_unet.data.shard_format`; every record is checked by :mod:`zf_unet.data.shard_checks`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from zf_unet.backend import lazy_tensorflow
from zf_unet.data.shard_checks import (Part, all_parts, file_records, hold_out_shards,
                                       shard_streams)
from zf_unet.data.shard_folder import join
from zf_unet.data.shard_format import INDEX_NAME, ShardInfo, record_features
from zf_unet.data.sources import Sample, Source
from zf_unet.errors import DataError
from zf_unet.pixels import scale_to_unit_tf

tf = lazy_tensorflow("TFRecord shards")

__all__ = ["ShardSource"]


class ShardSource(Source):
    """A shard folder written by :func:`write_shards` (``zf-unet pack``).

    ``ShardSource(path)`` reads ``path/zf_unet_shards.json`` (local or ``gs://`` etc.). Use
    :meth:`as_dataset` for training; ``len()``, :meth:`names`, :meth:`read` and iteration give
    the samples with their stored dtypes, like the other sources.

    Raises:
        DataError: the index is missing, not valid JSON, not a shard index, or of a newer
            format version (naming the file).
    """

    kind = "shards"
    #: where the "{0, 255} masks" notice would point (shards hold class ids already)
    notice_where = INDEX_NAME
    #: shards are the streamable form already: ``cache="auto"`` streams them
    always_streams = True

    def __init__(self, path: str | os.PathLike):
        self.path = str(path).rstrip("/") or str(path)
        index = join(self.path, INDEX_NAME)
        try:
            with tf.io.gfile.GFile(index, "r") as f:
                text = f.read()
        except tf.errors.NotFoundError:
            raise DataError(f"{index}: not found; expected a folder written by `zf-unet pack`"
                            ) from None
        except tf.errors.OpError as exc:
            raise DataError(f"{index}: cannot be read ({exc.message})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{index}: not valid JSON ({exc}); repack the data with "
                            "`zf-unet pack`") from None
        self.info: ShardInfo = ShardInfo.from_dict(data, index)
        self.files: list[str] = [join(self.path, name) for name in self.info.shards]

    def __repr__(self) -> str:
        return (f"ShardSource({self.path!r}: {len(self)} samples in {len(self.files)} shards, "
                f"{self.info.channels} channel(s){', weights' if self.info.has_weights else ''})")

    def __len__(self) -> int:
        return self.info.num_samples

    def names(self) -> list[str]:
        """The sample names in the order they were written."""
        return list(self.info.names)

    def keys(self) -> list[str]:
        """Per-sample names for reports: :meth:`names`."""
        return self.names()

    def paths(self, i: int) -> tuple[str, ...]:
        """The shard file that holds sample ``i``, as a 1-tuple."""
        return (self.files[self._locate(i)[0]],)

    def nbytes_hint(self) -> int:
        """Bytes of all images as float32 plus the uint8 masks (from the index)."""
        return self.info.num_pixels * (4 * self.info.channels + 1)

    def _locate(self, i: int) -> tuple[int, int]:
        """``(file index, record index in that file)`` of sample ``i`` (negative from the end)."""
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"ShardSource: sample {i} out of range (0..{n - 1}) in {self.path}")
        i = int(i) % n
        for f, count in enumerate(self.info.shard_counts):
            if i < count:
                return f, i
            i -= count
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------- tf.data
    def _parse(self, record: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """One serialized record -> ``(image float32 (H, W, C) in [0, 1], mask uint8
        (H, W, 1)[, weight float32 (H, W, 1)])``."""
        features = record_features()
        if self.info.has_weights:
            features["weight"] = tf.io.FixedLenFeature([], tf.string)
        ex = tf.io.parse_single_example(record, features)
        shape = tf.cast(ex["shape"], tf.int32)

        def decode(dtype: str) -> tf.Tensor:
            raw = tf.io.decode_raw(ex["image"], tf.dtypes.as_dtype(dtype), little_endian=True)
            return scale_to_unit_tf(tf.reshape(raw, shape))

        dtypes = self.info.image_dtypes
        if len(dtypes) == 1:
            image = decode(dtypes[0])
        else:
            index = tf.argmax(tf.cast(tf.equal(ex["dtype"], tf.constant(list(dtypes))), tf.int32))
            image = tf.switch_case(tf.cast(index, tf.int32),
                                   [lambda d=d: decode(d) for d in dtypes])
        image.set_shape([None, None, self.info.channels])
        hw1 = tf.concat([shape[:2], [1]], axis=0)
        mask = tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), hw1)
        mask.set_shape([None, None, 1])
        if not self.info.has_weights:
            return image, mask
        weight = tf.reshape(tf.io.decode_raw(ex["weight"], tf.float32, little_endian=True), hw1)
        weight.set_shape([None, None, 1])
        return image, mask, weight

    def as_dataset(self, *, shuffle_files: bool, seed: int = 0,
                   num_parallel_reads: int = -1,
                   input_context: tf.distribute.InputContext | None = None,
                   files: Sequence[str | tuple[str, int, int]] | None = None
                   ) -> tf.data.Dataset:
        """The samples as ``(image, mask[, weight])``: image float32 ``(H, W, C)`` in [0, 1]
        (integers divided by their dtype's maximum), mask uint8 ``(H, W, 1)``, weight float32
        ``(H, W, 1)`` when the shards hold border weights.

        ``shuffle_files=False`` reads the files one after another: the samples come in the
        written order. ``True`` shuffles the file order each epoch (with ``seed``) and reads
        ``num_parallel_reads`` files at once, non-deterministically interleaved; shuffle the
        samples further downstream. With ``input_context`` each input pipeline gets its own
        files (``ds.shard(num_input_pipelines, input_pipeline_id)``), or, when there are fewer
        files than pipelines, its own records; either way the pipelines together see every
        sample once. A damaged file raises ``tf.errors.DataLossError`` (iterate the source
        itself, or call :meth:`verify`, to learn which file). ``files``: a subset of
        :attr:`files` to read (default all), e.g. the shards that train when others validate;
        an item ``(file, start, stop)`` reads records ``start .. stop - 1`` of a file only.
        """
        parts = [(p, 0, -1) if isinstance(p, str) else (str(p[0]), int(p[1]), int(p[2]))
                 for p in (self.files if files is None else files)]
        paths = [p[0] for p in parts]
        files = tf.data.Dataset.from_tensor_slices((paths, np.asarray(
            [(p[1], -1 if p[2] < 0 else p[2] - p[1]) for p in parts], np.int64)))

        def read(path: tf.Tensor, span: tf.Tensor) -> tf.data.Dataset:
            return tf.data.TFRecordDataset(path).skip(span[0]).take(span[1])

        if shuffle_files:
            files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        shard_records = False
        if input_context is not None and input_context.num_input_pipelines > 1:
            if len(paths) >= input_context.num_input_pipelines:
                files = files.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
            else:
                shard_records = True
        if shuffle_files:
            # sharding records needs the same record order in every pipeline: deterministic,
            # and a cycle length that does not depend on the machine (AUTOTUNE would)
            ds = files.interleave(read, cycle_length=len(paths) if shard_records
                                  else num_parallel_reads,
                                  num_parallel_calls=num_parallel_reads,
                                  deterministic=shard_records)
        else:
            ds = files.interleave(read, cycle_length=1,
                                  num_parallel_calls=1, deterministic=True)
        if shard_records:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return ds.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=not shuffle_files)

    # ----------------------------------------------------------------- samples
    @staticmethod
    def _sample(record: Any) -> Sample:
        return Sample(record.name, record.image, record.mask.copy(), scaled_from_255=False)

    def _file_records(self, f: int, start: int = 0) -> Iterator[Any]:
        """Records ``start ..`` of file ``f``, checked (:func:`file_records`)."""
        counts = self.info.shard_counts
        return file_records(self.info, self.files[f], sum(counts[:f]), counts[f], start)

    def __iter__(self) -> Iterator[Sample]:
        """The samples in the written order: ``Sample(name, image (H, W, C) in its stored
        dtype, mask (H, W) uint8, scaled_from_255=False)``. A missing or damaged file, or one
        that does not agree with the index, raises a DataError naming the file."""
        for f in range(len(self.files)):
            yield from map(self._sample, self._file_records(f))

    def read(self, i: int) -> Sample:
        """Sample ``i`` (see :meth:`__iter__`). Slow: reads its shard file through."""
        f, k = self._locate(i)
        return self._sample(next(self._file_records(f, k)))

    def weights(self) -> Iterator[np.ndarray]:
        """The stored border weight maps, float32 ``(H, W)``, in the written order."""
        if not self.info.has_weights:
            raise DataError(f"{self.path}: the shards hold no border weight maps (pack with "
                            "--border-weights)")
        for f in range(len(self.files)):
            yield from (record.weight for record in self._file_records(f))

    def verify(self) -> None:
        """Read every file through; a missing, truncated or miscounted file, or a record that
        does not agree with the index, raises a :class:`DataError` naming it."""
        for f in range(len(self.files)):
            for _ in self._file_records(f):
                pass

    # ----------------------------------------------------------------- streaming
    def parts(self) -> list[Part]:
        """Every shard file as a whole part ``(file, 0, count)``."""
        return all_parts(self)

    def hold_out(self, val_fraction: float, val_indices: Sequence[int] | None, seed: int
                 ) -> tuple[list[Part], list[Part]]:
        """The last samples held out, as whole files where they fill them
        (:func:`zf_unet.data.shard_checks.hold_out_shards`; ``seed`` is not used)."""
        return hold_out_shards(self, val_fraction, val_indices)

    def streams(self, part: Sequence[Any], *, seed: int, border_weights: bool,
                ignore_index: int | None, skip_bad_files: bool, log: Any, **unused: Any
                ) -> tuple[Any, Callable[..., Any]]:
        """``(stats, stream)`` of the shard parts ``part``
        (:func:`zf_unet.data.shard_checks.shard_streams`): the stored weight maps are read,
        not recomputed, and decoded samples are not cached (``unused``: the weight-map and
        cache settings of the file sources)."""
        return shard_streams(self, part, border_weights=border_weights,
                             ignore_index=ignore_index, seed=seed,
                             skip_bad_files=skip_bad_files, log=log)

    def stream_counted(self, skip_bad_files: bool) -> bool:
        """``True``: the pre-pass leaves a damaged file out of the stream already."""
        return True
