"""ISBI 2012 validation scores of trained models, with and without TTA and watershed cells.

    python benchmarks/isbi_scores.py [--unet180 runs/isbi180/best.keras] \
        [--unetpp runs/isbi_unetpp/best.keras] [--extra "LABEL=path.keras" ...] [--json out.json]

Models: the shipped ``pretrained:isbi2012-em`` always; a 180-epoch U-Net run and the U-Net++
run (pruned to L1..L4 and the head ensemble) when their files exist. Each model predicts the
validation slices 20-23 with overlap-tile inference (tile 256, overlap 64, Gaussian blend),
without TTA and with d4 (8 views). Scores follow the ISBI 2012 scripts
(``zf_unet.evaluation.evaluate_arrays``): pixel error = 1 - F-score of cell pixels, Rand
error = 1 - F-score of the foreground-restricted Rand index, each at its best threshold
(0.1, 0.2, ..., 0.9); cells are connected components of ``p > t`` (no post-processing, as in the
paper) or a seeded watershed with seeds ``p > t``.

Because the best threshold is picked on the validation slices themselves (the challenge's
protocol), the script also scores the shipped model at thresholds chosen on the 20 training
slices, as a check that the choice does not flatter the validation scores.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def slices(data: Path, idx) -> tuple[list, list]:
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(data / "images" / f"{i:02d}.png")) for i in idx]
    masks = [np.asarray(Image.open(data / "masks" / f"{i:02d}.png")) > 127 for i in idx]
    return images, masks


def predict(model, images, tta):
    from zf_unet.inference import predict_tiled

    return [predict_tiled(model, im, tile_size=256, overlap=64, tta=tta)[..., 0] for im in images]


def variants(args):
    import keras

    import zf_unet

    yield "U-Net, 16 filters, 60 epochs (shipped isbi2012-em)", zf_unet.pretrained("isbi2012-em")
    if args.unet180 and Path(args.unet180).is_file():
        yield "U-Net, 16 filters, 180 epochs", keras.saving.load_model(args.unet180, compile=False)
    for extra in args.extra or []:
        label, _, path = extra.partition("=")
        yield label, keras.saving.load_model(path, compile=False)
    if args.unetpp and Path(args.unetpp).is_file():
        full = keras.saving.load_model(args.unetpp, compile=False)
        for level in (4, 3, 2, 1):
            yield f"U-Net++ L{level}", zf_unet.prune(full, level)
        yield "U-Net++ ensemble (mean of L1..L4)", zf_unet.ensemble(full)


def main() -> None:
    import numpy as np

    from zf_unet.evaluation import evaluate_arrays
    from zf_unet.paths import isbi2012_dir

    p = argparse.ArgumentParser()
    p.add_argument("--unet180", default="runs/isbi180/best.keras")
    p.add_argument("--unetpp", default="runs/isbi_unetpp/best.keras")
    p.add_argument("--extra", action="append", metavar="LABEL=PATH",
                   help="another .keras model to score (repeatable)")
    p.add_argument("--json")
    args = p.parse_args()
    data = isbi2012_dir()
    val_images, val_masks = slices(data, range(20, 24))
    rows = []
    for name, model in variants(args):
        for tta in (None, "d4"):
            probs = predict(model, val_images, tta)
            plain = evaluate_arrays(probs, val_masks)["best"]
            ws = evaluate_arrays(probs, val_masks, segmentation="watershed")["best"]
            rows.append({"model": name, "tta": tta or "none", "pixel_error": plain["pixel_error"],
                         "pixel_threshold": plain["pixel_threshold"],
                         "misclassification_rate": plain["misclassification_rate"],
                         "iou_cell": plain["iou_foreground"],
                         "iou_membrane": plain["iou_background"],
                         "rand_error": plain["rand_error"], "rand_threshold": plain["threshold"],
                         "vi": plain["variation_of_information"],
                         "rand_error_watershed": ws["rand_error"],
                         "seed_threshold": ws["threshold"],
                         "vi_watershed": ws["variation_of_information"]})
            print(f"done {name} / {tta}", flush=True)

    # Thresholds chosen on the training slices 00-19, then applied to the validation slices.
    import zf_unet

    shipped = zf_unet.pretrained("isbi2012-em")
    train_images, train_masks = slices(data, range(0, 20))
    train_probs = predict(shipped, train_images, None)
    t_plain = evaluate_arrays(train_probs, train_masks)["best"]
    t_ws = evaluate_arrays(train_probs, train_masks, segmentation="watershed")["best"]
    val_probs = predict(shipped, val_images, None)
    fixed_pix = evaluate_arrays(val_probs, val_masks, [t_plain["pixel_threshold"]])["best"]
    fixed_rand = evaluate_arrays(val_probs, val_masks, [t_plain["threshold"]])["best"]
    fixed_ws = evaluate_arrays(val_probs, val_masks, [t_ws["threshold"]],
                               segmentation="watershed")["best"]
    held_out = {"pixel_threshold": t_plain["pixel_threshold"],
                "pixel_error": fixed_pix["pixel_error"],
                "rand_threshold": t_plain["threshold"], "rand_error": fixed_rand["rand_error"],
                "seed_threshold": t_ws["threshold"], "rand_error_watershed": fixed_ws["rand_error"]}

    import tensorflow as tf

    print(f"\ndate {time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU, TF {tf.__version__}\n")
    print("| model | TTA | pixel error (t) | misclassified | IoU cell / membrane | Rand error, "
          "components (t) | VI | Rand error, watershed (seeds t) | VI |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['tta']} | {r['pixel_error']:.4f} ({r['pixel_threshold']:.2f}) "
              f"| {r['misclassification_rate']:.4f} | {r['iou_cell']:.3f} / {r['iou_membrane']:.3f} "
              f"| {r['rand_error']:.4f} ({r['rand_threshold']:.2f}) | {r['vi']:.3f} "
              f"| {r['rand_error_watershed']:.4f} ({r['seed_threshold']:.2f}) "
              f"| {r['vi_watershed']:.3f} |")
    h = held_out
    print(f"\nShipped model, no TTA, thresholds chosen on slices 00-19: pixel error "
          f"{h['pixel_error']:.4f} (t {h['pixel_threshold']:.2f}), Rand error "
          f"{h['rand_error']:.4f} (t {h['rand_threshold']:.2f}), watershed Rand error "
          f"{h['rand_error_watershed']:.4f} (seeds {h['seed_threshold']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "held_out_thresholds": held_out},
                                              indent=2))


if __name__ == "__main__":
    main()
