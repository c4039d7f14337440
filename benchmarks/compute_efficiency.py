"""How much of this CPU's bfloat16 matmul peak U-Net inference and training reach, zf_unet
against PyTorch on the same network (Step 14).

* Model: the paper-sized U-Net, ``zf_unet.build_unet((512, 512, 1), depth=5, filters=64)``
  (64..1024 filters, ``padding="same"``, BatchNorm, nearest upsampling, 1 sigmoid output),
  built under ``mixed_bfloat16``; PyTorch runs its twin with the same weights
  (``torch_unet.from_keras``) under ``torch.autocast("cpu", torch.bfloat16)``, channels-last.
* FLOPs: 2 x multiply-adds of every convolution, counted from the Keras layers and checked
  against ``torch.utils.flop_counter.FlopCounterMode`` on the twin (the script stops if they
  differ). A training step is counted as 3x the forward FLOPs (forward + the two backward
  products), the usual convention; BatchNorm, ReLU, pooling and the optimizer are not
  counted, so the percentages are of useful work.
* Peak: the best rate of two bf16 kernels, each in both frameworks, after warm-up: ``--n`` x
  ``--n`` matrix products (``tf.linalg.matmul``, ``torch.mm``; float32 too, for scale) and one
  3x3 convolution of the U-Net's third level (4 x 128 x 128 x 256 -> 256 channels,
  ``tf.nn.conv2d`` NHWC, ``torch.nn.functional.conv2d`` channels-last): on CPUs where the
  bf16 GEMM is not the fastest bf16 kernel, the convolution is the fairer peak.
* Inference: ``--batch`` images of 512x512 through the model (zf_unet: one traced
  ``tf.function`` of ``model(x, training=False)``, what ``predict_on_batch`` and
  ``predict_tiled`` run; PyTorch: ``inference_mode``). Training: one optimizer step on
  ``--train-batch`` images (zf_unet: ``train_on_batch`` with ``FusedAdam`` and BCE + Dice, as
  ``zf-unet train`` compiles; PyTorch: Adam and the same loss, ``benchmarks/torch_unet.py``).
* Every round runs each measurement once, in the same process, alternating the frameworks;
  medians over ``--rounds``.

Run (about 6 minutes on 2 cores):
    python benchmarks/compute_efficiency.py
    python benchmarks/compute_efficiency.py --rounds 3 --size 256     # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info  # noqa: E402


def keras_conv_flops(model) -> int:
    """2 x multiply-adds of every ``Conv2D`` in ``model`` for one image."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += 2 * int(h) * int(w) * int(kh) * int(kw) * int(c_in) * int(c_out)
    return total


