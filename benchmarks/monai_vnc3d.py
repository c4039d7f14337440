"""PyTorch / MONAI 3-D peer for the Drosophila VNC stack (Step 13), on a wall-clock budget.

What is compared: 3-D U-Nets trained on sections 00-15 of ``shared/data/drosophila-vnc`` as
ONE volume (16 x 1024 x 1024, voxels 50 x 4.6 x 4.6 nm) and scored on sections 16-19 as one
volume, with the same class mapping, class weights and scores (``benchmarks/vnc_common.py``)
as zf_unet's 3-D recipe (``benchmarks/zf_unet_vnc.py --config configs/drosophila_vnc_3d.toml``) and the 2-D runs
(``benchmarks/zf_unet_vnc.py``, ``benchmarks/monai_vnc.py``), for the same number of
wall-clock minutes on the same CPUs.

Models (``--net``):

* ``dynunet`` (default): ``monai.networks.nets.DynUNet`` — MONAI's nnU-Net network — with
  the SAME anisotropic plan as zf_unet's ``pool_sizes = kernel_sizes = "auto"``
  (``plan_pooling((50, 4.6, 4.6), 5)``): kernels (1,3,3) x 3 then (3,3,3) x 2, strides
  1, (1,2,2) x 3, (2,2,2), filters 16-32-64-128-256, BatchNorm, no deep supervision.
  5,390,949 trainable parameters vs zf_unet 3-D's 5,356,837 (+0.6 %). Not the same network:
  DynUNet downsamples with strided convolutions (zf_unet: max pooling), uses LeakyReLU 0.01
  and bias-free convolutions, and its decoder block at the 64-filter level uses the 3x3x3
  kernel of the level below it (zf_unet: 1x3x3, the encoder's kernel at that level).
* ``basicunet``: ``BasicUNet(spatial_dims=3, features=(16, 32, 64, 128, 256, 16))`` with
  BatchNorm — the naive isotropic 3-D U-Net: every level pools z by 2 as well, so patches
  must be 16 deep (16x128x128: the whole training depth) and the 4-section evaluation volume
  is padded to 16 sections (see Evaluation). 5,658,949 trainable parameters (+5.6 %).

Training: the training volume standardised with its mean/std (as ``monai_vnc.py``); random
(8,128,128) patches (``basicunet``: (16,128,128)), batch 2, each patch flipped at random on
each of the three axes and rotated by a random multiple of 90 degrees in-plane (NumPy, from
memory, in the training loop; zf_unet's recipe also does elastic deformation and gray-value
augmentation, this peer does not — as in the 2-D comparison). Loss
``CrossEntropyLoss(weight=median-frequency class weights) + DiceLoss(softmax, one-hot,
background included, smooth 1, per patch)``. Adam lr 1e-3, cosine-annealed to 0 over the
wall-clock budget (lr set from the elapsed fraction before every step), bf16
``torch.autocast("cpu")``, ``torch.channels_last_3d``, ``torch.set_num_threads(2)``.
Training stops at the first step that starts after ``--minutes``.

Evaluation: sections 16-19 as one ``(1, 1, 4, 1024, 1024)`` volume with
``monai.inferers.sliding_window_inference(roi_size=(4, 256, 256), sw_batch_size=2,
overlap=0.25, mode="gaussian")`` (bf16 autocast) — one window deep, 64 px overlap in-plane,
like zf_unet's ``predict_tiled(tile_size=(4, 256, 256), overlap=(0, 64, 64))``. For
``basicunet`` the roi is (16, 256, 256): ``sliding_window_inference`` pads the 4-section volume
to 16 sections (6 before, 6 after) with ``--pad-mode`` (default ``constant`` 0 = the training
mean after standardisation; ``replicate`` repeats the edge sections) and crops the output
back. Then argmax, one confusion matrix over the 4 sections -> per-class IoU, mIoU, pixel
accuracy; ``inference_seconds`` is the time for the whole volume.

Run (the full Step 13 budget needs the machine to itself: about 45 + 1 minutes):
    python benchmarks/monai_vnc3d.py --minutes 45 --out benchmarks/results/monai_vnc3d.json
    python benchmarks/monai_vnc3d.py --net basicunet --minutes 45 \
        --out benchmarks/results/monai_vnc3d_basicunet.json
    python benchmarks/monai_vnc3d.py --minutes 0.5 --out /tmp/monai_vnc3d_smoke.json  # smoke

Needs the ``bench`` extra (``pip install -e .[bench]``: torch 2.13 CPU wheel, MONAI).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# MONAI imports torch.utils.tensorboard, which imports TensorFlow when it is installed (it is,
# in the zf_unet venv): 2 s and a lot of memory for nothing. Hide it from this process.
if "tensorflow" not in sys.modules:
    sys.modules["tensorflow"] = None  # type: ignore[assignment]

import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.networks.nets import BasicUNet, DynUNet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import monai_vnc  # noqa: E402
import vnc_common as vnc  # noqa: E402
from monai_vnc import param_count  # noqa: E402

Shape3 = tuple[int, int, int]

# zf_unet's plan_pooling((50, 4.6, 4.6), 5): pools (1,2,2) x 3 + (2,2,2), kernels below.
KERNELS: list[Shape3] = [(1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
STRIDES: list[int | Shape3] = [1, (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
FILTERS = [16, 32, 64, 128, 256]
BASIC_FEATURES = (16, 32, 64, 128, 256, 16)
NETS: dict[str, dict[str, Any]] = {
    "dynunet": {"name": "MONAI DynUNet 3-D (same anisotropic plan)",
                "patch": (8, 128, 128), "roi": (4, 256, 256)},
    "basicunet": {"name": "MONAI BasicUNet 3-D (isotropic pooling)",
                  "patch": (16, 128, 128), "roi": (16, 256, 256)},
}
BATCH = 2
LR = 1e-3
SW_BATCH = 2
OVERLAP = 0.25
SKIP_STEPS = 3  # first steps (oneDNN primitive creation) left out of the images/s median


class PatchSampler3D:
    """Random ``(d, h, w)`` patches of one volume, randomly flipped on every axis and rotated
    by k x 90 degrees in-plane, from memory."""

    def __init__(self, volume: np.ndarray, labels: np.ndarray, batch: int, patch: Shape3,
                 seed: int):
        if any(p > s for p, s in zip(patch, volume.shape, strict=True)):
            raise ValueError(f"patch {patch} larger than the volume {volume.shape}")
        if patch[1] != patch[2]:
            raise ValueError(f"in-plane rotation needs square patches, got {patch}")
        self.volume = volume  # (D, H, W) float32, standardised
        self.labels = labels  # (D, H, W) uint8 class ids
        self.batch = batch
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (B, 1, d, h, w) float32 channels-last-3d, y (B, d, h, w) int64)``."""
        d, h, w = self.patch
        xs = np.empty((self.batch, d, h, w), np.float32)
        ys = np.empty((self.batch, d, h, w), np.int64)
        for b in range(self.batch):
            z0, y0, x0 = (int(self.rng.integers(s - p + 1))
                          for s, p in zip(self.volume.shape, self.patch, strict=True))
            sl = (slice(z0, z0 + d), slice(y0, y0 + h), slice(x0, x0 + w))
            img, lab = self.volume[sl], self.labels[sl]
            k = int(self.rng.integers(4))
            img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k, axes=(1, 2))
            for axis in range(3):
                if self.rng.integers(2):
                    img, lab = np.flip(img, axis), np.flip(lab, axis)
            xs[b] = img
            ys[b] = lab
        x = torch.from_numpy(xs).unsqueeze(1).contiguous(memory_format=torch.channels_last_3d)
        return x, torch.from_numpy(ys)


