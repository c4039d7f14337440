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


# --------------------------------------------------------------------------- several classes
def class_colors(num_classes: int, palette: str | Sequence[str] | None = None) -> np.ndarray:
    """``uint8`` ``(K, 3)`` RGB colours, one per class id 0..K-1.

    ``palette``: ``None`` (matplotlib's ``tab10`` for K <= 10, ``tab20`` for K <= 20, else
    ``turbo`` sampled evenly), a matplotlib colormap name (a listed map such as ``tab10``
    gives its colours in order and must hold at least K; a continuous map such as
    ``viridis`` is sampled evenly), or hex colours ``"#ff0000,#00ff00,..."`` (a comma string
    or a list; at least K of them, the first K are used).

    Raises:
        ValueError: an unknown colormap name, a bad hex colour, or fewer colours than classes.
    """
    import matplotlib
    from matplotlib.colors import ListedColormap, to_rgb

    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if palette is None or (isinstance(palette, str) and not palette.strip()):
        palette = "tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"
    if isinstance(palette, str) and "#" not in palette and "," not in palette:
        try:
            cmap = matplotlib.colormaps[palette.strip()]
        except KeyError:
            raise ValueError(f"palette {palette!r}: not a matplotlib colormap name (e.g. tab10, "
                             "tab20, viridis) nor hex colours like #ff0000,#00ff00") from None
        if isinstance(cmap, ListedColormap) and cmap.N <= 32:  # qualitative: colours in order
            if cmap.N < k:
                raise ValueError(f"palette {palette!r} has {cmap.N} colours, fewer than the "
                                 f"{k} classes; expected a larger map (tab20, turbo) or a list")
            rgb = [to_rgb(c) for c in np.asarray(cmap.colors)[:k]]
        else:
            rgb = [cmap(x)[:3] for x in (np.linspace(0, 1, k) if k > 1 else [0.5])]
    else:
        items = [s.strip() for s in (palette.split(",") if isinstance(palette, str)
                                     else palette)]
        items = [s for s in items if s]
        if len(items) < k:
            raise ValueError(f"palette lists {len(items)} colour(s) for {k} classes; expected "
                             "one hex colour per class (#rrggbb, comma-separated)")
        rgb = []
        for s in items[:k]:
            try:
                rgb.append(to_rgb(s if s.startswith("#") else f"#{s}"))
            except ValueError:
                raise ValueError(f"palette colour {s!r}: expected a hex colour like "
                                 "#ff0000") from None
    return np.clip(np.rint(np.asarray(rgb, np.float64) * 255), 0, 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray,
                  alpha: float = 0.45) -> np.ndarray:
    """``uint8`` RGB ``(H, W, 3)``: ``image`` (H, W[, C]) in [0, 1] blended with the colour of
    every pixel's class id (``labels`` ``(H, W)``; ids beyond ``colors`` are left untinted)."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
    lab = np.asarray(labels).reshape(rgb.shape[:2])
    cols = np.asarray(colors, np.float32) / 255.0
    known = lab < len(cols)
    tint = cols[np.where(known, lab, 0)]
    out = np.where(known[..., None], (1 - alpha) * rgb + alpha * tint, rgb)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def legend_strip(colors: np.ndarray, width: int, names: Sequence[str] | None = None) -> np.ndarray:
    """``uint8`` RGB rows (white) naming every class with a swatch of its colour:
    ``[colour] 0  [colour] 1 ...`` wrapped to ``width`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = [str(i) for i in range(len(colors))] if names is None else list(names)
    sw, pad, row_h = 12, 6, 18
    width = max(int(width), 1)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, y = [], pad, pad
    for name in names:
        text_w = int(np.ceil(probe.textlength(name, font=font)))
        w = sw + 4 + text_w + 2 * pad
        if x > pad and x + w > width:
            x, y = pad, y + row_h
        items.append((x, y, name))
        x += w
    strip = Image.new("RGB", (width, y + row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for (x, y, name), c in zip(items, colors):
        draw.rectangle([x, y + 2, x + sw - 1, y + 2 + sw - 1], fill=tuple(int(v) for v in c),
                       outline=(0, 0, 0))
        draw.text((x + sw + 4, y + 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def save_confusion_matrix(confusion: np.ndarray, path: str | Path,
                          title: str = "confusion matrix (row-normalised)") -> Path:
    """PNG heat map of a ``(K, K)`` confusion matrix (rows truth, columns prediction), every
    row divided by its sum (rows without pixels stay 0), class ids on both axes."""
    plt = _plt()
    cm = np.asarray(confusion, np.float64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(2.0 + 0.5 * k, 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=80)
    plt.close(fig)
    return Path(path)
