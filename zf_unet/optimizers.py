"""Optimizers and learning-rate schedules by name: Keras's Adam with TensorFlow's fused update
kernel (:class:`FusedAdam`), and the factories of :data:`zf_unet.registry.OPTIMIZERS` and
:data:`zf_unet.registry.SCHEDULES`."""
from __future__ import annotations

from typing import Any

import keras

from zf_unet._keras_compat import in_stateless_scope
from zf_unet.backend import lazy_tensorflow

tf = lazy_tensorflow("the TensorFlow kernel of FusedAdam")

__all__ = ["FusedAdam", "adam", "adamw", "constant_schedule", "cosine_schedule",
           "plateau_schedule", "sgd"]


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
    strategy or a stateless scope, and every update on the JAX and PyTorch backends, use the
    Keras code path (the same arithmetic, variables and config).
    """

    def _fused_ok(self, variable: Any) -> bool:
        return (keras.backend.backend() == "tensorflow"
                and not self.amsgrad and not in_stateless_scope()
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


# --------------------------------------------------------------------------- optimizers
# ``f(learning_rate, *, weight_decay, momentum) -> keras Optimizer``; ``learning_rate`` is a
# number or a schedule (see below).


def adam(learning_rate: Any, *, weight_decay: float = 0.0, momentum: float = 0.0
         ) -> keras.optimizers.Optimizer:
    """:class:`FusedAdam` (Keras's Adam arithmetic, one fused kernel per variable);
    ``weight_decay`` and ``momentum`` are not used."""
    return FusedAdam(learning_rate)


def adamw(learning_rate: Any, *, weight_decay: float = 0.0, momentum: float = 0.0
          ) -> keras.optimizers.Optimizer:
    """``keras.optimizers.AdamW`` with ``weight_decay`` (0 means the default 1e-4)."""
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 1e-4)


def sgd(learning_rate: Any, *, weight_decay: float = 0.0, momentum: float = 0.0
        ) -> keras.optimizers.Optimizer:
    """``keras.optimizers.SGD`` with ``momentum`` and ``weight_decay`` (0: none)."""
    return keras.optimizers.SGD(learning_rate, momentum=momentum,
                                weight_decay=weight_decay or None)


# --------------------------------------------------------------------------- schedules
# ``f(*, learning_rate, min_learning_rate, total_steps, monitor, mode, patience)
#   -> (learning rate or schedule, [callbacks])``


def constant_schedule(*, learning_rate: float, **unused: Any) -> tuple[float, list]:
    """A fixed ``learning_rate``, no callbacks."""
    return learning_rate, []


def cosine_schedule(*, learning_rate: float, min_learning_rate: float = 0.0,
                    total_steps: int = 1, **unused: Any) -> tuple[Any, list]:
    """Cosine decay from ``learning_rate`` to ``min_learning_rate`` over ``total_steps``."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, int(total_steps)),
        alpha=min(1.0, min_learning_rate / learning_rate))
    return schedule, []


def plateau_schedule(*, learning_rate: float, min_learning_rate: float = 0.0,
                     monitor: str = "val_loss", mode: str = "min", patience: int = 5,
                     **unused: Any) -> tuple[float, list]:
    """``learning_rate``, halved by a ``ReduceLROnPlateau`` callback after ``patience`` epochs
    without improvement of ``monitor`` (down to ``min_learning_rate``)."""
    return learning_rate, [keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode=mode, factor=0.5, patience=patience, min_lr=min_learning_rate)]
