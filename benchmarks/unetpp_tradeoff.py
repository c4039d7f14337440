"""U-Net vs U-Net++ L1..L4 (pruned) vs ensemble on ISBI 2012: size, speed, memory, accuracy.

    python benchmarks/unetpp_tradeoff.py --unet runs/isbi/best.keras \
        --unetpp runs/isbi_unetpp/best.keras [--repeats 7]

Both models come from the recipes in configs/ (same data, patches, epochs and loss). Speed:
median ms of a forward pass on one 512x512 image after warm-up, each variant in its own
process. Peak memory: the growth of the process's peak RSS from the loaded model to the end
of the timed predictions (activations, workspace; the TF runtime and weights excluded). Accuracy: overlap-tile prediction of the validation slices 20-23 (no TTA),
scored with zf_unet.evaluation (ISBI 2012 scores, each at its best threshold).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = ["unet", "L1", "L2", "L3", "L4", "ensemble"]


def load_variant(args, name):
    import keras

    import zf_unet

    if name == "unet":
        return keras.saving.load_model(args.unet, compile=False)
    full = keras.saving.load_model(args.unetpp, compile=False)
    if name == "ensemble":
        return zf_unet.ensemble(full)
    return zf_unet.prune(full, int(name[1:]))


def child(args) -> None:
    import numpy as np
    from PIL import Image

    from zf_unet.evaluation import evaluate_arrays
    from zf_unet.inference import predict_tiled
    from zf_unet.paths import isbi2012_dir

    model = load_variant(args, args.child)
    x = np.random.default_rng(0).random((1, 512, 512, 1), dtype=np.float32)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(x, training=False)  # first call: builds and allocates the activations
    times = []
    for _ in range(args.repeats + 2):
        t = time.perf_counter()
        model(x, training=False).numpy()
        times.append(time.perf_counter() - t)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = isbi2012_dir()
    probs, masks = [], []
    for i in range(20, 24):
        img = np.asarray(Image.open(data / "images" / f"{i:02d}.png"))
        masks.append(np.asarray(Image.open(data / "masks" / f"{i:02d}.png")) > 127)
        probs.append(predict_tiled(model, img, tile_size=256, overlap=64)[..., 0])
    best = evaluate_arrays(probs, masks)["best"]
    print(json.dumps({
        "variant": args.child, "parameters": int(model.count_params()),
        "ms_median": 1000 * float(np.median(times[2:])),
        "peak_mb": (rss_peak - rss_loaded) / 1024.0,
        "iou_cell": best["iou_foreground"], "iou_membrane": best["iou_background"],
        "rand_error": best["rand_error"], "pixel_error": best["pixel_error"],
        "threshold": best["threshold"]}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--unet", default="runs/isbi/best.keras")
    p.add_argument("--unetpp", default="runs/isbi_unetpp/best.keras")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", v, "--unet", args.unet,
                              "--unetpp", args.unetpp, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done {v}", file=sys.stderr)
    import tensorflow as tf

    print(f"date {time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU, TF {tf.__version__}\n")
    print("| model | parameters | ms / 512x512 image (median) | peak extra RSS (MB) | IoU cell | "
          "IoU membrane | Rand error | pixel error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['parameters']:,} | {r['ms_median']:.0f} | {r['peak_mb']:.0f} "
              f"| {r['iou_cell']:.4f} | {r['iou_membrane']:.4f} | {r['rand_error']:.4f} "
              f"| {r['pixel_error']:.4f} |")
    by = {r["variant"]: r for r in rows}
    faster = 100 * (1 - by["L3"]["ms_median"] / by["L4"]["ms_median"])
    d_iou = 100 * (by["L3"]["iou_membrane"] - by["L4"]["iou_membrane"])
    d_iou_c = 100 * (by["L3"]["iou_cell"] - by["L4"]["iou_cell"])
    print(f"\nL3 vs L4: {faster:.1f} % faster; IoU change {d_iou_c:+.2f} points (cell), "
          f"{d_iou:+.2f} points (membrane). Paper: 32.2 % faster for -0.6 IoU points.")


if __name__ == "__main__":
    main()
