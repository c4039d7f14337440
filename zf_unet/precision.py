"""Choosing the Keras mixed-precision policy (``float32``, ``mixed_bfloat16``, ``mixed_float16``)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import keras

from zf_unet import registry
from zf_unet.backend import accelerator

__all__ = ["PRECISIONS", "auto_policy", "cpu_has_bf16", "precision_scope",
           "resolve_precision"]

#: The precision names (those of :data:`zf_unet.registry.PRECISIONS`).
PRECISIONS = registry.PRECISIONS.names()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 math (AVX512-BF16 or AMX-BF16), Linux only."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str = "auto") -> str:
    """Map ``auto`` to a concrete policy: ``mixed_bfloat16`` on TPUs and on CPUs with native
    bf16, ``mixed_float16`` on GPUs, else ``float32``. Other names are validated and returned."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    device = accelerator()
    if device == "tpu":
        return "mixed_bfloat16"
    if device == "gpu":
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def auto_policy(name: str = "auto") -> keras.DTypePolicy:
    """The ``keras.DTypePolicy`` of :func:`resolve_precision` ``(name)`` (``auto``: the
    hardware's fastest; the factory of ``"auto"`` in :data:`zf_unet.registry.PRECISIONS`)."""
    return keras.DTypePolicy(resolve_precision(name))


@contextlib.contextmanager
def precision_scope(precision: str = "auto") -> Iterator[str]:
    """Set the global Keras dtype policy for the models built inside; restore it afterwards."""
    old = keras.mixed_precision.global_policy()
    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(old)