def torch_flops(net, size: int) -> int:
    """FLOPs of one forward pass of ``net`` on a ``(1, 1, size, size)`` image, by PyTorch's
    own counter (convolutions and matrix products, 2 x multiply-adds)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.zeros(1, 1, size, size))
    return int(counter.get_total_flops())


def timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2, help="images per inference call")
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096, help="matrix side for the peak")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compute_efficiency.json"))
    args = ap.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    import torch

    import zf_unet
    from torch_unet import bce_dice_loss, from_keras
    from zf_unet.losses import BCEDiceLoss
    from zf_unet.optimizers import FusedAdam
    from zf_unet.precision import precision_scope

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    load_start = os.getloadavg()[0]
    keras.utils.set_random_seed(0)
    with precision_scope("mixed_bfloat16"):
        # unfused decoders: every multiply-add counted is one the hardware does (the fused
        # FusedUpsampleConv layers skip some; see benchmarks/RESULTS.md)
        model = zf_unet.build_unet((args.size, args.size, 1), depth=5, filters=args.filters,
                                   fuse_upsampling=False)
    flops = keras_conv_flops(model)
    net = from_keras(model)
    pt_flops = torch_flops(net, args.size)
    if pt_flops != flops:
        raise SystemExit(f"FLOP counts differ: Keras layers {flops:,}, PyTorch counter "
                         f"{pt_flops:,}; the twin is not the same network")
    params = model.count_params()

    # ---- peak: bf16 and fp32 matrix products
    n = args.n
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    tf_mm = {dt: (tf.constant(a_np, dt), tf.constant(b_np, dt)) for dt in (tf.bfloat16,
                                                                          tf.float32)}
    pt_mm = {dt: (torch.from_numpy(a_np).to(dt), torch.from_numpy(b_np).to(dt))
             for dt in (torch.bfloat16, torch.float32)}
    mm = tf.function(lambda a, b: tf.linalg.matmul(a, b))
    conv_x = rng.standard_normal((4, 128, 128, 256), np.float32)
    conv_k = rng.standard_normal((3, 3, 256, 256), np.float32) * 0.02
    tf_cx, tf_ck = tf.constant(conv_x, tf.bfloat16), tf.constant(conv_k, tf.bfloat16)
    tf_conv = tf.function(lambda a, k: tf.nn.conv2d(a, k, 1, "SAME"))
    pt_cx = torch.from_numpy(conv_x.transpose(0, 3, 1, 2).copy()).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    pt_ck = torch.from_numpy(conv_k.transpose(3, 2, 0, 1).copy()).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    conv_flops = 2 * 4 * 128 * 128 * 9 * 256 * 256

    def tf_conv_bf16() -> None:
        tf_conv(tf_cx, tf_ck).numpy()

    def pt_conv_bf16() -> None:
        with torch.inference_mode():
            torch.nn.functional.conv2d(pt_cx, pt_ck, padding=1)

    def tf_matmul(dt) -> None:
        mm(*tf_mm[dt]).numpy()

    def pt_matmul(dt) -> None:
        torch.mm(*pt_mm[dt])

    # ---- inference
    x_np = rng.random((args.batch, args.size, args.size, 1), np.float32)
    x_tf = tf.constant(x_np)
    forward = tf.function(lambda x: model(x, training=False), autograph=False)
    net_cl = net.to(memory_format=torch.channels_last)
    x_pt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)

    def zf_infer() -> None:
        forward(x_tf).numpy()

    def pt_infer() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            net_cl(x_pt).float()

    # ---- training
    tb = args.train_batch
    xt_np = rng.random((tb, args.size, args.size, 1), np.float32)
    yt_np = (rng.random((tb, args.size, args.size, 1)) > 0.5).astype(np.float32)
    model.compile(optimizer=FusedAdam(), loss=BCEDiceLoss())
    xt_tf, yt_tf = tf.constant(xt_np), tf.constant(yt_np)
    net_train = from_keras(model).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net_train.parameters(), lr=1e-3, eps=1e-7)
    xt_pt = torch.from_numpy(xt_np.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last)
    yt_pt = torch.from_numpy(yt_np.transpose(0, 3, 1, 2).copy())

    def zf_train() -> None:
        model.train_on_batch(xt_tf, yt_tf)

    def pt_train() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs = net_train(xt_pt)
        loss = bce_dice_loss(probs, yt_pt)
        loss.backward()
        opt.step()

    jobs = {
        "TF matmul bf16": (lambda: tf_matmul(tf.bfloat16), 2 * n ** 3),
        "PyTorch matmul bf16": (lambda: pt_matmul(torch.bfloat16), 2 * n ** 3),
        "TF matmul fp32": (lambda: tf_matmul(tf.float32), 2 * n ** 3),
        "PyTorch matmul fp32": (lambda: pt_matmul(torch.float32), 2 * n ** 3),
        "TF conv3x3 bf16": (tf_conv_bf16, conv_flops),
        "PyTorch conv3x3 bf16": (pt_conv_bf16, conv_flops),
        "zf_unet inference bf16": (zf_infer, flops * args.batch),
        "PyTorch inference bf16": (pt_infer, flops * args.batch),
        "zf_unet training bf16": (zf_train, 3 * flops * tb),
        "PyTorch training bf16": (pt_train, 3 * flops * tb),
    }
    for fn, _ in jobs.values():  # warm up: tracing, oneDNN primitive creation
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(args.rounds):
        for name, (fn, _) in jobs.items():
            times[name].append(timed(fn))
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: jobs[k][1] / med[k] for k in jobs}
    peak_kernels = ("TF matmul bf16", "PyTorch matmul bf16", "TF conv3x3 bf16",
                    "PyTorch conv3x3 bf16")
    peak_name = max(peak_kernels, key=lambda k: rate[k])
    peak = rate[peak_name]
    meta = {**machine_info("torch"), "load_start": load_start, "load_end": os.getloadavg()[0],
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": args.size,
            "filters": args.filters, "params": params, "forward_gflop": flops / 1e9,
            "batch": args.batch, "train_batch": tb, "rounds": args.rounds, "n": n}
    print(f"# U-Net at {args.size}x{args.size} ({args.filters}..{args.filters * 16} filters, "
          f"{params:,} parameters, {flops / 1e9:.1f} GFLOP per image forward), "
          f"{meta['time']}, load {meta['load_start']:.2f} -> {meta['load_end']:.2f}, "
          f"{cores} cores, medians of {args.rounds}\n")
    print("| measurement | s per call | TFLOP/s | % of the measured bf16 peak |")
    print("|---|---:|---:|---:|")
    for k in jobs:
        print(f"| {k} | {med[k]:.3f} | {rate[k] / 1e12:.2f} | {100 * rate[k] / peak:.0f} % |")
    print(f"\nbf16 peak = {peak_name} ({peak / 1e12:.2f} TFLOP/s), the fastest of the bf16 "
          f"kernels. Images/s: zf_unet inference "
          f"{args.batch / med['zf_unet inference bf16']:.2f}, PyTorch "
          f"{args.batch / med['PyTorch inference bf16']:.2f}; training "
          f"{tb / med['zf_unet training bf16']:.2f} vs {tb / med['PyTorch training bf16']:.2f}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "times": times, "median_s": med,
                                    "flop_per_call": {k: v[1] for k, v in jobs.items()},
                                    "tflops": {k: v / 1e12 for k, v in rate.items()},
                                    "peak": peak_name},
                                   indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
