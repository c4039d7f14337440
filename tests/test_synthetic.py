"""The built-in synthetic EM-like data set."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zf_unet.data import make_synthetic, write_synthetic_folder


def test_deterministic_and_prefix_stable():
    a_img, a_msk = make_synthetic(4, 64, seed=3)
    b_img, b_msk = make_synthetic(6, 64, seed=3)
    np.testing.assert_array_equal(a_img, b_img[:4])
    np.testing.assert_array_equal(a_msk, b_msk[:4])
    c_img, _ = make_synthetic(4, 64, seed=4)
    assert not np.allclose(a_img, c_img)


def test_looks_like_em():
    img, msk = make_synthetic(6, 96, seed=0)
    assert img.shape == (6, 96, 96, 1) and img.dtype == np.float32
    assert msk.shape == (6, 96, 96, 1) and msk.dtype == np.uint8
    assert set(np.unique(msk)) == {0, 1}
    assert 0.65 < msk.mean() < 0.9  # ISBI: 19-27 % membrane
    assert img.min() >= 0 and img.max() <= 1
    assert img[msk == 0].mean() < img[msk == 1].mean() - 0.2  # dark membranes
    # Darkness alone does not give the mask: vesicles are dark but inside cells.
    dark_interior = ((img[..., 0] < 0.3) & (msk[..., 0] == 1)).sum()
    assert dark_interior > 0


def test_rgb_and_bad_arguments():
    img, _ = make_synthetic(1, 32, channels=3)
    assert img.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="size"):
        make_synthetic(1, 8)


def test_write_folder_uses_isbi_convention(tmp_path):
    folder = write_synthetic_folder(tmp_path / "synth", n=3, size=32)
    images = sorted((folder / "images").glob("*.png"))
    masks = sorted((folder / "masks").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks] == ["000.png", "001.png", "002.png"]
    m = np.asarray(Image.open(masks[0]))
    assert set(np.unique(m)) <= {0, 255} and m.dtype == np.uint8
    _, ref = make_synthetic(1, 32)
    np.testing.assert_array_equal(m // 255, ref[0, ..., 0])
