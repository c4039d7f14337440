"""PyTorch / MONAI peer baseline for 5-class Drosophila VNC segmentation, on a wall-clock budget.

The reference the zf_unet multi-class recipe is compared against: the same data, split,
class weights and scores (``benchmarks/vnc_common.py``), trained "the standard PyTorch way"
for the same number of wall-clock minutes on the same CPUs.

Model: ``monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=5,
features=(16, 32, 64, 128, 256, 16))`` — five levels, 16 filters at the top doubling down to
256, like ``zf_unet.build_unet((None, None, 1), num_classes=5, depth=5, filters=16)``
(1,948,197 vs 1,965,349 trainable parameters, -0.9 %). MONAI's defaults otherwise (LeakyReLU
0.1, transposed-conv upsampling), except the normalisation: BatchNorm like zf_unet
(``--norm instance`` gives BasicUNet's default InstanceNorm; same parameter count).

Training: sections 00-15, standardised with the training images' mean/std; random 256x256
patches, batch 8, a random one of the 8 flips/90-degree rotations per patch (NumPy, from the
in-memory sections, in the training loop). Loss ``CrossEntropyLoss(weight=median-frequency
class weights) + monai.losses.DiceLoss(softmax, one-hot, background included, smooth 1, per
image)`` (``--no-dice`` drops the Dice term). Adam lr 1e-3, cosine-annealed to 0 over the
wall-clock budget (lr set from the elapsed fraction before every step), bf16
``torch.autocast("cpu")``, channels-last, ``torch.set_num_threads(2)``. Training stops at the
first step that starts after ``--minutes`` of training time (data sampling included).

Evaluation: sections 16-19 at full size with ``monai.inferers.sliding_window_inference``
(256x256 windows, sw_batch_size 4, overlap 0.25, Gaussian blending, bf16 autocast), argmax,
one confusion matrix over the 4 sections -> per-class IoU, mIoU, pixel accuracy.

Run (the full budget needs the machine to itself: about 20 + 1 minutes):
    python benchmarks/monai_vnc.py --minutes 20 --out benchmarks/results/monai_vnc.json
    python benchmarks/monai_vnc.py --minutes 1 --out /tmp/monai_vnc_smoke.json   # smoke test

Needs the ``bench`` extra (``pip install -e .[bench]``: torch 2.13 CPU wheel, MONAI).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# MONAI imports torch.utils.tensorboard, which imports TensorFlow when it is installed (it is,
# in the zf_unet venv): 2 s and a lot of memory for nothing. Hide it from this process.
if "tensorflow" not in sys.modules:
    sys.modules["tensorflow"] = None  # type: ignore[assignment]

import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.losses import DiceLoss  # noqa: E402
from monai.networks.nets import BasicUNet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vnc_common as vnc  # noqa: E402

FEATURES = (16, 32, 64, 128, 256, 16)
PATCH = 256
BATCH = 8
LR = 1e-3
SKIP_STEPS = 3  # first steps (oneDNN primitive creation) left out of the images/s median


class PatchSampler:
    """Random ``PATCH`` x ``PATCH`` patches with a random dihedral transform, from memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch: int, patch: int,
                 seed: int):
        self.images = images  # (N, H, W) float32, standardised
        self.labels = labels  # (N, H, W) uint8 class ids
        self.batch = batch
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (B, 1, P, P) float32 channels-last, y (B, P, P) int64)``."""
        n, h, w = self.images.shape
        p = self.patch
        xs = np.empty((self.batch, p, p), np.float32)
        ys = np.empty((self.batch, p, p), np.int64)
        for b in range(self.batch):
            i = self.rng.integers(n)
            r = self.rng.integers(h - p + 1)
            c = self.rng.integers(w - p + 1)
            k = int(self.rng.integers(4))
            flip = bool(self.rng.integers(2))
            img = np.rot90(self.images[i, r:r + p, c:c + p], k)
            lab = np.rot90(self.labels[i, r:r + p, c:c + p], k)
            if flip:
                img, lab = img[:, ::-1], lab[:, ::-1]
            xs[b] = img
            ys[b] = lab
        x = torch.from_numpy(xs).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        return x, torch.from_numpy(ys)


def build_model(norm: str) -> torch.nn.Module:
    """The MONAI BasicUNet peer of ``zf_unet.build_unet(num_classes=5, depth=5, filters=16)``."""
    norm_arg: str | tuple = "batch" if norm == "batch" else ("instance", {"affine": True})
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=vnc.NUM_CLASSES,
                     features=FEATURES, norm=norm_arg)


def param_count(model: torch.nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(model: torch.nn.Module, sampler: Any, class_weights: np.ndarray,
          minutes: float, use_dice: bool, log_every_s: float = 30.0, batch: int = BATCH
          ) -> dict:
    """Train until ``minutes`` of wall clock are used; return step count and timings.
    ``sampler.sample()`` gives ``(x, y)`` batches of ``batch`` patches (2-D or 3-D)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float32))
    dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True,
                    smooth_nr=1.0, smooth_dr=1.0, batch=False)
    budget = minutes * 60.0
    step_times: list[float] = []
    losses: list[float] = []
    start = time.perf_counter()
    next_log = start + log_every_s
    while True:
        t0 = time.perf_counter()
        elapsed = t0 - start
        if elapsed >= budget:
            break
        lr = 0.5 * LR * (1.0 + math.cos(math.pi * elapsed / budget))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sampler.sample()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        logits = logits.float()
        loss = ce(logits, y)
        if use_dice:
            loss = loss + dice(logits, y.unsqueeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        step_times.append(t1 - t0)
        losses.append(float(loss.detach()))
        if t1 >= next_log:
            recent = step_times[SKIP_STEPS:][-20:] or step_times[-20:]
            print(f"  {t1 - start:6.0f} s  step {len(step_times):5d}  loss "
                  f"{statistics.fmean(losses[-20:]):.4f}  lr {lr:.2e}  "
                  f"{batch / statistics.median(recent):.2f} img/s", flush=True)
            next_log = t1 + log_every_s
    train_seconds = time.perf_counter() - start
    timed = step_times[SKIP_STEPS:] or step_times
    return {
        "steps": len(step_times),
        "train_seconds": train_seconds,
        "median_train_images_per_s": batch / statistics.median(timed) if timed else 0.0,
        "mean_train_images_per_s": batch * len(step_times) / train_seconds,
        "final_loss": statistics.fmean(losses[-20:]) if losses else float("nan"),
    }


def prepare(data: Path | None, load_start: Sequence[float]) -> tuple:
    """Sections 00-15 and 16-19 of VNC standardised with the training mean / std, and the
    median-frequency class weights: ``(train_x, train_f, train_y, val_x, val_f, val_y, mean,
    std, weights)`` (``*_x`` uint8, ``*_f`` float32, ``*_y`` class ids)."""
    (train_x, train_y), (val_x, val_y) = vnc.load_split(data)
    mean, std = vnc.standardisation(train_x)
    weights = vnc.median_frequency_weights(train_y)
    train_f = ((train_x.astype(np.float32) - mean) / std).astype(np.float32)
    val_f = ((val_x.astype(np.float32) - mean) / std).astype(np.float32)
    print(f"torch {torch.__version__}, monai {importlib.metadata.version('monai')}, "
          f"{torch.get_num_threads()} threads; load average {load_start[0]:.2f}")
    print(f"train {train_x.shape}, val {val_x.shape}; mean {mean:.3f}, std {std:.3f}")
    print("median-frequency class weights: " + ", ".join(
        f"{n} {w:.4f}" for n, w in zip(vnc.CLASS_NAMES, weights, strict=True)))
    return train_x, train_f, train_y, val_x, val_f, val_y, mean, std, weights


def environment(date: str, load_start: Sequence[float], seed: int) -> dict[str, Any]:
    """What a MONAI result records about the run: date, host, load, versions, threads."""
    return {"framework": "pytorch", "date": date, "host": platform.node(),
            "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
            "torch": torch.__version__, "monai": importlib.metadata.version("monai"),
            "numpy": np.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "seed": seed}


def report(result: dict[str, Any], out: Path, what: str) -> dict[str, Any]:
    """Write ``result`` as JSON to ``out`` and print its scores and table row."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("per-class IoU: " + ", ".join(f"{n} {v:.3f}" for n, v in result["iou"].items()))
    print(f"mIoU {result['miou']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f}, "
          f"inference {result['inference_seconds']:.1f} s for {what}; wrote {out}")
    print(vnc.markdown_header())
    print(vnc.markdown_row(result))
    return result


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray
             ) -> tuple[np.ndarray, float]:
    """Sliding-window prediction of every section; ``(confusion matrix, inference seconds)``."""
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last))
        return out.float()

    cm = np.zeros((vnc.NUM_CLASSES, vnc.NUM_CLASSES), np.int64)
    seconds = 0.0
    for image, label in zip(images, labels, strict=True):
        x = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        t0 = time.perf_counter()
        probs = sliding_window_inference(x, roi_size=(PATCH, PATCH), sw_batch_size=4,
                                         predictor=predictor, overlap=0.25, mode="gaussian")
        pred = probs.argmax(1)[0].numpy()
        seconds += time.perf_counter() - t0
        cm += vnc.confusion_matrix(label, pred)
    return cm, seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/monai_vnc.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--norm", choices=("batch", "instance"), default="batch")
    ap.add_argument("--no-dice", dest="dice", action="store_false",
                    help="cross-entropy only (default: cross-entropy + Dice)")
    ap.add_argument("--data", type=Path, default=None,
                    help="shared data folder (default: $ZF_UNET_DATA or ../shared/data)")
    args = ap.parse_args(argv)

    load_start = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_x, train_f, train_y, val_x, val_f, val_y, mean, std, weights = prepare(
        args.data, load_start)

    model = build_model(args.norm).to(memory_format=torch.channels_last)
    params = param_count(model)
    print(f"BasicUNet features={FEATURES} norm={args.norm}: {params:,} parameters")
    sampler = PatchSampler(train_f, train_y, BATCH, PATCH, args.seed)

    print(f"training for {args.minutes:g} min ...", flush=True)
    stats = train(model, sampler, weights, args.minutes, args.dice)
    print(f"trained {stats['steps']} steps in {stats['train_seconds']:.1f} s, median "
          f"{stats['median_train_images_per_s']:.2f} img/s, final loss {stats['final_loss']:.4f}")

    cm, infer_s = evaluate(model, val_f, val_y)
    result = {
        "model": f"MONAI BasicUNet{' +instnorm' if args.norm == 'instance' else ''}",
        **environment(date, load_start, args.seed),
        "features": list(FEATURES),
        "norm": args.norm,
        "params": params,
        "loss": "CrossEntropyLoss(weight=median-frequency)" + (" + DiceLoss" if args.dice else ""),
        "precision": "bf16 autocast, channels_last",
        "patch": PATCH,
        "batch": BATCH,
        "lr": LR,
        "standardisation": {"mean": mean, "std": std},
        "class_names": list(vnc.CLASS_NAMES),
        "class_weights": [float(w) for w in weights],
        "minutes": args.minutes,
        **stats,
        **vnc.scores(cm),
        "confusion_matrix": cm.tolist(),
        "inference_seconds": infer_s,
    }
    return report(result, args.out, f"{len(val_x)} sections")


if __name__ == "__main__":
    main()
