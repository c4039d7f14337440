"""Optimizers: Keras's Adam with TensorFlow's fused update kernel."""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras.src.backend.common.stateless_scope import in_stateless_scope

__all__ = ["FusedAdam"]


@keras.saving.register_keras_serializable(package="zf_unet")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose per-variable update is one ``ResourceApplyAdam`` kernel.

    The arithmetic is Adam's (Kingma & Ba, Algorithm 1, with the bias correction folded into the
    step size), exactly as ``keras.optimizers.Adam.update_step`` computes it::

        m <- m + (g - m) (1 - beta_1);  v <- v + (g^2 - v) (1 - beta_2)
        var <- var - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

    but done in one multithreaded kernel per variable instead of about eleven element-wise
    ops with their temporaries; it is the default ``adam`` of ``zf_unet.train``. Arguments,
    config and saved optimizer variables are those of ``keras.optimizers.Adam``, so weight
    decay, gradient clipping, EMA, loss scaling and ``.keras`` round trips behave the same.
    ``amsgrad=True``, non-float32/64 variables, and updates inside a ``tf.distribute``
    strategy or a stateless scope use the Keras code path.
    """

    def _fused_ok(self, variable: Any) -> bool:
        return (not self.amsgrad and not in_stateless_scope()
                and not tf.distribute.has_strategy()
                and variable.dtype in ("float32", "float64")
                and hasattr(variable, "handle"))

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Apply one Adam step to ``variable`` (any shape, float32/64) from ``gradient``."""
        if not self._fused_ok(variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )
        return None
