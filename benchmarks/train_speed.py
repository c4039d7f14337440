"""Training speed of ZF_UNET_224: zf_unet (Keras 3 / TensorFlow) vs the same network in PyTorch.

Every variant trains the ZF_UNET_224 architecture (224x224x3 inputs, 1 sigmoid output channel,
31,466,757 parameters) with batch 8, the BCE + Dice loss (``0.5 * BCE + soft Dice``) and Adam,
on in-memory random batches, and reports training images/s: the median of ``--steps`` timed
steps after ``--warmup`` untimed ones, and the ratio to PyTorch bf16 autocast + channels-last.

Base variants (the default list is ``DEFAULT_VARIANTS``; ``--list`` prints everything):

    torch-fp32       PyTorch 2.13 fp32, NCHW (benchmarks/torch_unet.py, the same network)
    torch-bf16-cl    PyTorch ``torch.autocast("cpu", dtype=torch.bfloat16)`` + channels-last:
                     the reference every ratio is computed against
    torch-bf16, torch-fp32-cl   the other two combinations
    zf-bf16-fit      ``zf_unet.ZF_UNET_224()`` built under ``precision_scope("mixed_bfloat16")``,
                     (``FusedBatchNormalization`` layers, the builders' default), compiled with
                     ``zf_unet.losses.BCEDiceLoss()`` + ``zf_unet.optimizers.FusedAdam()`` (what
                     ``zf_unet.train`` uses for ``adam``; Keras defaults otherwise: ``jit_compile="auto"``, which is False on a
                     CPU-only machine), trained with ``model.fit`` on a ``tf.data`` pipeline of
                     in-memory batches with ``.prefetch``
    zf-bf16-tob      the same model trained with ``model.train_on_batch``
    zf-fp32-fit, zf-fp32-tob   the float32 policy

A zf_unet variant may carry modifiers joined with ``+`` (``zf-bf16-fit+fusedbn+inter1``): thread
settings, environment variables, compile options, a fused BatchNorm, a fused Adam update, ...
Each variant runs in a fresh Python process, since thread pools, environment variables and
``tf.config.threading`` only take effect before TensorFlow starts.

Shared machines. Other jobs on the CPUs distort timings a lot (PyTorch's OpenMP threads slow
down 5-6x when another process takes a core; TensorFlow about 2x). So the script
  * records for every step the share of the CPUs other processes used meanwhile
    (``/proc/stat``); steps with less than ``--quiet`` (10 %) are "quiet", and the medians use
    the quiet steps only (all steps, marked "noisy", when fewer than 5 were quiet); it times
    up to ``--patience`` x ``--steps`` steps and sleeps up to ``--wait`` s for quiet moments;
  * runs, inside every zf_unet process, one PyTorch bf16 channels-last step after every timed
    zf_unet step (``--no-paired`` turns this off). Both halves of each pair see the same load,
    so the median per-pair time ratio ("paired ratio") is the robust comparison; the ratio of
    separately measured medians is shown as well;
  * ``--rounds N`` repeats the whole list N times, interleaved, and pools the steps.

Keras backends. ``--backends tensorflow,jax,torch`` runs every zf-* variant once per Keras
backend (default: ``tensorflow`` alone, the rows above); a variant may also name its backend,
``zf-bf16-fit@jax``. Each runs in its own worker process with ``KERAS_BACKEND`` set, placed
next to the TensorFlow one in every round, so the rounds interleave the backends. On JAX and
PyTorch ``fit`` reads in-memory NumPy arrays instead of tf.data (no TensorFlow in the
process), ``FusedAdam`` and ``FusedBatchNormalization`` take Keras's portable code paths, and
the callback waits for JAX's asynchronous step before stopping the clock. Modifiers that
change TensorFlow itself (fusedbn, amp, inter/intra, caller, sysalloc, nomemopt, fpmath,
noprefetch, bf16in) run on TensorFlow only.

Run (4-6 minutes on 2 cores):
    python benchmarks/train_speed.py
    python benchmarks/train_speed.py --quick
    python benchmarks/train_speed.py --variants torch-bf16-cl zf-bf16-fit \
        --backends tensorflow,jax,torch --rounds 2
    python benchmarks/train_speed.py --variants torch-bf16-cl zf-bf16-fit zf-bf16-fit+fusedbn \
        --rounds 2
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info  # noqa: E402

REFERENCE = "torch-bf16-cl"
DEFAULT_VARIANTS = [
    "torch-fp32",
    REFERENCE,
    "zf-fp32-fit",
    "zf-bf16-fit",
    "zf-bf16-tob",
    "zf-bf16-fit+unfused",
    "zf-bf16-fit+kerasbn+kerasadam+unfused",
]
QUICK_VARIANTS = [REFERENCE, "zf-bf16-fit", "zf-bf16-fit+unfused", "zf-bf16-fit+kerasbn+kerasadam+unfused"]

TORCH_BASES = {
    "torch-fp32": ("PyTorch fp32 (NCHW)", "float32", False, False),
    "torch-fp32-cl": ("PyTorch fp32, channels-last", "float32", False, True),
    "torch-bf16": ("PyTorch bf16 autocast (NCHW)", "bf16 autocast", True, False),
    "torch-bf16-cl": ("PyTorch bf16 autocast, channels-last", "bf16 autocast", True, True),
}
ZF_BASES = {
    "zf-bf16-fit": ("zf_unet `model.fit` (tf.data)", "mixed_bfloat16", "fit"),
    "zf-bf16-tob": ("zf_unet `train_on_batch`", "mixed_bfloat16", "tob"),
    "zf-fp32-fit": ("zf_unet `model.fit` (tf.data)", "float32", "fit"),
    "zf-fp32-tob": ("zf_unet `train_on_batch`", "float32", "tob"),
}
# name -> (description, environment variables for the child process)
MODIFIERS = {
    "jitF": ("`compile(jit_compile=False)` explicitly", {}),
    "xla": ("`compile(jit_compile=True)` (XLA)", {}),
    "spe<N>": ("`compile(steps_per_execution=N)`", {}),
    "inter<N>": ("`tf.config.threading.set_inter_op_parallelism_threads(N)`", {}),
    "intra<N>": ("`tf.config.threading.set_intra_op_parallelism_threads(N)`", {}),
    "omp<N>": ("`OMP_NUM_THREADS=N`", {}),
    "caller": ("`TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1`",
               {"TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD": "1"}),
    "sysalloc": ("`TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`", {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}),
    "nomemopt": ("`TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE=false` (cache oneDNN backward primitives)",
                 {"TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE": "false"}),
    "fpmath": ("`TF_SET_ONEDNN_FPMATH_MODE=BF16`", {"TF_SET_ONEDNN_FPMATH_MODE": "BF16"}),
    "fusedbn": ("BatchNorm via `tf.compat.v1.nn.fused_batch_norm` (bf16 in, fp32 stats)", {}),
    "bnf32": ("BatchNorm layers with a float32 dtype policy", {}),
    "kerasbn": ("`keras.layers.BatchNormalization` instead of zf_unet's default "
                "`FusedBatchNormalization` (the path before zf_unet 0.2)", {}),
    "muldrop": ("SpatialDropout2D as one broadcast multiply by a (B,1,1,C) mask (no select)",
                {}),
    "amp": ("float32 model + grappler `auto_mixed_precision_onednn_bfloat16`", {}),
    "kerasadam": ("`keras.optimizers.Adam` instead of zf_unet's default `FusedAdam` (one "
                  "fused `ResourceApplyAdam` kernel per variable)", {}),
    "adamw": ("`keras.optimizers.AdamW(weight_decay=0.004)`", {}),
    "lossbf16": ("BCE+Dice computed in bfloat16 instead of float32", {}),
    "noprefetch": ("tf.data without `.prefetch`", {}),
    "metrics": ("`zf_unet.training`'s metrics (Dice, IoU, mean Dice)", {}),
    "bf16in": ("dataset yields bfloat16 images (cast in tf.data, not in the model)", {}),
    "unfused": ("decoders as separate `UpSampling2D` -> `Concatenate` -> `Conv2D` layers "
                "(`zf_unet.models.unfused_copy`; the layout before `FusedUpsampleConv`)", {}),
}
RESULT_TAG = "@@TRAIN_SPEED_RESULT@@ "
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
# Modifiers that change TensorFlow itself (thread pools, its environment variables, grappler,
# tf.data, TF kernels): a zf-* variant with one of them runs on the TensorFlow backend only.
TF_ONLY_MODIFIERS = {"fusedbn", "amp", "inter", "intra", "caller", "sysalloc", "nomemopt",
                     "fpmath", "noprefetch", "bf16in"}


# --------------------------------------------------------------------------- variant parsing


def parse_variant(name: str) -> dict:
    """``'zf-bf16-fit+inter1+kerasadam'`` -> a dict describing the run; raises ValueError.
    A zf-* variant may end in ``@jax`` or ``@torch``: the same run on that Keras backend
    (NumPy arrays in place of tf.data; no TensorFlow-only modifiers)."""
    body, _, backend = name.partition("@")
    backend = backend or "tensorflow"
    base, *mods = body.split("+")
    if backend not in KERAS_BACKENDS:
        raise ValueError(f"unknown Keras backend {backend!r} in {name!r}; known: "
                         f"{list(KERAS_BACKENDS)}")
    if base in TORCH_BASES:
        if mods:
            raise ValueError(f"PyTorch variant {base!r} takes no modifiers")
        if "@" in name:
            raise ValueError(f"PyTorch variant {base!r} takes no Keras backend")
        label, precision, autocast, cl = TORCH_BASES[base]
        return {"name": name, "framework": "torch", "label": label, "precision": precision,
                "autocast": autocast, "channels_last": cl, "env": {}}
    if base not in ZF_BASES:
        known = sorted(TORCH_BASES) + sorted(ZF_BASES)
        raise ValueError(f"unknown variant {base!r}; known: {known}")
    label, precision, mode = ZF_BASES[base]
    spec = {"name": name, "framework": "zf_unet", "precision": precision, "mode": mode,
            "jit": None, "spe": 1, "inter": None, "intra": None, "env": {}, "fusedbn": False,
            "bnf32": False, "kerasbn": False, "optimizer": "adam", "loss_bf16": False,
            "prefetch": True,
            "bf16_input": False, "metrics": False, "muldrop": False, "amp": False,
            "unfused": False, "backend": backend}
    descr = []
    for mod in mods:
        key = mod.rstrip("0123456789")
        num = mod[len(key):]
        if backend != "tensorflow" and (key if num else mod) in TF_ONLY_MODIFIERS:
            raise ValueError(f"modifier {mod!r} changes TensorFlow itself; {name!r} runs on "
                             f"the {backend} backend")
        if num and key in ("spe", "inter", "intra", "omp"):
            n = int(num)
            if key == "spe":
                spec["spe"] = n
            elif key == "omp":
                spec["env"]["OMP_NUM_THREADS"] = str(n)
            else:
                spec[key] = n
            descr.append(MODIFIERS[f"{key}<N>"][0].replace("N", str(n)))
            continue
        if mod not in MODIFIERS:
            raise ValueError(f"unknown modifier {mod!r}; known: {sorted(MODIFIERS)}")
        text, env = MODIFIERS[mod]
        spec["env"].update(env)
        descr.append(text)
        if mod == "jitF":
            spec["jit"] = False
        elif mod == "xla":
            spec["jit"] = True
        elif mod == "fusedbn":
            spec["fusedbn"] = True
        elif mod == "bnf32":
            spec["bnf32"] = True
        elif mod == "kerasbn":
            spec["kerasbn"] = True
        elif mod in ("kerasadam", "adamw"):
            spec["optimizer"] = mod
        elif mod == "lossbf16":
            spec["loss_bf16"] = True
        elif mod == "noprefetch":
            spec["prefetch"] = False
        elif mod == "bf16in":
            spec["bf16_input"] = True
        elif mod == "metrics":
            spec["metrics"] = True
        elif mod == "muldrop":
            spec["muldrop"] = True
        elif mod == "amp":
            spec["amp"] = True
        elif mod == "unfused":
            spec["unfused"] = True
    spec["label"] = label + "".join(f" +{m}" for m in mods)
    if backend != "tensorflow":
        spec["label"] = (spec["label"].replace("(tf.data)", "(NumPy arrays)")
                         + f", Keras/{backend}")
    spec["descr"] = dict(zip(mods, descr))
    return spec


def expand_backends(variants: list[str], backends: list[str]) -> tuple[list[str], list[str]]:
    """Each zf-* variant without ``@backend`` once per Keras backend in ``backends``, in
    place (so the rounds interleave the backends); PyTorch variants and ``@``-variants as
    given. Returns the list and notes on variants that run on TensorFlow only."""
    out: list[str] = []
    notes: list[str] = []
    for v in variants:
        if not v.startswith("zf") or "@" in v:
            out.append(v)
            continue
        tf_only = any(m.rstrip("0123456789") in TF_ONLY_MODIFIERS
                      for m in v.split("+")[1:])
        for b in backends:
            if b == "tensorflow":
                out.append(v)
            elif tf_only:
                notes.append(f"{v}: TensorFlow-only modifier, not run on {b}")
            else:
                out.append(f"{v}@{b}")
    return out, notes


# --------------------------------------------------------------------------- data


def make_batches(n_batches: int, batch: int, size: int, seed: int = 0, model: str = "zf224"):
    """``n_batches * batch`` random images in [0, 1) (NHWC float32) and binary masks; for
    ``model="isbi"`` one-channel images and a third array, per-pixel weights in [1, 11) (what
    the recipe's border weight maps hold)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = 1 if model == "isbi" else 3
    x = rng.random((n_batches * batch, size, size, c), dtype=np.float32)
    y = (rng.random((n_batches * batch, size, size, 1)) > 0.5).astype(np.float32)
    if model == "isbi":
        w = 1.0 + 10.0 * rng.random((n_batches * batch, size, size, 1), dtype=np.float32)
        return x, y, w
    return x, y


def isbi_config():
    """``configs/isbi2012.toml`` (the recipe whose model and loss ``--model isbi`` trains)."""
    from zf_unet.config import Config

    return Config.from_toml(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                         "configs", "isbi2012.toml"))


