"""GPU check of zf_unet on the JAX or PyTorch Keras backend, on a machine without TensorFlow.

1. ``model.fit`` of ``ZF_UNET_224`` (batch 8 of 224x224x3, BCE+Dice) and of the ISBI recipe's
   model (``configs/isbi2012.toml``: batch 4 of 256x256x1, weighted CE) on NumPy arrays;
   images/s = batch / median step time (callback, synchronised with the device).
2. The same networks in plain PyTorch (``torch_unet.py``; bf16 autocast + channels-last on a
   GPU), in rounds interleaved with the Keras ones, if PyTorch is installed.
3. ``zf_unet.predict_tiled`` of a 4096x4096 image with the trained ISBI model.
4. ``.keras`` round trip of both models (``load_model`` without custom_objects): predictions
   must agree to < 1e-4.
Exit status 1 if a loss or the tiled output is not finite or a round trip differs. Nothing
here needs TensorFlow (tests/test_gpu_check.py blocks it); where it is installed, Keras
imports it anyway to serialise a model ("tensorflow_imported" in the JSON).

    PYTHONPATH=. python benchmarks/gpu_check.py --backend jax --json gpu_jax.json
    PYTHONPATH=. python benchmarks/gpu_check.py --quick   # CPU smoke run, < 1 minute
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the checkout, for `import zf_unet`
TOLERANCE = 1e-4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = "jax" if importlib.util.find_spec("jax") else "torch"
    p.add_argument("--backend", choices=("jax", "torch"), default=default,
                   help=f"Keras backend (default here: {default})")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (300)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (10)")
    p.add_argument("--rounds", type=int, default=None,
                   help="Keras / PyTorch blocks alternate this many times (3)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch of both models (default 8 for ZF_UNET_224, 4 for ISBI)")
    p.add_argument("--precision", default="auto",
                   choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                   help="Keras policy; auto = mixed_float16 on a GPU, float32 on a CPU")
    p.add_argument("--tile-image", type=int, default=None, help="predict_tiled side (4096)")
    p.add_argument("--no-torch", action="store_true", help="skip the plain PyTorch rows")
    p.add_argument("--quick", action="store_true",
                   help="tiny models (depth 2, 4 filters, 64x64, batch 2), 4 steps, 512x512 "
                        "tiled image: a smoke run for a CPU")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)
    a.steps = a.steps or (4 if a.quick else 300)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 10)
    a.rounds = max(1, min(a.rounds or (1 if a.quick else 3), a.steps))
    a.tile_image = a.tile_image or (512 if a.quick else 4096)
    return a


def sync(backend: str, tree: Any = None) -> None:
    """Wait until the device has finished the work queued so far (and ``tree``'s arrays)."""
    if backend == "jax":
        import jax

        jax.block_until_ready(tree)
    else:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def build(name: str, args: argparse.Namespace, policy: str) -> tuple[Any, dict]:
    """``(compiled Keras model, spec)``; ``spec`` holds batch, size, channels, twin kwargs."""
    import keras

    import zf_unet
    from zf_unet.backend import has_package
    from zf_unet.losses import BCEDiceLoss
    from zf_unet.optimizers import FusedAdam
    from zf_unet.precision import precision_scope
    from zf_unet.training import make_loss, make_model, make_optimizer
    from train_speed import isbi_config

    if not has_package("tensorflow"):  # Keras seeds TensorFlow too where it is installed
        keras.utils.set_random_seed(0)
    with precision_scope(policy):
        if name == "zf224":
            if args.quick:
                model = zf_unet.build_unet((64, 64, 3), depth=2, filters=4, dropout=0.2,
                                           head_batch_norm=True, output_activation="sigmoid",
                                           name="ZF_UNET_224_quick")
                spec = {"batch": 2, "size": 64, "filters": (4, 8)}
            else:
                model = zf_unet.ZF_UNET_224()
                spec = {"batch": 8, "size": 224, "filters": (32, 64, 128, 256, 512, 1024)}
            spec.update(channels=3, twin={"dropout": 0.2, "head_bn": True})
            model.compile(optimizer=FusedAdam(), loss=BCEDiceLoss())
        else:
            cfg = isbi_config()
            if args.quick:
                cfg = cfg.override(["model.depth=2", "model.filters=4"])
            m = cfg.model
            model = make_model(cfg, channels=1)
            spec = {"batch": 2 if args.quick else cfg.data.batch_size,
                    "size": 64 if args.quick else cfg.data.patch_size, "channels": 1,
                    "filters": tuple(m.filters * 2 ** lv for lv in range(m.depth)),
                    "twin": {"dropout": m.dropout, "head_bn": False}}
            model.compile(optimizer=make_optimizer(cfg, steps_per_epoch=100)[0],
                          loss=make_loss(cfg, 1))
    spec["batch"] = args.batch or spec["batch"]
    return model, spec


def keras_runner(model: Any, arrays: tuple, batch: int, backend: str
                 ) -> tuple[Callable[[int], list[float]], list[float]]:
    """``run(n)`` trains ``n`` steps with ``model.fit`` and returns their times; ``losses``
    collects the loss after every step."""
    import keras

    x, y, *w = arrays
    losses: list[float] = []

    class Timer(keras.callbacks.Callback):
        def __init__(self, n: int):
            super().__init__()
            self.n, self.times, self.t0 = n, [], 0.0

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            sync(backend, (logs, getattr(self.model, "_jax_state", None)))
            self.times.append(time.perf_counter() - self.t0)
            losses.append(float(logs["loss"]))
            if len(self.times) >= self.n:
                self.model.stop_training = True

    def run(n: int) -> list[float]:
        timer = Timer(n)
        per_epoch = len(x) // batch
        model.fit(x, y, sample_weight=w[0] if w else None, batch_size=batch,
                  epochs=math.ceil(n / per_epoch), shuffle=False, verbose=0, callbacks=[timer])
        return timer.times

    return run, losses


def torch_runner(spec: dict, arrays: tuple, autocast: bool
                 ) -> tuple[Callable[[int], list[float]], list[float], int]:
    """``(run, losses, parameter count)`` of the PyTorch twin (``torch_unet.ZFUNet224``)."""
    import numpy as np
    import torch
    from torch_unet import ZFUNet224, bce_dice_loss, keras_param_count, weighted_bce_loss

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    fmt = torch.channels_last if autocast else torch.contiguous_format
    torch.manual_seed(0)
    net = ZFUNet224(in_channels=spec["channels"], filters=spec["filters"], **spec["twin"])
    net = net.to(dev, memory_format=fmt).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    b = spec["batch"]
    t = [torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dev).split(b)
         for a in arrays]
    xs = [v.contiguous(memory_format=fmt) for v in t[0]]
    losses: list[float] = []

    def step(i: int) -> float:
        k = i % len(xs)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
            probs = net(xs[k])
        loss = (weighted_bce_loss(probs, t[1][k], t[2][k]) if len(t) > 2
                else bce_dice_loss(probs, t[1][k]))
        loss.backward()
        opt.step()
        return float(loss.detach())  # waits for the step

    def run(n: int) -> list[float]:
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # PyTorch's fast GPU setting, this block only
        times = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                losses.append(step(i))
                sync("torch")
                times.append(time.perf_counter() - t0)
        finally:
            torch.backends.cudnn.benchmark = old
        return times

    return run, losses, keras_param_count(net)


