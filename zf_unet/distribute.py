"""``tf.distribute`` strategies by name (the factories of :data:`zf_unet.registry.STRATEGIES`)
and the chief test of a multi-worker cluster.

On the JAX and PyTorch backends only ``default`` exists (one device, :class:`LocalStrategy`);
the others are ``tf.distribute`` strategies and are refused there with one line."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import keras

from zf_unet.backend import lazy_tensorflow
from zf_unet.errors import ConfigError
from zf_unet.registry import STRATEGIES

tf = lazy_tensorflow("tf.distribute strategies")

__all__ = ["LocalStrategy", "default_strategy", "is_chief", "make_strategy",
           "mirrored_strategy", "multiworker_strategy", "tpu_strategy"]


class LocalStrategy:
    """The one-device strategy of the JAX and PyTorch backends: what ``zf_unet.train`` uses
    of a ``tf.distribute.Strategy`` (``scope()``, ``num_replicas_in_sync``)."""

    num_replicas_in_sync = 1

    def scope(self) -> Any:
        return contextlib.nullcontext()


def default_strategy() -> Any:
    """The default strategy: one device (``tf.distribute.get_strategy()`` on the TensorFlow
    backend, :class:`LocalStrategy` on the others)."""
    if keras.backend.backend() != "tensorflow":
        return LocalStrategy()
    return tf.distribute.get_strategy()


def mirrored_strategy() -> tf.distribute.Strategy:
    """``MirroredStrategy`` over all local GPUs."""
    return tf.distribute.MirroredStrategy()


def multiworker_strategy() -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy``; the cluster comes from ``TF_CONFIG``."""
    if "TF_CONFIG" not in os.environ:
        raise ConfigError("strategy 'multiworker' needs the TF_CONFIG environment variable "
                          "(cluster spec and this worker's task)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def tpu_strategy() -> tf.distribute.Strategy:
    """``TPUStrategy`` on the TPU the Colab / Cloud TPU resolver finds."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs), ``multiworker`` (``TF_CONFIG``
    from the environment) or ``tpu`` (Colab / Cloud TPU resolver)."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ConfigError(f"strategy must be {' | '.join(STRATEGIES.names())}, got {name!r}")
    backend = keras.backend.backend()
    if name != "default" and backend != "tensorflow":
        raise ConfigError(f"train.strategy = {name!r} is a tf.distribute strategy and needs the "
                          f"Keras TensorFlow backend, but this process runs on {backend!r}: "
                          "use --backend tensorflow, or train.strategy = 'default'")
    return STRATEGIES.create(name)


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if not kind:
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return kind == "chief" or (not has_chief and kind == "worker" and index == 0)