class StepClock:
    """Per-step wall time plus the share of the machine's CPU time that *other* processes
    (and hypervisor steal) used meanwhile, from ``/proc/stat`` and ``/proc/self/stat``.

    On a shared machine a step during which another job ran is slower for reasons that have
    nothing to do with the code measured; such steps are reported but not used for the median
    when enough quiet ones exist (see ``--quiet``)."""

    def __init__(self, quiet: float):
        self.quiet = quiet
        self.ncpu = max(1, sum(1 for ln in open("/proc/stat") if ln[:3] == "cpu" and ln[3] != " ")
                        ) if os.path.exists("/proc/stat") else 1
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.steps: list[tuple[float, float]] = []
        self._last = None

    @staticmethod
    def _read() -> tuple[float, int, int]:
        t = time.perf_counter()
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                v = [int(a) for a in fh.readline().split()[1:]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
            with open("/proc/self/stat", encoding="ascii") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            own = int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            busy = own = 0
        return t, busy, own

    def start(self) -> None:
        self._last = self._read()

    def stop(self) -> tuple[float, float]:
        """Record and return ``(seconds, foreign CPU share)`` since :meth:`start`."""
        now = self._read()
        dt = now[0] - self._last[0]
        foreign = max(0, (now[1] - self._last[1]) - (now[2] - self._last[2]))
        self.steps.append((dt, foreign / (self.hz * self.ncpu * dt)))
        return self.steps[-1]

    def wait_quiet(self, budget: list[float]) -> None:
        """Sleep in 0.5 s slices while other processes keep the CPUs busy, spending at most
        ``budget[0]`` seconds in all (the list is updated in place)."""
        while budget[0] > 0:
            a = self._read()
            time.sleep(0.5)
            b = self._read()
            budget[0] -= b[0] - a[0]
            busy = max(0, (b[1] - a[1]) - (b[2] - a[2])) / (self.hz * self.ncpu * (b[0] - a[0]))
            if busy < self.quiet:
                return

    def n_quiet(self) -> int:
        return sum(1 for _, f in self.steps if f < self.quiet)


# --------------------------------------------------------------------------- PyTorch child


def torch_stepper(spec: dict, args: argparse.Namespace, all_cores: bool = False):
    """``(step, info)``: ``step(i)`` runs one PyTorch training step on batch ``i % 4`` and
    returns the loss; ``info`` describes the model and the build. ``all_cores``: use one
    thread per core whatever ``OMP_NUM_THREADS`` says (the paired reference)."""
    import numpy as np
    import torch

    if all_cores:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                              else (os.cpu_count() or 1))

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_unet import ZFUNet224, bce_dice_loss, keras_param_count, weighted_bce_loss

    torch.manual_seed(0)
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    isbi = args.model == "isbi"
    if isbi:  # build_unet(depth=5, filters=16, batch_norm, nearest), 1 channel, no dropout
        m = isbi_config().model
        model = ZFUNet224(in_channels=1, num_classes=1, dropout=m.dropout,
                          filters=tuple(m.filters * 2 ** lv for lv in range(m.depth)),
                          head_bn=False)  # build_unet's default: no BatchNorm in the head
    else:
        model = ZFUNet224()
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    arrays = make_batches(4, args.batch, args.size, model=args.model)
    split = [torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).split(args.batch)
             for a in arrays]
    xs = [t.contiguous(memory_format=fmt) for t in split[0]]
    ys = split[1]
    ws = split[2] if isbi else None

    def step(i: int) -> float:
        xb, yb = xs[i % len(xs)], ys[i % len(ys)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["autocast"]):
            probs = model(xb)
        # float32, outside autocast
        loss = (weighted_bce_loss(probs, yb, ws[i % len(ws)]) if isbi
                else bce_dice_loss(probs, yb))
        loss.backward()
        opt.step()
        return float(loss)

    info = {"params": keras_param_count(model), "threads": torch.get_num_threads(),
            "version": torch.__version__,
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}
    return step, info


