"""The built-in demo: train a small U-Net on synthetic EM-like data and report what it learned.

It trains through :func:`zf_unet.train` (the config is :meth:`DemoConfig.to_config`) and keeps
four files of the run: the final model, prediction overlays, training curves and metrics."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from zf_unet.data.synthetic import make_synthetic
from zf_unet.io_utils import atomic_path, write_json_atomic
from zf_unet.metrics import (dice_score, f_error, iou_score, label_cells, misclassification_rate,
                             pixel_error, rand_pair_counts)
from zf_unet.plots import save_prediction_grid, save_training_curves

if TYPE_CHECKING:
    from zf_unet.config import Config


@dataclass
class DemoConfig:
    """Sizes chosen so the demo trains in about a minute on a 2-core CPU.

    64x64 images: the synthetic cells keep their size (a 64x64 image holds a quarter of the
    cells of a 128x128 one), so 20 epochs on 96 of them still learn the membranes (held-out
    Dice ~0.99, membrane Dice ~0.96 with seeds 0 and 1) at about a quarter of the compute."""

    n_train: int = 96
    n_val: int = 16
    size: int = 64
    depth: int = 4
    filters: int = 16
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    precision: str = "auto"

    def validate(self) -> "DemoConfig":
        """Check every field (a :class:`ConfigError` naming it); returns ``self``."""
        from zf_unet.config import Range, check_range
        from zf_unet.errors import ConfigError
        from zf_unet.registry import PRECISIONS

        limits = {"n_train": Range(1), "n_val": Range(1), "size": Range(8), "depth": Range(2, 10),
                  "filters": Range(1), "epochs": Range(1), "batch_size": Range(1),
                  "learning_rate": Range(0.0, low_open=True), "seed": Range(0, 2 ** 32 - 1)}
        for name, allowed in limits.items():
            check_range("demo", name, getattr(self, name), allowed,
                        integer=name != "learning_rate")
        if self.size % 2 ** (self.depth - 1):
            raise ConfigError(f"demo: size = {self.size} must be a multiple of "
                              f"2**(depth-1) = {2 ** (self.depth - 1)}")
        PRECISIONS.check(self.precision, "demo: precision", ConfigError)
        return self

    def to_config(self) -> "Config":
        """The :class:`zf_unet.config.Config` that :func:`zf_unet.train` runs for the demo:
        ``n_train + n_val`` synthetic images, ``n_val`` of them held out; a binary U-Net,
        ``bce_dice``, Adam at a constant learning rate, no augmentation."""
        from zf_unet.config import Config

        n = self.n_train + self.n_val
        return Config.from_dict({
            "data": {"source": "synthetic", "synthetic_n": n, "synthetic_size": self.size,
                     "val_fraction": self.n_val / n, "batch_size": self.batch_size,
                     "num_classes": 1, "augment": {"enabled": False}},
            "model": {"depth": self.depth, "filters": self.filters},
            "loss": {"name": "bce_dice"},
            "optimizer": {"name": "adam", "learning_rate": self.learning_rate,
                          "schedule": "constant"},
            "train": {"epochs": self.epochs, "seed": self.seed, "precision": self.precision,
                      "tensorboard": False, "collapse_warning": False},
        })


#: What :func:`run_demo` writes into its folder.
DEMO_OUTPUTS = ("model.keras", "predictions.png", "training_curves.png", "metrics.json")


def run_demo(out_dir: str | Path = "results/demo", config: DemoConfig | None = None,
             verbose: int = 1, overwrite: bool = False) -> dict:
    """Train, evaluate on a held-out synthetic split and write results to ``out_dir``.

    Writes ``model.keras``, ``predictions.png`` (image / truth / prediction overlays),
    ``training_curves.png`` and ``metrics.json`` (:data:`DEMO_OUTPUTS`); returns the metrics
    dict. Existing outputs are replaced only with ``overwrite=True``; other files in
    ``out_dir`` are never touched (the output rule of :mod:`zf_unet.outputs`).
    """
    from zf_unet.outputs import claim_files, claim_folder
    from zf_unet.data.splits import split_indices
    from zf_unet.precision import resolve_precision
    from zf_unet.training import make_model, train

    cfg = (config or DemoConfig()).validate()
    train_config = cfg.to_config()
    out = Path(out_dir).expanduser()
    claim_folder(out, overwrite=overwrite, command="demo", create=False)
    claim_files([out / name for name in DEMO_OUTPUTS], overwrite=overwrite)
    claim_folder(out, overwrite=overwrite, command="demo")
    # The held-out images are the validation split train() makes: no image is shared with
    # training (synthetic image i depends only on (seed, i)).
    d = train_config.data
    x_all, y_all = make_synthetic(d.synthetic_n, d.synthetic_size, seed=cfg.seed)
    _, val_idx = split_indices(d.synthetic_n, d.val_fraction, None, cfg.seed)
    x_val, y_val = x_all[val_idx], y_all[val_idx]

    with tempfile.TemporaryDirectory(prefix="zf-unet-demo-") as tmp:
        if verbose:
            params = make_model(train_config, channels=1, num_classes=1).count_params()
            print(f"zf_unet demo: {cfg.n_train} train / {cfg.n_val} held-out synthetic "
                  f"{cfg.size}x{cfg.size} images, U-Net depth={cfg.depth} filters={cfg.filters} "
                  f"({params:,} parameters), precision={resolve_precision(cfg.precision)}")
        history, run = train(train_config, Path(tmp) / "run", verbose=verbose)
        summary = json.loads((run / "summary.json").read_text())
        policy, train_seconds = summary["precision"], summary["seconds_this_call"]
        model = keras.saving.load_model(run / "final.keras")
        probs = model.predict(x_val, batch_size=cfg.batch_size, verbose=0).astype(np.float32)
        with atomic_path(out / "model.keras") as target:
            shutil.copyfile(run / "final.keras", target)

    pred = probs[..., 0] > 0.5
    truth = y_val[..., 0] > 0
    all_fg = np.ones_like(truth)
    metrics = {
        "dice_cell_interior": dice_score(pred.ravel()[None], truth.ravel()[None]),
        "dice_cell_interior_trivial_all_foreground": dice_score(all_fg.ravel()[None],
                                                                truth.ravel()[None]),
        "dice_membrane": dice_score(pred.ravel()[None], truth.ravel()[None], foreground=False),
        "dice_membrane_trivial_all_foreground": dice_score(all_fg.ravel()[None],
                                                           truth.ravel()[None], foreground=False),
        "iou_cell_interior": iou_score(pred.ravel()[None], truth.ravel()[None]),
        "pixel_error": pixel_error(pred.ravel()[None], truth.ravel()[None]),
        "pixel_error_trivial_all_foreground": pixel_error(all_fg.ravel()[None],
                                                          truth.ravel()[None]),
        "misclassification_rate": misclassification_rate(pred.ravel()[None], truth.ravel()[None]),
        "rand_error": f_error(*np.sum([rand_pair_counts(label_cells(p), label_cells(t))
                                       for p, t in zip(pred, truth)], axis=0)),
        "train_seconds": round(train_seconds, 1),
        "epochs": cfg.epochs,
        "precision": policy,
        "config": asdict(cfg),
    }
    save_prediction_grid(x_val[:4], y_val[:4], probs[:4], out / "predictions.png")
    save_training_curves(history.history, out / "training_curves.png")
    write_json_atomic(metrics, out / "metrics.json")
    if verbose:
        print(f"\nHeld-out results ({cfg.n_val} images, trained {train_seconds:.0f} s):")
        print(f"  Dice (cell interior): {metrics['dice_cell_interior']:.4f}   "
              f"trivial all-foreground: {metrics['dice_cell_interior_trivial_all_foreground']:.4f}")
        print(f"  Dice (membrane):      {metrics['dice_membrane']:.4f}   "
              f"trivial all-foreground: {metrics['dice_membrane_trivial_all_foreground']:.4f}")
        print(f"  IoU (cell interior):  {metrics['iou_cell_interior']:.4f}")
        print(f"  pixel error (ISBI):   {metrics['pixel_error']:.4f}   "
              f"trivial all-foreground: {metrics['pixel_error_trivial_all_foreground']:.4f}")
        print(f"  misclassified pixels: {metrics['misclassification_rate']:.4f}")
        print(f"  Rand error (ISBI):    {metrics['rand_error']:.4f}")
        print(f"Wrote {out}/model.keras, predictions.png, training_curves.png, metrics.json")
    return metrics