def build_model(net: str) -> torch.nn.Module:
    """``dynunet``: DynUNet with zf_unet's anisotropic auto plan; ``basicunet``: BasicUNet."""
    if net == "dynunet":
        return DynUNet(spatial_dims=3, in_channels=1, out_channels=vnc.NUM_CLASSES,
                       kernel_size=KERNELS, strides=STRIDES, upsample_kernel_size=STRIDES[1:],
                       filters=FILTERS, norm_name="batch", deep_supervision=False)
    if net == "basicunet":
        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=vnc.NUM_CLASSES,
                         features=BASIC_FEATURES, norm="batch")
    raise ValueError(f"unknown net {net!r}; expected one of {sorted(NETS)}")


def train(model: torch.nn.Module, sampler: PatchSampler3D, class_weights: np.ndarray,
          minutes: float) -> dict[str, Any]:
    """``monai_vnc.train`` (the same loop as the 2-D peer: CE + Dice, Adam, cosine to 0 over
    the budget, bf16 autocast) on 3-D batches, with voxels per second added."""
    out = monai_vnc.train(model, sampler, class_weights, minutes, use_dice=True, batch=BATCH)
    out["median_train_voxels_per_s"] = (out["median_train_images_per_s"]
                                        * math.prod(sampler.patch))
    return out