def run_torch(spec: dict, args: argparse.Namespace) -> dict:
    step, info = torch_stepper(spec, args)
    warm, losses = [], []
    for i in range(args.warmup):
        t0 = time.perf_counter()
        losses.append(step(i))
        warm.append(time.perf_counter() - t0)
    clock = StepClock(args.quiet)
    i = args.warmup
    budget = [float(args.wait)]
    while clock.n_quiet() < args.steps and len(clock.steps) < args.steps * args.patience:
        clock.wait_quiet(budget)
        clock.start()
        losses.append(step(i))
        clock.stop()
        i += 1
    return {"steps": clock.steps, "warmup_times": warm, "loss_first": losses[0],
            "loss_last": losses[-1], **info}


# --------------------------------------------------------------------------- zf_unet child


def _fused_bn_class():
    import keras
    import tensorflow as tf

    class FusedBatchNorm(keras.layers.BatchNormalization):
        """Keras BatchNormalization computed by TensorFlow's fused kernel (NHWC, axis -1)."""

        def call(self, inputs, training=None, mask=None):
            if (mask is not None or self.renorm or self.synchronized or len(inputs.shape) != 4
                    or self.axis not in (-1, 3)):
                return super().call(inputs, training=training, mask=mask)
            c = inputs.shape[-1]
            gamma = self.gamma.value if self.scale else tf.ones((c,), tf.float32)
            beta = self.beta.value if self.center else tf.zeros((c,), tf.float32)
            x = tf.cast(inputs, self.compute_dtype)
            if training and self.trainable:
                y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                    x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
                # The fused kernel returns the Bessel-corrected variance; Keras keeps the biased
                # one, so undo the n / (n - 1) factor to match keras.layers.BatchNormalization.
                n = tf.cast(tf.size(x) // c, tf.float32)
                var = var * (n - 1.0) / tf.maximum(n, 2.0)
                m = self.momentum
                self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
                self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
            else:
                y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    x, gamma, beta, mean=self.moving_mean.value,
                    variance=self.moving_variance.value, epsilon=self.epsilon,
                    data_format="NHWC", is_training=False)
            return tf.cast(y, self.compute_dtype)

    return FusedBatchNorm


