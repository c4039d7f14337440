"""Figures written by the demo and the CLI (matplotlib, Agg backend, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from zf_unet.io_utils import savefig_atomic


def _plt():
    import sys

    import matplotlib

    # Headless default, but never switch the backend of a session that already uses pyplot:
    # in a notebook that would turn off inline figures for every later cell.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def overlay(image: np.ndarray, mask: np.ndarray, color=(1.0, 0.2, 0.2), alpha: float = 0.45) -> np.ndarray:
    """RGB float image (H, W, 3): ``image`` (H, W[, C]) in [0, 1] with mask==0 pixels tinted."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
    m = np.asarray(mask).reshape(rgb.shape[:2]) == 0
    out = rgb.copy()
    out[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, np.float32)
    return np.clip(out, 0, 1)


def save_prediction_grid(images: np.ndarray, truths: np.ndarray, probs: np.ndarray,
                         path: str | Path, threshold: float = 0.5) -> Path:
    """Rows of image / truth overlay / predicted overlay / probability for ``(N, H, W, 1)`` arrays."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
    for i in range(n):
        pred = (probs[i, ..., 0] > threshold).astype(np.uint8)
        panels = [
            (images[i, ..., 0], "image", "gray"),
            (overlay(images[i], truths[i]), "truth (membrane in red)", None),
            (overlay(images[i], pred), "prediction", None),
            (probs[i, ..., 0], "P(cell interior)", "viridis"),
        ]
        for ax, (arr, title, cmap) in zip(axes[i], panels):
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=80)
    plt.close(fig)
    return Path(path)


def save_training_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """One panel per metric (loss, dice, ...) with its ``val_`` twin, from ``History.history``."""
    plt = _plt()
    keys = [k for k in history if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.5),
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(np.arange(1, len(history[key]) + 1), history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(np.arange(1, len(history[f"val_{key}"]) + 1), history[f"val_{key}"],
                    label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=80)
    plt.close(fig)
    return Path(path)


def save_augment_grid(images: np.ndarray, masks: np.ndarray, weights: np.ndarray | None,
                      path: str | Path) -> Path:
    """What training sees: one row per sample with image, mask overlay and weight map.

    ``images`` ``(N, H, W, C)`` in [0, 1], ``masks`` ``(N, H, W, 1)``, ``weights`` ``(N, H, W, 1)``.
    """
    plt = _plt()
    n = len(images)
    cols = 3 if weights is not None else 2
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.2 * n), squeeze=False)
    for i in range(n):
        img = images[i, ..., 0] if images.shape[-1] == 1 else images[i, ..., :3]
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title("augmented image", fontsize=9)
        axes[i, 1].imshow(overlay(images[i] if images.shape[-1] == 1 else images[i, ..., :3],
                                  masks[i]))
        axes[i, 1].set_title("mask (class 0 in red)", fontsize=9)
        if weights is not None:
            im = axes[i, 2].imshow(weights[i, ..., 0], cmap="magma")
            axes[i, 2].set_title("border weight map", fontsize=9)
            fig.colorbar(im, ax=axes[i, 2], fraction=0.046, pad=0.04)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=80)
    plt.close(fig)
    return Path(path)
