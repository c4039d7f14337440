"""Figures written by zf_unet (training curves, grids) leave the caller's matplotlib alone."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt

from zf_unet.plots import save_training_curves


def test_saving_a_figure_keeps_the_sessions_backend(tmp_path):
    """A notebook's inline backend must survive zf_unet.train writing training_curves.png."""
    old = matplotlib.get_backend()
    plt.switch_backend("svg")  # stands in for a notebook's inline backend
    try:
        n_before = len(plt.get_fignums())
        path = save_training_curves({"loss": [1.0, 0.5], "val_loss": [1.2, 0.7]},
                                    tmp_path / "curves.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
        assert len(plt.get_fignums()) == n_before  # its figure is closed, not left to show
    finally:
        plt.switch_backend(old)