def _mul_dropout_class():
    import keras
    from keras import ops

    class MulSpatialDropout2D(keras.layers.SpatialDropout2D):
        """``SpatialDropout2D`` as ``x * mask``, the ``(B, 1, 1, C)`` mask holding 0 or
        ``1 / (1 - rate)``: one broadcast multiply forward and backward instead of
        ``tf.nn.experimental.stateless_dropout``'s full-size select."""

        def call(self, inputs, training=False):
            if not (training and self.rate > 0) or self.data_format != "channels_last":
                return super().call(inputs, training=training)
            shape = ops.shape(inputs)
            u = keras.random.uniform((shape[0], 1, 1, shape[3]), seed=self.seed_generator)
            keep = ops.cast(u >= self.rate, inputs.dtype) * (1.0 / (1.0 - self.rate))
            return inputs * keep

    return MulSpatialDropout2D


def build_zf(spec: dict):
    """The compiled ``zf_unet.ZF_UNET_224()`` of a zf-* variant; returns ``(model, policy)``.
    TensorFlow is imported here only for the TensorFlow-only modifiers (Keras imports it on
    its TensorFlow backend in any case)."""
    if spec["inter"] is not None or spec["intra"] is not None or spec["amp"]:
        import tensorflow as tf
    if spec["inter"] is not None:
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter"])
    if spec["intra"] is not None:
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra"])
    if spec["amp"]:
        tf.config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": True})

    import keras

    import zf_unet
    from zf_unet.losses import BCEDiceLoss
    from zf_unet.precision import precision_scope

    keras.utils.set_random_seed(0)
    with precision_scope(spec["precision"]) as policy:
        if spec["model"] == "isbi":
            from zf_unet.training import make_model

            model = make_model(isbi_config(), channels=1)
        else:
            model = zf_unet.ZF_UNET_224()
        if spec["fusedbn"] or spec["bnf32"] or spec["muldrop"] or spec["kerasbn"]:
            bn_cls = _fused_bn_class() if spec["fusedbn"] else keras.layers.BatchNormalization
            drop_cls = (_mul_dropout_class() if spec["muldrop"]
                        else keras.layers.SpatialDropout2D)

            def clone(layer):
                cfg = layer.get_config()
                if isinstance(layer, keras.layers.BatchNormalization):
                    if spec["bnf32"]:
                        cfg["dtype"] = "float32"
                    if not (spec["fusedbn"] or spec["bnf32"] or spec["kerasbn"]):
                        return layer.__class__.from_config(cfg)
                    return bn_cls.from_config(cfg)
                if isinstance(layer, keras.layers.SpatialDropout2D):
                    return drop_cls.from_config(cfg)
                return layer.__class__.from_config(cfg)

            model = keras.models.clone_model(model, clone_function=clone)
        if spec["unfused"]:
            model = zf_unet.models.unfused_copy(model)

    if spec["optimizer"] == "kerasadam":
        optimizer = keras.optimizers.Adam()
    elif spec["optimizer"] == "adamw":
        optimizer = keras.optimizers.AdamW()
    else:
        from zf_unet.optimizers import FusedAdam

        optimizer = FusedAdam()
    loss = BCEDiceLoss()
    if spec["model"] == "isbi":
        from zf_unet.training import make_loss

        loss = make_loss(isbi_config(), 1)  # weighted_ce: the border weights as sample_weight
    if spec["loss_bf16"]:
        from keras import ops

        class BCEDiceLossBF16(BCEDiceLoss):
            def call(self, y_true, y_pred):
                t = ops.cast(y_true, "bfloat16")
                p = ops.clip(ops.cast(y_pred, "bfloat16"), 1.0 / 128, 1.0 - 1.0 / 128)
                ce = -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))[..., 0]
                inter = ops.sum(t * p, axis=(1, 2, 3))
                dice = (2.0 * inter + 1.0) / (ops.sum(t, axis=(1, 2, 3))
                                              + ops.sum(p, axis=(1, 2, 3)) + 1.0)
                out = self.bce_weight * ce + self.dice_weight * (1.0 - dice)[:, None, None]
                return ops.cast(out, "float32")

        loss = BCEDiceLossBF16()
    compile_kwargs = {"optimizer": optimizer, "loss": loss}
    if spec["metrics"]:
        from zf_unet import metrics as zm

        compile_kwargs["metrics"] = [zm.DiceCoefficient(), zm.IoU(),
                                     zm.DiceCoefficient(target_class_ids=[0, 1], name="dice_mean")]
    if spec["jit"] is not None:
        compile_kwargs["jit_compile"] = spec["jit"]
    if spec["spe"] != 1:
        compile_kwargs["steps_per_execution"] = spec["spe"]
    model.compile(**compile_kwargs)
    return model, policy


