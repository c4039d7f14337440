"""From probability maps to cells: seeded watershed on the cell-interior probability.

Thresholding a membrane map and taking connected components merges two cells wherever the
predicted membrane between them has a gap of a single pixel. A seeded watershed does not: every
confident cell core becomes a seed, the seeds grow downhill on ``1 - p`` and two cells meet
along the ridge of membrane probability between them, however faint. This is the usual last
step for EM membrane maps (scikit-image's ``watershed`` does the flooding).
"""
from __future__ import annotations

import numpy as np

from zf_unet.metrics import label_cells


def watershed_cells(prob: np.ndarray, seed_threshold: float = 0.8, min_seed_size: int = 20,
                    mask_threshold: float | None = None) -> np.ndarray:
    """Cell labels from a cell-interior probability map.

    Args:
        prob: ``(H, W)`` or ``(H, W, 1)`` float probabilities in [0, 1] (1 = cell interior,
            e.g. the output of ``predict_tiled`` for a binary model).
        seed_threshold: seeds are the 4-connected regions with ``prob > seed_threshold``.
        min_seed_size: seeds smaller than this many pixels are dropped (noise).
        mask_threshold: if given, pixels with ``prob <= mask_threshold`` stay 0 (membrane);
            by default every pixel joins the cell whose flood reaches it first.

    Returns:
        ``(H, W)`` int32 labels, 1..N for cells, 0 for unassigned pixels (all 0 without seeds).

    Raises:
        ValueError: a map that is not 2-D, not finite, or thresholds outside (0, 1).
    """
    from skimage.segmentation import watershed

    p = np.asarray(prob)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 2:
        raise ValueError(f"prob must be a 2-D (H, W) or (H, W, 1) probability map, got shape "
                         f"{p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"prob must be a float probability map in [0, 1], got dtype {p.dtype} "
                         "(a watershed needs probabilities, not labels)")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob must be a finite probability map in [0, 1]; it holds NaN or Inf")
    for name, value in (("seed_threshold", seed_threshold), ("mask_threshold", mask_threshold)):
        if value is not None and not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if mask_threshold is not None and float(mask_threshold) >= float(seed_threshold):
        raise ValueError(f"mask_threshold ({mask_threshold}) must be below seed_threshold "
                         f"({seed_threshold}): seeds lie where p > seed_threshold")
    if int(min_seed_size) < 1:
        raise ValueError(f"min_seed_size must be at least 1 pixel, got {min_seed_size}")
    seeds = label_cells(p > seed_threshold)
    sizes = np.bincount(seeds.ravel())
    small = sizes < int(min_seed_size)
    small[0] = False
    if small.any():
        seeds = label_cells(~small[seeds] & (seeds > 0))  # renumber the kept seeds 1..N
    if not seeds.any():
        return np.zeros(p.shape, np.int32)
    mask = None if mask_threshold is None else p > float(mask_threshold)
    labels = watershed(1.0 - p.astype(np.float64), seeds, mask=mask)
    return labels.astype(np.int32)


__all__ = ["watershed_cells"]
