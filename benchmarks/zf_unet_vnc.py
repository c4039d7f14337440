"""zf_unet's 5-class Drosophila VNC recipe on a wall-clock budget, scored like the MONAI peer.

Trains ``configs/drosophila_vnc.toml`` with ``zf_unet.train`` (``train.max_minutes`` = the
budget), then predicts the held-out sections 16-19 at full size with ``predict_tiled``
(256x256 tiles, 64 px overlap = MONAI's overlap 0.25, Gaussian blending), argmax, and scores
one confusion matrix over the 4 sections with ``benchmarks/vnc_common.py`` — the same code
that scores ``benchmarks/monai_vnc.py``.

    python benchmarks/zf_unet_vnc.py --minutes 15 --out benchmarks/results/zf_unet_vnc.json
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zf_unet_vnc.json"))
    ap.add_argument("--run", type=Path, default=Path("runs/vnc_bench"))
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import zf_unet
    from zf_unet.config import Config

    load_start = os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M")
    sets = [f"data.source={json.dumps(str(vnc.vnc_dir()))}", f"train.max_minutes={args.minutes}",
            "train.tensorboard=false"]
    if args.epochs:
        sets.append(f"train.epochs={args.epochs}")
    cfg = Config.from_toml(ROOT / "configs" / "drosophila_vnc.toml").override(sets)

    class StepTimes(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    steps = StepTimes()
    t0 = time.perf_counter()
    history, run = zf_unet.train(cfg, args.run, fresh=True, verbose=2, extra_callbacks=[steps])
    train_s = time.perf_counter() - t0
    model = history.model
    resolved = json.loads((run / "resolved.json").read_text())

    images, labels = vnc.load_sections(vnc.VAL_IDS)
    t1 = time.perf_counter()
    preds = [np.argmax(zf_unet.predict_tiled(model, img, tile_size=256, overlap=64,
                                             blend="gaussian", batch_size=4), axis=-1)
             for img in images]
    infer_s = time.perf_counter() - t1
    cm = sum(vnc.confusion_matrix(lab, p) for lab, p in zip(labels, preds))
    times = steps.times[3:] or steps.times
    result = {
        "model": "zf_unet U-Net (depth 5, 16 filters)",
        "framework": "keras/tensorflow",
        "date": date,
        "host": platform.node(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "keras": keras.__version__,
        "tensorflow": __import__("tensorflow").__version__,
        "params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "config": cfg.to_dict(),
        "resolved": resolved,
        "minutes": args.minutes,
        "train_seconds": round(train_s, 1),
        "epochs": len(history.epoch),
        "steps": len(steps.times),
        "median_train_images_per_s": cfg.data.batch_size / float(np.median(times)),
        **vnc.scores(cm),
        "confusion_matrix": cm.tolist(),
        "inference_seconds": infer_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(vnc.markdown_header())
    print(vnc.markdown_row(result))
    return result


if __name__ == "__main__":
    main()