def _sync(backend: str, tree) -> None:
    """Wait for the arrays in ``tree`` (JAX dispatches asynchronously; TensorFlow's and
    PyTorch's CPU steps have finished when they return)."""
    if backend == "jax":
        import jax

        jax.block_until_ready(tree)


def run_zf(spec: dict, args: argparse.Namespace) -> dict:
    """Time a zf-* variant in this process (its Keras backend: ``KERAS_BACKEND``, which the
    parent sets to the variant's). On JAX and PyTorch, ``fit`` reads NumPy arrays (4 batches
    an epoch; the end-of-epoch work falls between timed steps) and ``train_on_batch`` takes
    NumPy batches."""
    spec = {**spec, "model": args.model}
    model, policy = build_zf(spec)  # first: thread settings must precede any TensorFlow op
    import keras

    backend = keras.backend.backend()
    if backend != spec["backend"]:
        raise RuntimeError(f"{spec['name']}: Keras runs on {backend!r}, expected "
                           f"{spec['backend']!r} (KERAS_BACKEND)")
    tf = None
    if backend == "tensorflow":
        import tensorflow as tf

    params = model.count_params()

    # --paired: after every timed zf_unet step (execution), one PyTorch bf16 channels-last
    # step in the same process, so both see the same machine load; the per-pair time ratio
    # is then robust against other jobs on a shared machine.
    ref_step, ref_info = (torch_stepper(parse_variant(REFERENCE), args, all_cores=True)
                          if args.paired else (None, None))
    ref_clock = StepClock(args.quiet)
    clock = StepClock(args.quiet)
    spe = spec["spe"]
    warm_exec = max(1, math.ceil(args.warmup / spe))
    want = max(5, math.ceil(args.steps / spe)) if spe > 1 else args.steps
    limit = want * args.patience

    def n_done() -> int:
        if ref_step is None:
            return clock.n_quiet()
        return sum(1 for a, b in zip(clock.steps, ref_clock.steps)
                   if a[1] < args.quiet and b[1] < args.quiet)

    budget = [float(args.wait)]

    def after_step(k: int) -> bool:
        """Called after execution ``k`` (0-based, warm-up included); True = stop."""
        if ref_step is not None:
            if k == 0:
                for j in range(max(1, args.warmup)):  # warm the reference up too
                    ref_step(j)
            elif k >= warm_exec:
                clock.wait_quiet(budget)
                ref_clock.start()
                ref_step(k)
                ref_clock.stop()
        done = k >= warm_exec - 1 and (n_done() >= want or len(clock.steps) >= limit)
        if not done and k >= warm_exec - 1:
            clock.wait_quiet(budget)
        return done

    n_batches = 4 if tf is not None else 4 * spe  # an epoch of NumPy data: whole executions
    arrays = make_batches(n_batches, args.batch, args.size, model=args.model)
    x, y = arrays[:2]
    warm: list[float] = []
    if spec["mode"] == "fit" and tf is None:
        fit_data = dict(x=x, y=y, sample_weight=arrays[2] if len(arrays) > 2 else None,
                        batch_size=args.batch, shuffle=False,
                        epochs=math.ceil((warm_exec + limit) / (n_batches // spe)))
    elif spec["mode"] == "fit":
        ds = tf.data.Dataset.from_tensor_slices(arrays)
        if spec["bf16_input"]:
            ds = ds.map(lambda a, *rest: (tf.cast(a, tf.bfloat16), *rest))
        ds = ds.batch(args.batch, drop_remainder=True).repeat()
        if spec["prefetch"]:  # zf_unet's pipelines end so: prefetch, no autotune thread
            from zf_unet.data import finish_pipeline

            ds = finish_pipeline(ds)
        fit_data = dict(x=ds, epochs=1, steps_per_epoch=(warm_exec + limit) * spe)
    if spec["mode"] == "fit":
        # One callback per execution of `spe` steps: time executions, report per step.
        count = [0]

        class Stamp(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                clock.start()

            def on_train_batch_end(self, batch, logs=None):
                _sync(backend, logs)
                dt, _ = clock.stop()
                k = count[0]
                count[0] += 1
                if k < warm_exec:
                    clock.steps.pop()
                    warm.append(dt / spe)
                if after_step(k):
                    self.model.stop_training = True

        hist = model.fit(**fit_data, verbose=0, callbacks=[Stamp()])
        clock.steps = [(dt / spe, f) for dt, f in clock.steps]
        loss_first = loss_last = float(hist.history["loss"][-1])
    else:
        const = tf.constant if tf is not None else (lambda a: a)
        xs = [const(x[i:i + args.batch]) for i in range(0, len(x), args.batch)]
        if spec["bf16_input"]:
            xs = [tf.cast(t, tf.bfloat16) for t in xs]
        ys = [const(y[i:i + args.batch]) for i in range(0, len(y), args.batch)]
        ws = ([const(arrays[2][i:i + args.batch]) for i in range(0, len(y), args.batch)]
              if len(arrays) > 2 else None)
        losses = []
        k = 0
        while True:
            clock.start()
            out = model.train_on_batch(xs[k % len(xs)], ys[k % len(ys)],
                                       sample_weight=None if ws is None else ws[k % len(ws)])
            dt, _ = clock.stop()
            losses.append(float(out if not isinstance(out, list) else out[0]))
            if k < warm_exec:
                clock.steps.pop()
                warm.append(dt)
            if after_step(k):
                break
            k += 1
        loss_first, loss_last = losses[0], losses[-1]
    extra = {}
    if ref_step is not None:
        extra = {"ref_steps": ref_clock.steps, "ref_info": ref_info}
    return {**extra, "steps": clock.steps, "warmup_times": warm, "params": params, "policy": policy,
            "jit_compile": model.jit_compile, "run_eagerly": model.run_eagerly,
            "steps_per_execution": model.steps_per_execution,
            "loss_first": loss_first, "loss_last": loss_last, "backend": backend,
            "tensorflow_imported": sys.modules.get("tensorflow") is not None,
            "inter": tf.config.threading.get_inter_op_parallelism_threads() if tf else None,
            "intra": tf.config.threading.get_intra_op_parallelism_threads() if tf else None}


# --------------------------------------------------------------------------- parent


def run_child(name: str, args: argparse.Namespace) -> dict:
    spec = parse_variant(name)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "backend" in spec:  # a zf-* variant: its own Keras backend, whatever the caller's
        env["KERAS_BACKEND"] = spec["backend"]
    else:
        env.setdefault("KERAS_BACKEND", "tensorflow")
    env.update(spec["env"])
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--size", str(args.size),
           "--model", args.model,
           "--quiet", str(args.quiet), "--patience", str(args.patience), "--wait", str(args.wait)]
    cmd.append("--paired" if args.paired and spec["framework"] == "zf_unet" else "--no-paired")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res["wall_s"] = wall
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def pick_steps(runs: list[dict], quiet: float) -> tuple[list[float], int, int]:
    """Step times of the quiet steps of ``runs`` (all steps if fewer than 5 are quiet),
    the number of quiet steps and of all steps."""
    steps = [s for r in runs for s in r["steps"]]
    calm = [dt for dt, foreign in steps if foreign < quiet]
    return (calm if len(calm) >= 5 else [dt for dt, _ in steps]), len(calm), len(steps)


def paired_ratio(runs: list[dict], quiet: float) -> tuple[float, int, int] | None:
    """Median over step pairs of (PyTorch reference step time / zf_unet step time), i.e. the
    zf_unet speed relative to the reference measured at the same moment; pairs where either
    step was not quiet are left out when at least 5 quiet pairs exist."""
    pairs = [(a, b) for r in runs if "ref_steps" in r for a, b in zip(r["steps"], r["ref_steps"])]
    if not pairs:
        return None
    calm = [(a, b) for a, b in pairs if a[1] < quiet and b[1] < quiet]
    use = calm if len(calm) >= 5 else pairs
    return statistics.median(b[0] / a[0] for a, b in use), len(calm), len(pairs)


def fmt(v: float) -> str:
    return f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (>= 5; 7)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (3)")
    p.add_argument("--model", choices=("zf224", "isbi"), default="zf224",
                   help="zf224: ZF_UNET_224, 3 channels, BCE+Dice (default); isbi: the "
                        "configs/isbi2012.toml model (depth 5, 16 filters, 1 channel) with its "
                        "border-weighted cross-entropy; give --batch 4 --size 256 for the recipe")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="image side (multiple of 32)")
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"variants to run (default: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--backends", default="tensorflow",
                   help="comma-separated Keras backends (tensorflow, jax, torch) each zf-* "
                        "variant runs on, one worker process each, interleaved in every round "
                        "(default: tensorflow). A variant may also name one: zf-bf16-fit@jax")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the variant list this many times interleaved; steps are pooled")
    p.add_argument("--quick", action="store_true",
                   help=f"5 steps, 2 warm-up, variants {' '.join(QUICK_VARIANTS)}")
    p.add_argument("--quiet", type=float, default=0.1,
                   help="a step is 'quiet' when other processes used less than this share of "
                        "all CPUs meanwhile (0.1)")
    p.add_argument("--patience", type=int, default=3,
                   help="time up to PATIENCE*STEPS steps to collect STEPS quiet ones (3)")
    p.add_argument("--wait", type=float, default=60,
                   help="seconds each variant process may sleep, in all, waiting for other "
                        "processes to leave the CPUs before a timed step (60)")
    p.add_argument("--no-paired", dest="paired", action="store_false",
                   help="do not interleave PyTorch reference steps with the zf_unet steps")
    p.add_argument("--paired", dest="paired", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=int, default=600, help="seconds per variant process")
    p.add_argument("--json", help="also write all raw results to this JSON file")
    p.add_argument("--list", action="store_true", help="list variants and modifiers and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (5 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)

    if args.child:
        spec = parse_variant(args.child)
        if spec.get("backend", "tensorflow") != "tensorflow":
            # as on a JAX / PyTorch machine without TensorFlow (keras.utils.set_random_seed
            # would otherwise import it, to seed it too)
            sys.modules.setdefault("tensorflow", None)
        res = run_torch(spec, args) if spec["framework"] == "torch" else run_zf(spec, args)
        print(RESULT_TAG + json.dumps(res), flush=True)
        return 0

    if args.list:
        for k, v in {**TORCH_BASES, **ZF_BASES}.items():
            print(f"{k:16s} {v[0]} [{v[1]}]")
        print("\nmodifiers for zf-* variants (join with '+'):")
        for k, (d, _) in MODIFIERS.items():
            print(f"  +{k:12s} {d}")
        print("\nKeras backend of a zf-* variant: append @jax or @torch (default TensorFlow; "
              "--backends runs each on several); TensorFlow-only modifiers: "
              + ", ".join(sorted(TF_ONLY_MODIFIERS)))
        return 0
    if args.steps < 5:
        p.error("--steps must be >= 5 (the median of at least 5 timed steps)")
    if args.size % 32:
        p.error("--size must be a multiple of 32 (ZF_UNET_224 has 5 poolings)")
    if args.model == "zf224" and args.size != 224 and any(
            v.startswith("zf") for v in (args.variants or ["zf"])):
        p.error("--size: ZF_UNET_224 takes 224x224 inputs only (--model isbi takes any "
                "multiple of 32)")

    variants = args.variants or (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in KERAS_BACKENDS]
    if bad or not backends:
        p.error(f"--backends: unknown {bad}; choose from {', '.join(KERAS_BACKENDS)}")
    variants, notes = expand_backends(variants, list(dict.fromkeys(backends)))
    for note in notes:
        print(note, flush=True)
    try:
        for v in variants:
            parse_variant(v)
    except ValueError as exc:
        p.error(str(exc))
    missing = {b for b in KERAS_BACKENDS
               if importlib.util.find_spec(BACKEND_PACKAGES[b]) is None}
    for b in sorted(missing - {"torch"}):
        if any(parse_variant(v).get("backend") == b for v in variants):
            print(f"{b} is not installed: skipping the Keras/{b} rows", flush=True)
            variants = [v for v in variants if parse_variant(v).get("backend") != b]
    has_torch = "torch" not in missing
    if not has_torch:
        print("PyTorch is not installed: running only the zf_unet rows. For the comparison "
              "install the CPU wheel: pip install torch==2.13.0", flush=True)
        variants = [v for v in variants if not v.startswith("torch") and not v.endswith("@torch")]
        args.paired = False

    info = machine_info("torch", "jax")
    load0 = os.getloadavg()
    title = ("ISBI 2012 recipe model (depth 5, 16 filters), weighted CE" if args.model == "isbi"
             else "ZF_UNET_224, BCE+Dice")
    print(f"# {title} training speed: batch {args.batch}, {args.size}x{args.size}x"
          f"{1 if args.model == 'isbi' else 3}, Adam; median of {args.steps} steps after {args.warmup} warm-up, "
          f"{args.rounds} round(s)", flush=True)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            res = run_child(v, args)
            results[v].append(res)
            if "error" in res:
                print(f"  round {r + 1} {v}: ERROR {res['error']}", flush=True)
            else:
                times, nq, n = pick_steps([res], args.quiet)
                print(f"  round {r + 1} {v}: {args.batch / statistics.median(times):.2f} img/s, "
                      f"{nq}/{n} quiet steps ({res['wall_s']:.0f} s incl. start-up)", flush=True)
    load1 = os.getloadavg()

    rows = []
    ref_ips = None
    ref_round: list[float | None] = [None] * args.rounds
    for v in dict.fromkeys(variants):  # a variant listed twice is pooled into one row
        ok = [r for r in results[v] if "error" not in r]
        if not ok:
            continue
        times, nq, n = pick_steps(ok, args.quiet)
        ips = [args.batch / t for t in times]
        med = args.batch / statistics.median(times)
        rows.append((v, med, min(ips), max(ips), nq, n, ok))
        if v == REFERENCE:
            ref_ips = med
            ref_round = [None if "error" in r else
                         args.batch / statistics.median(pick_steps([r], args.quiet)[0])
                         for r in results[v]]

    print()
    per_round = args.rounds > 1 and ref_ips is not None and len(set(variants)) == len(variants)
    any_paired = any("ref_steps" in r for row in rows for r in row[-1])
    head = ("| framework / variant | precision | img/s median | min..max | "
            "ratio vs PyTorch bf16 CL | quiet steps |")
    sep = "|---|---|---:|---:|---:|---:|"
    if any_paired:
        head += " paired ratio (quiet pairs) |"
        sep += "---:|"
    if per_round:
        head += " ratio per round |"
        sep += "---|"
    print(head)
    print(sep)
    for v, med, lo, hi, nq, n, ok in rows:
        spec = parse_variant(v)
        if any(not math.isfinite(r["loss_last"]) for r in ok):
            spec["label"] += " **(loss NaN)**"
        ratio = f"{med / ref_ips:.2f}x" if ref_ips else "n/a"
        line = (f"| {spec['label']} | {spec['precision']} | {fmt(med)} | "
                f"{fmt(lo)}..{fmt(hi)} | {ratio} | {nq}/{n}{'' if nq >= 5 else ' (noisy)'} |")
        if any_paired:
            pr = paired_ratio(ok, args.quiet)
            line += (" 1.00x (reference) |" if v == REFERENCE else " - |" if pr is None else
                     f" {pr[0]:.2f}x ({pr[1]}/{pr[2]}{'' if pr[1] >= 5 else ', noisy'}) |")
        if per_round:
            rr = []
            for r, ref in zip(results[v], ref_round):
                if "error" in r or ref is None:
                    rr.append("-")
                else:
                    ips_r = args.batch / statistics.median(pick_steps([r], args.quiet)[0])
                    rr.append(f"{ips_r / ref:.2f}")
            line += " " + " / ".join(rr) + " |"
        print(line)
    for v in dict.fromkeys(variants):
        for r in results[v]:
            if "error" in r:
                print(f"| `{v}` | | failed: {r['error'][:200]} | | | |")
    used = {m: d for v in dict.fromkeys(variants)
            for m, d in parse_variant(v).get("descr", {}).items()}
    if used:
        print("\nModifiers: " + "; ".join(f"`+{m}` = {d}" for m, d in used.items()) + ".")
    print(f"\nimg/s = batch / step time; median over the timed steps during which other "
          f"processes used < {args.quiet:.0%} of the CPUs ('quiet'; all steps if fewer than 5 "
          "were quiet), pooled over rounds.")
    if any_paired:
        print("Paired ratio: in each zf_unet process one PyTorch bf16 channels-last step runs "
              "after every zf_unet step; median over step pairs of (PyTorch step time / zf_unet "
              "step time). Both halves of a pair see the same machine load, so this is the "
              "ratio to trust on a shared machine.")
    print()
    zf_params = next((r[-1][0]["params"] for r in rows if r[0].startswith("zf")), None)
    pt_params = next((r[-1][0]["params"] for r in rows if r[0].startswith("torch")), None)
    if zf_params is not None:
        print(f"zf_unet model count_params() = {zf_params:,}")
    if pt_params is not None:
        print(f"PyTorch ZFUNet224 parameters (+ BatchNorm running mean/var) = {pt_params:,}")
    if zf_params is not None and pt_params is not None:
        print("parameter counts " + ("match" if zf_params == pt_params else "DIFFER"))
    for v, *_rest, ok in rows:
        r = ok[0]
        if v.startswith("zf"):
            print(f"{v}: policy={r['policy']} jit_compile={r['jit_compile']} "
                  f"run_eagerly={r.get('run_eagerly')} "
                  f"steps_per_execution={r['steps_per_execution']} inter_op={r['inter']} "
                  f"intra_op={r['intra']} loss {r['loss_first']:.4f}"
                  + ("" if r.get("backend", "tensorflow") == "tensorflow" else
                     f" backend={r['backend']}"))
        else:
            print(f"{v}: torch {r['version']} threads={r['threads']} "
                  f"mkldnn_bf16={r['mkldnn_bf16']} loss {r['loss_first']:.4f} -> "
                  f"{r['loss_last']:.4f}")
    print(f"\nMachine: {info['cpu']} ({info['isa']}), {info['cores']} cores; Python "
          f"{info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
          f"PyTorch {info['torch']}"
          + (f", JAX {info['jax']}" if any(v.endswith("@jax") for v in variants) else "")
          + f"; {info['date']}; load average "
          f"{load0[0]:.2f} at start, {load1[0]:.2f} at end")
    print("Command: python " + " ".join(["benchmarks/train_speed.py", *(argv or sys.argv[1:])]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "machine": info, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
