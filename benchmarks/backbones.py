"""Size and speed of the U-Net on each pretrained-encoder family vs the plain U-Net.

For one representative of every backbone family in ``zf_unet.models.backbones``
(``zf_unet.registry.BACKBONES``; ``--backbones`` picks others) and for the plain U-Net
(``zf_unet.build_unet((None, None, 3), num_classes=1)``: depth 5, 32 filters, backbone None),
every model ``zf_unet.build_unet((None, None, 3), num_classes=1, backbone=NAME)`` is built
with random weights (``encoder_weights=None``: nothing is downloaded) under the Keras
``mixed_bfloat16`` policy (``keras.mixed_precision.set_global_policy``; the bench VM's
CPUs report ``avx512_bf16`` but no ``amx_*`` flags in ``/proc/cpuinfo``; the JSON records
which), and the script reports

* parameters: ``model.count_params()``, and of that the encoder (the nested ``encoder``
  model plus ConvNeXt's stride-2 stem ``encoder_stem2_*``; for the plain U-Net its
  ``enc*`` blocks and the ``bottleneck``);
* training images/s at ``--size`` x ``--size`` (256): each model compiled with
  ``keras.optimizers.Adam()`` + ``keras.losses.BinaryCrossentropy()`` (Keras defaults
  otherwise), ``model.train_on_batch`` on one fixed random batch of ``--batch`` (4) float32
  images in [0, 1) (3 channels) and binary masks; per block ``--warmup`` (2) untimed steps
  then ``--steps`` timed ones, img/s = batch / median step time;
* inference images/s: ``tf.function(lambda x: model(x, training=False))`` on a fixed batch of
  the same shape (float32 input, bf16 compute, float32 output fetched with ``.numpy()``);
  the same warm-up / timed blocks.

Interleaving. All models are built, compiled and traced first; then for each of
``--repeats`` rounds every model runs one training block and one inference block in turn,
so load from other processes hits all variants alike. Reported: the median over all timed
steps of all rounds, and the ratio to the plain U-Net measured in the same run (ratio of the
medians; the JSON also holds the per-round ratios and every step time). Note that the
``keras.applications`` encoders use ``keras.layers.BatchNormalization`` while the zf_unet
decoder (and the whole plain U-Net) uses zf_unet's ``FusedBatchNormalization`` by default.

No PyTorch equivalent is measured: the bench environment has ``torch`` and MONAI but neither
``torchvision`` nor ``timm`` (checked: ``import torchvision`` / ``import timm`` fail), so
there are no PyTorch encoders of the same families to compare against.

Results go to ``benchmarks/results/backbones.json`` (``--json`` to change), with the date,
``os.getloadavg()`` before and after, versions and the arguments.

Run (the 9 families at 256x256, 3 rounds: roughly 30-40 minutes on 2 busy cores, about 5 of
them building and tracing; ``--quick`` about 1.5 minutes, peak RSS 3 GiB):
    python benchmarks/backbones.py
    python benchmarks/backbones.py --quick   # mobilenetv2 + resnet50, 128x128, 2 steps, 1 round
    python benchmarks/backbones.py --backbones resnet50 efficientnetv2b0 --repeats 5
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PLAIN = "unet"
#: one representative per family of zf_unet.models.backbones
DEFAULT_BACKBONES = ["resnet50", "resnet50v2", "efficientnetb0", "efficientnetv2b0",
                     "convnext_tiny", "mobilenetv2", "mobilenetv3large", "densenet121", "vgg16"]
QUICK_BACKBONES = ["mobilenetv2", "resnet50"]
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            "backbones.json")


def peak_rss_mib() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def encoder_params(model) -> int:
    """Parameters of the encoder part: the nested ``encoder`` model and ``encoder_*`` layers
    (backbones), or the ``enc*`` blocks and the ``bottleneck`` (plain U-Net)."""
    return sum(layer.count_params() for layer in model.layers
               if layer.name.startswith(("enc", "bottleneck")) and layer.built)


class Variant:
    """One model with its compiled training step and traced inference function."""

    def __init__(self, name: str, x, y):
        import keras
        import tensorflow as tf

        import zf_unet

        self.name = name
        t0 = time.perf_counter()
        keras.utils.set_random_seed(0)
        backbone = None if name == PLAIN else name
        self.model = zf_unet.build_unet((None, None, 3), num_classes=1, backbone=backbone,
                                        encoder_weights=None)
        self.model.compile(optimizer=keras.optimizers.Adam(),
                           loss=keras.losses.BinaryCrossentropy())
        self.build_s = time.perf_counter() - t0
        self.params = int(self.model.count_params())
        self.encoder_params = int(encoder_params(self.model))
        model = self.model
        self.predict = tf.function(lambda inp: model(inp, training=False))
        self.x, self.y = x, y
        self.x_tensor = tf.constant(x)
        self.train_times: list[list[float]] = []
        self.infer_times: list[list[float]] = []
        self.losses: list[float] = []
        self.warm_s = {}

    def train_step(self) -> float:
        loss = self.model.train_on_batch(self.x, self.y)
        return float(loss[0] if isinstance(loss, (list, tuple)) else loss)

    def infer_step(self) -> None:
        self.predict(self.x_tensor).numpy()

    def block(self, kind: str, warmup: int, steps: int) -> list[float]:
        step = self.train_step if kind == "train" else self.infer_step
        for _ in range(warmup):
            out = step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - t0)
        if kind == "train":
            self.losses.append(out)
            self.train_times.append(times)
        else:
            self.infer_times.append(times)
        return times


def median_ips(batch: int, blocks: list[list[float]]) -> float | None:
    times = [t for b in blocks for t in b]
    return batch / statistics.median(times) if times else None


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=None,
                   help=f"backbone names (zf_unet.registry.BACKBONES); default "
                        f"{' '.join(DEFAULT_BACKBONES)}; the plain U-Net is always included")
    p.add_argument("--size", type=int, default=None, help="image size (multiple of 32; 256)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="timed steps per block (5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each block")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3)")
    p.add_argument("--precision", default="mixed_bfloat16",
                   help="Keras dtype policy the models are built under")
    p.add_argument("--quick", action="store_true",
                   help=f"{' + '.join(QUICK_BACKBONES)}, 128x128, 2 steps, 1 round")
    p.add_argument("--json", default=DEFAULT_JSON, help="results file ('' = none)")
    args = p.parse_args(argv)
    args.size = args.size or (128 if args.quick else 256)
    args.steps = args.steps or (2 if args.quick else 5)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.size % 32:
        p.error("--size must be a multiple of 32 (the backbones have stride 32)")

    import keras
    import numpy as np

    from zf_unet.registry import BACKBONES

    backbones = args.backbones or (QUICK_BACKBONES if args.quick else DEFAULT_BACKBONES)
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:
        p.error(f"unknown backbone(s) {unknown}; known: {list(BACKBONES)}")
    names = [PLAIN] + [b for b in dict.fromkeys(backbones) if b != PLAIN]

    info = machine_info("zf_unet", "torch", "torchvision", "timm")
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    print(f"# U-Net backbones: {args.size}x{args.size}x3, batch {args.batch}, "
          f"{args.precision}; {args.warmup} warm-up + {args.steps} timed steps per block, "
          f"{args.repeats} interleaved round(s)", flush=True)

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.size, args.size, 3), dtype=np.float32)
    y = (rng.random((args.batch, args.size, args.size, 1)) > 0.5).astype(np.float32)

    keras.mixed_precision.set_global_policy(args.precision)
    variants: list[Variant] = []
    errors: dict[str, str] = {}
    for name in names:
        try:
            v = Variant(name, x, y)
            # first calls trace the train / predict functions: outside the timed rounds
            t0 = time.perf_counter()
            v.train_step()
            v.warm_s["train_first_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            v.infer_step()
            v.warm_s["infer_first_s"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"  {name}: ERROR {errors[name]}", flush=True)
            gc.collect()
            continue
        variants.append(v)
        print(f"  built {name}: {v.params / 1e6:.2f} M params ({v.encoder_params / 1e6:.2f} M "
              f"encoder), build+compile {v.build_s:.0f} s, first train step "
              f"{v.warm_s['train_first_s']:.0f} s, first inference "
              f"{v.warm_s['infer_first_s']:.1f} s", flush=True)

    for r in range(args.repeats):
        for v in variants:
            tt = v.block("train", args.warmup, args.steps)
            ti = v.block("infer", args.warmup, args.steps)
            print(f"  round {r + 1} {v.name}: train {args.batch / statistics.median(tt):.2f} "
                  f"img/s, infer {args.batch / statistics.median(ti):.2f} img/s", flush=True)
    load1 = os.getloadavg()

    plain = next((v for v in variants if v.name == PLAIN), None)
    ref_train = median_ips(args.batch, plain.train_times) if plain else None
    ref_infer = median_ips(args.batch, plain.infer_times) if plain else None
    rows = []
    for v in variants:
        tr = median_ips(args.batch, v.train_times)
        inf = median_ips(args.batch, v.infer_times)
        per_round = []
        if plain is not None:
            for r in range(args.repeats):
                per_round.append({
                    "train": (statistics.median(plain.train_times[r])
                              / statistics.median(v.train_times[r])),
                    "infer": (statistics.median(plain.infer_times[r])
                              / statistics.median(v.infer_times[r]))})
        rows.append({
            "model": v.name, "backbone": None if v.name == PLAIN else v.name,
            "params": v.params, "encoder_params": v.encoder_params,
            "train_img_s": tr, "infer_img_s": inf,
            "train_ratio": tr / ref_train if ref_train else None,
            "infer_ratio": inf / ref_infer if ref_infer else None,
            "ratio_per_round": per_round,
            "train_step_s": v.train_times, "infer_step_s": v.infer_times,
            "loss_first_block": v.losses[0] if v.losses else None,
            "loss_last_block": v.losses[-1] if v.losses else None,
            "build_compile_s": v.build_s, **v.warm_s,
        })

    print()
    print("| model | params (M) encoder / total | train img/s | ratio | infer img/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        label = "plain U-Net (32 filters, depth 5)" if row["model"] == PLAIN else row["model"]
        print(f"| {label} | {row['encoder_params'] / 1e6:.2f} / {row['params'] / 1e6:.2f} | "
              f"{fmt(row['train_img_s'])} | {fmt(row['train_ratio'])}x | "
              f"{fmt(row['infer_img_s'])} | {fmt(row['infer_ratio'])}x |")
    for name, err in errors.items():
        print(f"| {name} | failed: {err[:200]} | | | | |")
    print(f"\nimg/s = batch {args.batch} / median step time over {args.repeats} x {args.steps} "
          f"timed steps (interleaved rounds); ratio = img/s / plain U-Net's img/s in this run. "
          f"{args.size}x{args.size}x3, {args.precision}, Adam + BCE, train_on_batch; inference "
          "= tf.function(model(x, training=False)).")
    total_s = time.perf_counter() - t_start
    print(f"Machine: {info['cpu']} ({info['isa']}), {info['cores']} cores; Python "
          f"{info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}; {date}; "
          f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; {total_s:.0f} s; "
          f"peak RSS {fmt(peak_rss_mib(), 0)} MiB")
    cmd = "python " + " ".join(["benchmarks/backbones.py", *(argv if argv is not None
                                                                 else sys.argv[1:])])
    print("Command: " + cmd)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"date": date, "command": cmd, "args": vars(args), "machine": info,
                       "loadavg_start": list(load0), "loadavg_end": list(load1),
                       "total_s": total_s, "peak_rss_mib": peak_rss_mib(),
                       "reference": PLAIN, "results": rows, "errors": errors}, fh, indent=1)
            fh.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
