"""A built-in, deterministic data set of EM-like images: cells with dark membranes.

Each image is a perturbed Voronoi tessellation (curved membranes of varying width between
cells), with per-cell gray levels, smooth texture, dark round "vesicles" inside cells (which
are NOT membrane, so a model must learn shape, not just darkness), blur and noise. Masks use
the ISBI 2012 convention: 1 = cell interior, 0 = membrane.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def _one_image(rng: np.random.Generator, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    h = w = size
    area_per_cell = rng.uniform(500.0, 900.0)
    n_cells = max(4, int(round(h * w / area_per_cell)))
    seeds = rng.uniform(0, [h, w], size=(n_cells, 2))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # A smooth random displacement bends the straight Voronoi edges into curved membranes.
    warp_sigma = size / 10.0
    amp = rng.uniform(2.0, 3.5)
    dy = ndimage.gaussian_filter(rng.standard_normal((h, w)), warp_sigma, mode="wrap")
    dx = ndimage.gaussian_filter(rng.standard_normal((h, w)), warp_sigma, mode="wrap")
    dy *= amp / (dy.std() + 1e-9)
    dx *= amp / (dx.std() + 1e-9)
    pts = np.stack([(yy + dy).ravel(), (xx + dx).ravel()], axis=1)
    dist, idx = cKDTree(seeds).query(pts, k=2)
    gap = (dist[:, 1] - dist[:, 0]).reshape(h, w)  # ~2x the distance to the cell border
    cell = idx[:, 0].reshape(h, w)

    width = ndimage.gaussian_filter(rng.standard_normal((h, w)), size / 8.0, mode="wrap")
    width = 2.2 + 0.8 * width / (np.abs(width).max() + 1e-9)  # membrane width 1.4 .. 3 px
    membrane = gap < width
    mask = (~membrane).astype(np.uint8)

    gray = rng.uniform(0.55, 0.85, size=n_cells)[cell]
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), 2.0)
    img = gray + 0.06 * texture / (texture.std() + 1e-9)

    # Vesicles: small dark disks inside cells, away from membranes.
    n_ves = rng.poisson(n_cells * 0.8)
    r = rng.uniform(1.5, 3.5, size=n_ves)
    cy, cx = rng.uniform(0, h, n_ves), rng.uniform(0, w, n_ves)
    dist_to_membrane = ndimage.distance_transform_edt(mask)
    for y0, x0, rad in zip(cy, cx, r):
        iy, ix = int(y0), int(x0)
        if dist_to_membrane[iy, ix] < rad + 2.5:
            continue
        y1, y2 = max(0, int(y0 - rad) - 1), min(h, int(y0 + rad) + 2)
        x1, x2 = max(0, int(x0 - rad) - 1), min(w, int(x0 + rad) + 2)
        disk = (yy[y1:y2, x1:x2] - y0) ** 2 + (xx[y1:y2, x1:x2] - x0) ** 2 <= rad**2
        img[y1:y2, x1:x2][disk] = rng.uniform(0.15, 0.35)

    img[membrane] = rng.uniform(0.1, 0.25) + 0.05 * texture[membrane]
    img = ndimage.gaussian_filter(img, rng.uniform(0.6, 1.1))
    img += rng.normal(0.0, rng.uniform(0.03, 0.07), size=img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if channels > 1:
        tint = rng.uniform(0.85, 1.0, size=channels).astype(np.float32)
        img = np.clip(img[..., None] * tint, 0, 1)
    else:
        img = img[..., None]
    return img, mask[..., None]


def make_synthetic(n: int = 32, size: int = 128, seed: int = 0,
                   channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` EM-like images and their masks, deterministically from ``seed``.

    Image ``i`` depends only on ``(seed, i)``, so ``make_synthetic(4)`` is a prefix of
    ``make_synthetic(8)``.

    Returns:
        images: ``(n, size, size, channels)`` float32 in [0, 1].
        masks: ``(n, size, size, 1)`` uint8, 1 = cell interior, 0 = membrane.
    """
    if n < 1 or size < 16 or channels < 1:
        raise ValueError(f"need n >= 1, size >= 16, channels >= 1; got n={n}, size={size}, "
                         f"channels={channels}")
    pairs = [_one_image(np.random.default_rng([seed, i]), size, channels) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def write_synthetic_folder(folder: str | Path, n: int = 8, size: int = 128, seed: int = 0,
                           channels: int = 1) -> Path:
    """Write a synthetic set as ``folder/images/NNN.png`` (8-bit) and ``folder/masks/NNN.png``
    (0/255, 255 = cell interior, the ISBI convention). Returns ``folder``."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    images, masks = make_synthetic(n, size, seed, channels)
    for i, (img, msk) in enumerate(zip(images, masks)):
        arr = np.round(img * 255).astype(np.uint8)
        Image.fromarray(arr[..., 0] if channels == 1 else arr).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray((msk[..., 0] * 255).astype(np.uint8)).save(folder / "masks" / f"{i:03d}.png")
    return folder
