"""Does a pretrained encoder help when no ImageNet weights can be downloaded? (Step 12, item 7)

Three runs of ``zf_unet.train`` on one backbone, the same number of optimizer steps each:

1. **pretrain**: a U-Net on the backbone (random init) trained on ISBI 2012 (binary
   membranes, ``configs/isbi2012.toml``'s data and augmentation);
2. **fine-tune**: the 5-class Drosophila VNC recipe (``configs/drosophila_vnc.toml``) with
   ``encoder_weights`` = run 1's ``best.keras`` and ``encoder_freeze_epochs`` epochs with the
   encoder frozen, then everything at ``learning_rate / 10``;
3. **scratch**: the same VNC run with ``encoder_weights`` unset.

Runs 2 and 3 are scored on the held-out sections 16-19 at full size (``predict_tiled``,
256 px tiles, 64 px overlap, argmax) with ``benchmarks/vnc_common.py`` (per-class IoU, mIoU).
The budget is a step count, not wall time, so load from other jobs changes the times but not
the comparison.

    python benchmarks/encoder_pretraining.py --backbone efficientnetv2b0 \
        --out benchmarks/results/encoder_pretraining.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vnc_common as vnc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _run(cfg, out: Path) -> tuple[object, float, int]:
    import zf_unet

    t0 = time.perf_counter()
    history, run = zf_unet.train(cfg, out, fresh=True, verbose=2)
    return history.model, time.perf_counter() - t0, len(history.epoch)


def _score(model) -> dict:
    import zf_unet

    images, labels = vnc.load_sections(vnc.VAL_IDS)
    preds = [np.argmax(zf_unet.predict_tiled(model, img, tile_size=256, overlap=64,
                                             blend="gaussian", batch_size=4), axis=-1)
             for img in images]
    cm = sum(vnc.confusion_matrix(lab, p) for lab, p in zip(labels, preds))
    return {**vnc.scores(cm), "confusion_matrix": cm.tolist()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnetv2b0")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--samples-per-epoch", type=int, default=96)
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=10, help="VNC epochs (fine-tune and scratch)")
    ap.add_argument("--freeze-epochs", type=int, default=2)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--runs", type=Path, default=Path("runs/encoder_pretraining"))
    ap.add_argument("--out", type=Path,
                    default=Path("benchmarks/results/encoder_pretraining.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from zf_unet.config import Config

    load_start = os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M")
    common = [f"model.backbone={json.dumps(args.backbone)}", "train.tensorboard=false",
              f"data.batch_size={args.batch_size}",
              f"data.samples_per_epoch={args.samples_per_epoch}",
              f"optimizer.learning_rate={args.learning_rate}", "train.max_minutes=0"]
    isbi = Config.from_toml(ROOT / "configs" / "isbi2012.toml").override(
        common + [f"data.source={json.dumps(str(vnc.data_root() / 'isbi2012'))}",
                  f"train.epochs={args.pretrain_epochs}"])
    pre_model, pre_s, pre_epochs = _run(isbi, args.runs / "pretrain_isbi")
    del pre_model
    encoder_file = args.runs / "pretrain_isbi" / "best.keras"

    results: dict = {"date": date, "host": platform.node(), "backbone": args.backbone,
                     "keras": keras.__version__, "loadavg_start": list(load_start),
                     "pretrain": {"seconds": round(pre_s, 1), "epochs": pre_epochs,
                                  "steps": pre_epochs * args.samples_per_epoch
                                  // args.batch_size},
                     "vnc_steps": args.epochs * args.samples_per_epoch // args.batch_size,
                     "batch_size": args.batch_size, "freeze_epochs": args.freeze_epochs}
    vnc_sets = common + [f"data.source={json.dumps(str(vnc.vnc_dir()))}",
                         f"train.epochs={args.epochs}"]
    arms = {
        "fine-tune": vnc_sets + [f"model.encoder_weights={json.dumps(str(encoder_file))}",
                                 f"model.encoder_freeze_epochs={args.freeze_epochs}"],
        "scratch": vnc_sets,
    }
    for arm, sets in arms.items():
        cfg = Config.from_toml(ROOT / "configs" / "drosophila_vnc.toml").override(sets)
        model, secs, epochs = _run(cfg, args.runs / arm)
        results[arm] = {"seconds": round(secs, 1), "epochs": epochs, **_score(model)}
        del model
        print(arm, json.dumps({k: v for k, v in results[arm].items()
                               if k != "confusion_matrix"}), flush=True)
    results["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