def train_model(name: str, args: argparse.Namespace, policy: str, with_torch: bool,
                torch_autocast: bool) -> tuple[Any, dict, tuple]:
    """Train ``name`` in Keras (and its PyTorch twin) in interleaved rounds; ``(model, row,
    arrays)``."""
    from train_speed import make_batches

    model, spec = build(name, args, policy)
    b, size = spec["batch"], spec["size"]
    arrays = make_batches(4, b, size, model="isbi" if name == "isbi" else "zf224")
    k_run, k_loss = keras_runner(model, arrays, b, args.backend)
    runners = {"keras": k_run}
    row: dict[str, Any] = {"batch": b, "size": size, "channels": spec["channels"],
                           "params_keras": int(model.count_params())}
    if with_torch:
        t_run, t_loss, row["params_torch"] = torch_runner(spec, arrays, torch_autocast)
        runners["torch"] = t_run
    times: dict[str, list[float]] = {k: [] for k in runners}
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds)
                 for r in range(args.rounds)]
    for r, n in enumerate(per_round):
        skip = args.warmup if r == 0 else 1  # a new fit() call's first step is not timed
        for key, run in runners.items():
            times[key] += run(n + skip)[skip:]
    for key, ts in times.items():
        row[f"{key}_ips"] = b / statistics.median(ts) if ts else float("nan")
        row[f"{key}_steps"] = len(ts)
        losses = k_loss if key == "keras" else t_loss
        row[f"{key}_loss"] = [losses[0], losses[-1]]
        row[f"{key}_loss_finite"] = all(math.isfinite(v) for v in losses)
    if with_torch:
        row["ratio"] = row["keras_ips"] / row["torch_ips"]
    return model, row, arrays


def round_trip(model: Any, x: Any, path: str) -> float:
    """Max abs difference of predictions before and after a ``.keras`` save / load."""
    import keras
    import numpy as np

    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: zf_unet registers its own
    a = np.asarray(model.predict_on_batch(x), dtype=np.float32)
    b = np.asarray(loaded.predict_on_batch(x), dtype=np.float32)
    return float(np.max(np.abs(a - b)))


