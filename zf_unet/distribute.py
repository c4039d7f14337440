"""``tf.distribute`` strategies by name (the factories of :data:`zf_unet.registry.STRATEGIES`)
and the chief test of a multi-worker cluster."""
from __future__ import annotations

import json
import os

import tensorflow as tf

from zf_unet.errors import ConfigError
from zf_unet.registry import STRATEGIES

__all__ = ["default_strategy", "is_chief", "make_strategy", "mirrored_strategy",
           "multiworker_strategy", "tpu_strategy"]


def default_strategy() -> tf.distribute.Strategy:
    """The default strategy: one device."""
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
