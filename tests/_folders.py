"""Small training folders for the tests: ``images/`` + ``masks/`` of random gray PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(root: Path, n: int = 3, size: int = 32, masks: str = "0/255",
                 seed: int = 0) -> Path:
    """``root/images/00i.png`` (uint8 gray) + ``root/masks/00i.png``: ``"0/255"`` binary
    masks or ``"ids"`` class ids 0..2."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
            root / "images" / f"{i:03d}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: 3 * size // 4, size // 4:] = 1
        if masks == "ids":
            mask[: size // 4] = 2
        else:
            mask *= 255
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def snapshot(paths: list[Path]) -> dict[str, bytes | None]:
    """Every file under ``paths`` with its bytes (``None`` for a missing path)."""
    snap: dict[str, bytes | None] = {}
    for p in paths:
        if not p.exists():
            snap[str(p)] = None
        elif p.is_file():
            snap[str(p)] = p.read_bytes()
        else:
            for f in sorted(p.rglob("*")):
                snap[str(f)] = f.read_bytes() if f.is_file() else b"<dir>"
    return snap