@torch.inference_mode()
def evaluate(model: torch.nn.Module, volume: np.ndarray, labels: np.ndarray, roi: Shape3,
             pad_mode: str) -> tuple[np.ndarray, float]:
    """Sliding-window prediction of the held-out volume ``(D, H, W)`` (standardised) as one
    volume; ``(confusion matrix, inference seconds)``."""
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last_3d))
        return out.float()

    x = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    t0 = time.perf_counter()
    probs = sliding_window_inference(x, roi_size=roi, sw_batch_size=SW_BATCH,
                                     predictor=predictor, overlap=OVERLAP, mode="gaussian",
                                     padding_mode=pad_mode)
    pred = probs.argmax(1)[0].numpy()
    seconds = time.perf_counter() - t0
    if pred.shape != labels.shape:
        raise RuntimeError(f"prediction {pred.shape} does not match labels {labels.shape}")
    return vnc.confusion_matrix(labels, pred), seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=45.0, help="training wall-clock budget")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/monai_vnc3d.json"))
    ap.add_argument("--net", choices=sorted(NETS), default="dynunet")
    ap.add_argument("--pad-mode", choices=("constant", "replicate"), default="constant",
                    help="how sliding_window_inference pads a volume shallower than the roi "
                         "(basicunet only: 4 sections -> 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--data", type=Path, default=None,
                    help="shared data folder (default: $ZF_UNET_DATA or ../shared/data)")
    args = ap.parse_args(argv)
    spec = NETS[args.net]
    patch: Shape3 = spec["patch"]
    roi: Shape3 = spec["roi"]

    load_start = os.getloadavg()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_x, train_f, train_y, val_x, val_f, val_y, mean, std, weights = monai_vnc.prepare(
        args.data, load_start)

    model = build_model(args.net).to(memory_format=torch.channels_last_3d)
    params = param_count(model)
    print(f"{spec['name']}: {params:,} parameters; patch {patch}, batch {BATCH}, roi {roi}")
    sampler = PatchSampler3D(train_f, train_y, BATCH, patch, args.seed)

    print(f"training for {args.minutes:g} min ...", flush=True)
    stats = train(model, sampler, weights, args.minutes)
    print(f"trained {stats['steps']} steps in {stats['train_seconds']:.1f} s, median "
          f"{stats['median_train_images_per_s']:.2f} patches/s, final loss "
          f"{stats['final_loss']:.4f}")

    cm, infer_s = evaluate(model, val_f, val_y, roi, args.pad_mode)
    net_cfg: dict[str, Any]
    if args.net == "dynunet":
        net_cfg = {"kernel_size": [list(k) for k in KERNELS],
                   "strides": [s if isinstance(s, int) else list(s) for s in STRIDES],
                   "filters": FILTERS, "norm": "batch", "deep_supervision": False}
    else:
        net_cfg = {"features": list(BASIC_FEATURES), "norm": "batch"}
    result = {
        "model": spec["name"],
        **monai_vnc.environment(date, load_start, args.seed),
        "net": args.net,
        "net_config": net_cfg,
        "params": params,
        "loss": "CrossEntropyLoss(weight=median-frequency) + DiceLoss",
        "precision": "bf16 autocast, channels_last_3d",
        "patch": list(patch),
        "batch": BATCH,
        "lr": LR,
        "augment": "random flips on z, y, x + k*90 deg in-plane rotation",
        "standardisation": {"mean": mean, "std": std},
        "class_names": list(vnc.CLASS_NAMES),
        "class_weights": [float(w) for w in weights],
        "minutes": args.minutes,
        **stats,
        "eval": {"volume": list(val_x.shape), "roi_size": list(roi), "sw_batch_size": SW_BATCH,
                 "overlap": OVERLAP, "mode": "gaussian",
                 "padding_mode": args.pad_mode if roi[0] > val_x.shape[0] else None},
        **vnc.scores(cm),
        "confusion_matrix": cm.tolist(),
        "inference_seconds": infer_s,
    }
    return monai_vnc.report(result, args.out, f"the {tuple(val_x.shape)} volume")


if __name__ == "__main__":
    main()
