"""zf_unet's Drosophila VNC recipes (2-D or 3-D) on a wall-clock budget, scored like the MONAI peers.

Trains a recipe with ``zf_unet.train`` (``train.max_minutes`` = the budget; training stops
after the epoch that passes it), then predicts the held-out sections 16-19 at full size with
``predict_tiled`` and scores one confusion matrix over the 4 sections with
``benchmarks/vnc_common.py`` — the code that scores ``benchmarks/monai_vnc.py`` and
``benchmarks/monai_vnc3d.py``.

* 2-D (``configs/drosophila_vnc.toml``, the default): each section on its own, 256x256
  tiles, 64 px overlap (= MONAI's overlap 0.25), Gaussian blending, argmax.
* 3-D (``--config configs/drosophila_vnc_3d.toml``, ``data.volumes = true``): sections
  00-15 train as ONE volume (16 x 1024 x 1024, voxels 50 x 4.6 x 4.6 nm), patches 8x128x128,
  batch 2, depth 5, 16 filters, ``pool_sizes = "auto"`` (``plan_pooling((50, 4.6, 4.6), 5)``:
  pools (1,2,2) x 3 then (2,2,2), kernels (1,3,3) x 3 then (3,3,3) x 2). The 4 held-out
  sections are predicted as ONE volume ``(4, 1024, 1024)``: tiles 4x256x256 (one tile covers
  the 4 sections in z), overlap (0, 64, 64), Gaussian blending, 2 tiles per call.
  Trainable parameters: 5,356,837 (MONAI DynUNet with the same plan 5,390,949, +0.6 %;
  BasicUNet-3D 5,658,949, +5.6 %; see ``monai_vnc3d.py``).

    python benchmarks/zf_unet_vnc.py --minutes 15 --out benchmarks/results/zf_unet_vnc.json
    python benchmarks/zf_unet_vnc.py --config configs/drosophila_vnc_3d.toml --minutes 45 \
        --out benchmarks/results/zf_unet_vnc3d.json
    python benchmarks/zf_unet_vnc.py --minutes 0.5 --epochs 1 --out /tmp/zf.json   # smoke

``--epochs`` sets ``train.epochs``, over which the cosine schedule decays: set it to about the
number of epochs that fit in the budget, or the learning rate is still high when time is up
(MONAI's decays to 0 at the budget). ``--set KEY=VALUE`` (repeatable) overrides the recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vnc_common as vnc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SKIP_STEPS = 3  # first steps (graph tracing) left out of the images/s median
TILE_2D, OVERLAP_2D = 256, 64
TILE_3D, OVERLAP_3D = (4, 256, 256), (0, 64, 64)


def step_timer() -> Any:
    """A Keras callback recording the wall-clock seconds of every training step (``.times``)."""
    import keras

    class StepTimes(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.times.append(time.perf_counter() - self._t)

    return StepTimes()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "drosophila_vnc.toml")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zf_unet_vnc.json"))
    ap.add_argument("--run", type=Path, default=Path("runs/vnc_bench"))
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable")
    ap.add_argument("--name", help="model name in the results")
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
    sets += args.sets
    cfg = Config.from_toml(args.config).override(sets)
    volumes = cfg.data.volumes

    steps = step_timer()
    t0 = time.perf_counter()
    history, run = zf_unet.train(cfg, args.run, fresh=True, verbose=2, extra_callbacks=[steps])
    train_s = time.perf_counter() - t0
    model = history.model
    resolved = json.loads((run / "resolved.json").read_text())

    images, labels = vnc.load_sections(vnc.VAL_IDS)
    t1 = time.perf_counter()
    if volumes:  # the 4 sections as one (4, 1024, 1024) volume
        tile, overlap = TILE_3D, OVERLAP_3D
        preds = np.argmax(zf_unet.predict_tiled(model, images, tile_size=tile, overlap=overlap,
                                                blend="gaussian", batch_size=2), axis=-1)
    else:
        tile, overlap = TILE_2D, OVERLAP_2D
        preds = np.stack([np.argmax(zf_unet.predict_tiled(
            model, img, tile_size=tile, overlap=overlap, blend="gaussian", batch_size=4),
            axis=-1) for img in images])
    infer_s = time.perf_counter() - t1
    cm = vnc.confusion_matrix(labels, preds)
    times = steps.times[SKIP_STEPS:] or steps.times
    patch = cfg.data.patch_size
    voxels = int(np.prod(patch)) if isinstance(patch, list) else int(patch) ** 2
    m = cfg.model
    default_name = (f"zf_unet {'3-D' if volumes else ''} U-Net (depth {m.depth}, "
                    f"{m.filters} filters{', anisotropic auto plan' if volumes else ''})")
    result = {
        "model": args.name or default_name.replace("  ", " "),
        "framework": "keras/tensorflow",
        "date": date,
        "host": platform.node(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "keras": keras.__version__,
        "tensorflow": __import__("tensorflow").__version__,
        "params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "config_file": str(args.config),
        "overrides": sets,
        "config": cfg.to_dict(),
        "resolved": resolved,
        "minutes": args.minutes,
        "train_seconds": round(train_s, 1),
        "epochs": len(history.epoch),
        "steps": len(steps.times),
        "median_train_images_per_s": cfg.data.batch_size / float(np.median(times)),
        "median_train_voxels_per_s": cfg.data.batch_size * voxels / float(np.median(times)),
        "eval": {"volume": volumes, "tile_size": tile, "overlap": overlap, "blend": "gaussian"},
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