def device_name(backend: str) -> str:
    """The device Keras computes on, e.g. ``gpu: NVIDIA H100 80GB HBM3``."""
    if backend == "jax":
        import jax

        return f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    import torch

    return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend  # before keras / zf_unet are imported
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave PyTorch room
    import numpy as np

    import zf_unet
    from bench_common import machine_info
    from zf_unet.backend import accelerator

    on_gpu = accelerator() == "gpu"
    policy = args.precision if args.precision != "auto" else (
        "mixed_float16" if on_gpu else "float32")
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    torch_autocast = on_gpu or policy != "float32"
    out: dict[str, Any] = {"backend": args.backend, "device": device_name(args.backend),
                           "precision": policy, "quick": args.quick,
                           "torch_twin": ("bf16 autocast, channels-last" if torch_autocast
                                          else "float32") if with_torch else None,
                           "machine": machine_info("jax", "jaxlib", "torch"), "models": {}}
    failures: list[str] = []
    models, phase = {}, out.setdefault("phase_s", {})  # wall s of each part, compiling too
    for name in ("zf224", "isbi"):
        t0 = time.perf_counter()
        model, row, arrays = train_model(name, args, policy, with_torch, torch_autocast)
        phase[f"train_{name}"] = time.perf_counter() - t0
        models[name] = (model, arrays)
        out["models"][name] = row
        for key in ("keras", "torch"):
            if f"{key}_loss" in row and not row[f"{key}_loss_finite"]:
                failures.append(f"{name}: {key} loss not finite {row[f'{key}_loss']}")

    t0 = time.perf_counter()
    image = np.random.default_rng(1).random((args.tile_image,) * 2, dtype=np.float32)
    tile = 128 if args.quick else 256

    def tiled(im: Any) -> Any:  # with the trained ISBI model
        return zf_unet.predict_tiled(models["isbi"][0], im, tile_size=tile, overlap=tile // 4)

    tiled(image[:2 * tile, :2 * tile])  # compiles the tile batch shapes (4 and 1 tiles)
    phase["tiled_warmup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = tiled(image)
    out["tiled"] = {"size": args.tile_image, "tile": tile, "seconds": time.perf_counter() - t0,
                    "finite": bool(np.isfinite(prob).all()), "shape": list(prob.shape)}
    if not out["tiled"]["finite"]:
        failures.append("predict_tiled output not finite")

    out["round_trip"], t0 = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, arrays) in models.items():
            x = arrays[0][:out["models"][name]["batch"]]
            out["round_trip"][name] = diff = round_trip(model, x, f"{tmp}/{name}.keras")
            if not diff < TOLERANCE:  # NaN fails too
                failures.append(f"{name}: .keras round trip differs by {diff:.3g}")
    phase["round_trip"] = time.perf_counter() - t0
    out["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    out["failures"], out["ok"] = failures, not failures

    print(f"\n# zf_unet on Keras/{args.backend}, {out['device']}, {policy}; median of "
          f"{args.steps} steps in {args.rounds} round(s) after {args.warmup} warm-up")
    print("| model | batch | Keras img/s | PyTorch img/s | Keras / PyTorch | loss first -> last |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in out["models"].items():
        label = {"zf224": "ZF_UNET_224", "isbi": "ISBI recipe"}[name]
        pt = f"{r['torch_ips']:.1f}" if "torch_ips" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        print(f"| {label} | {r['batch']}x{r['size']}x{r['size']}x{r['channels']} | "
              f"{r['keras_ips']:.1f} | {pt} | {ratio} | "
              f"{r['keras_loss'][0]:.4f} -> {r['keras_loss'][1]:.4f} |")
    t = out["tiled"]
    print(f"predict_tiled {t['size']}x{t['size']} (tiles {t['tile']}): {t['seconds']:.2f} s, "
          f"finite={t['finite']}\nround trip max |diff|: "
          + ", ".join(f"{k} {v:.2g}" for k, v in out["round_trip"].items())
          + "\nwall s (compilation included): "
          + ", ".join(f"{k} {v:.1f}" for k, v in phase.items()))
    summary = (f"gpu_check {'OK' if out['ok'] else 'FAILED'}: {args.backend} on {out['device']}"
               f" ({policy}), ZF_UNET_224 {out['models']['zf224']['keras_ips']:.1f} img/s, "
               f"ISBI {out['models']['isbi']['keras_ips']:.1f} img/s, tiled {t['seconds']:.1f} s")
    print(summary + ("" if out["ok"] else " -- " + "; ".join(failures)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
