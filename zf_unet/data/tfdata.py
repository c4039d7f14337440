"""The last step of every ``tf.data`` pipeline zf_unet builds: prefetch, and no autotune thread.

Why no autotune thread. When ``tf.data`` autotuning is on (its default), every iterator
starts a model thread that wakes up after 10 ms, 20 ms, 40 ms, ... (doubling up to 60 s) to
retune buffer sizes and parallelism. Deleting the iterator joins that thread, and in
TensorFlow 2.21 the thread, woken by the deletion, often goes back to sleep for the rest of
its period (``TF_CPP_VMODULE=model=2`` shows it): the deletion then waits for the thread's
*next timed wake-up*. Keras deletes its iterators at the end of every ``fit``
and every validation pass, so a ``fit`` of a few seconds returned 1-4 s late in about half of
the calls, and a 6-epoch ``fit`` 39 s late (``benchmarks/epoch_overhead.py``; the wait uses no
CPU). With autotuning off there is no model thread and nothing to wait for.

What is given up: ``num_parallel_calls=tf.data.AUTOTUNE`` then runs ``min(16, cores)`` calls
in parallel instead of a tuned number (zf_unet's maps are CPU-bound, so that is what tuning
settles on anyway), and ``prefetch(tf.data.AUTOTUNE)`` grows its buffer by itself when the
model waits for data (TensorFlow's buffer autotuner that works without the model thread).
"""
from __future__ import annotations

from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("tf.data pipelines")


def without_autotune_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with ``tf.data`` autotuning turned off (no model thread, so deleting its
    iterator at the end of ``fit`` or ``evaluate`` does not wait). Elements are unchanged.
    Use it on your own pipelines before ``model.fit`` when you call ``fit`` repeatedly."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def finish_pipeline(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds.prefetch(tf.data.AUTOTUNE)`` without the autotune thread: how every dataset that
    :func:`zf_unet.data.make_datasets` and :func:`zf_unet.data.make_volume_datasets` return
    ends."""
    return without_autotune_thread(ds.prefetch(tf.data.AUTOTUNE))
