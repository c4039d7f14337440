"""Throughput of paper-style augmentation: SciPy per-image loop vs zf_unet's in-graph version.

Each sample is an (image, mask, weight) triple at 512x512: grayscale float32 image in [0, 1],
uint8 mask, float32 weight map. Every method applies the same kind of augmentation: a random
3x3 grid of N(0, 10^2) px displacements upsampled cubically to a per-pixel field, bilinear
image / nearest mask and weight with mirrored borders, random flips and 90-degree rotations,
and random gamma/contrast/brightness on the image.

    (a) SciPy loop       per image: scipy.ndimage.map_coordinates (order 1 image, order 0
                         mask and weight, mode="mirror") + NumPy flips and gray values
    (b) SciPy tf.data    (a) inside tf.data via tf.numpy_function, parallel map, batch 8
    (c) zf_unet          augment_batch in tf.data (batch 8, tf.function graph), prefetch
    (d) zf_unet XLA      the same with tf.function(jit_compile=True)

Reports the median of --reps timed repetitions after one warm-up; prints a Markdown table.
Run:  TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/augment_speed.py  (about 1-2 minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import ndimage  # noqa: E402

from zf_unet.data import Augment, augment_batch  # noqa: E402

GRID, STD = 3, 10.0
BRIGHTNESS, CONTRAST, GAMMA = 0.1, 0.2, 0.2


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` EM-like triples: smooth float32 image (H, W), uint8 mask, float32 weight map."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 6, 6))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    images = smooth.astype(np.float32)
    masks = (smooth > np.median(smooth)).astype(np.uint8)
    weights = (1.0 + 4.0 * rng.random((n, size, size))).astype(np.float32)
    return images, masks, weights


def scipy_augment(
    image: np.ndarray, mask: np.ndarray, weight: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NumPy/SciPy reference for one ``(H, W)`` triple."""
    h, w = image.shape
    noise = rng.normal(0.0, STD, size=(2, GRID, GRID))
    field = [ndimage.zoom(noise[c], (h / GRID, w / GRID), order=3, mode="nearest") for c in (0, 1)]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.stack([rows + field[0], cols + field[1]])
    image = ndimage.map_coordinates(image, coords, order=1, mode="mirror")
    mask = ndimage.map_coordinates(mask, coords, order=0, mode="mirror")
    weight = ndimage.map_coordinates(weight, coords, order=0, mode="mirror")
    flip_rows, flip_cols, k = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
    out = []
    for t in (image, mask, weight):
        t = t[::-1] if flip_rows else t
        t = t[:, ::-1] if flip_cols else t
        out.append(np.ascontiguousarray(np.rot90(t, k)))
    image, mask, weight = out
    u = rng.uniform(-1.0, 1.0, size=3)
    x = np.clip(image, 0.0, 1.0) ** (1.0 + GAMMA * u[0])
    mean = x.mean()
    x = (x - mean) * (1.0 + CONTRAST * u[1]) + mean + BRIGHTNESS * u[2]
    return np.clip(x, 0.0, 1.0).astype(np.float32), mask, weight


def time_iterator(batches: Iterator, n_images: int, batch: int) -> float:
    """Seconds to pull ``n_images`` images (``n_images / batch`` elements) from ``batches``."""
    start = time.perf_counter()
    for _ in range(n_images // batch):
        out = next(batches)
    _ = out[0].numpy() if hasattr(out[0], "numpy") else out[0]
    return time.perf_counter() - start


def measure(run: Callable[[], float], n_images: int, reps: int) -> float:
    """Median images/second over ``reps`` runs after one warm-up run."""
    run()
    return statistics.median(n_images / run() for _ in range(reps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scipy-images", type=int, default=16, help="images per SciPy rep")
    parser.add_argument("--tf-images", type=int, default=96, help="images per TF rep")
    args = parser.parse_args()
    size, batch, reps = args.size, args.batch, args.reps
    n_tf = max(batch, args.tf_images // batch * batch)
    n_sp = max(batch, args.scipy_images // batch * batch)
    images, masks, weights = make_data(16, size)
    results: list[tuple[str, float]] = []

    # (a) SciPy per-image loop.
    rng = np.random.default_rng(1)

    def scipy_loop() -> float:
        start = time.perf_counter()
        for i in range(n_sp):
            j = i % len(images)
            scipy_augment(images[j], masks[j], weights[j], rng)
        return time.perf_counter() - start

    results.append(("(a) SciPy map_coordinates, per-image loop", measure(scipy_loop, n_sp, reps)))

    # (b) SciPy in tf.data via tf.numpy_function.
    def np_fn(x: np.ndarray, m: np.ndarray, w: np.ndarray, i: np.int64) -> tuple:
        return scipy_augment(x, m, w, np.random.default_rng(int(i)))

    def tf_scipy(i: tf.Tensor, xmw: tuple) -> tuple:
        x, m, w = tf.numpy_function(np_fn, [*xmw, i], [tf.float32, tf.uint8, tf.float32])
        return (
            tf.ensure_shape(x, [size, size]),
            tf.ensure_shape(m, [size, size]),
            tf.ensure_shape(w, [size, size]),
        )

    base = tf.data.Dataset.from_tensor_slices((images, masks, weights)).cache().repeat()
    ds_b = base.enumerate().map(tf_scipy, num_parallel_calls=tf.data.AUTOTUNE)
    ds_b = ds_b.batch(batch).prefetch(tf.data.AUTOTUNE)
    it_b = iter(ds_b)
    results.append((
        "(b) SciPy in tf.data (tf.numpy_function, parallel map)",
        measure(lambda: time_iterator(it_b, n_sp, batch), n_sp, reps),
    ))

    # (c), (d) zf_unet augment_batch on batches inside tf.data.
    config = Augment(elastic_grid=GRID, elastic_std=STD, brightness=BRIGHTNESS,
                     contrast=CONTRAST, gamma=GAMMA)

    def pipeline(jit: bool) -> Iterator:
        @tf.function(jit_compile=jit)
        def aug(x: tf.Tensor, m: tf.Tensor, w: tf.Tensor, seed: tf.Tensor) -> tuple:
            return augment_batch(x[..., None], m[..., None], w[..., None], seed=seed,
                                 config=config)

        def fn(i: tf.Tensor, xmw: tuple) -> tuple:
            return aug(*xmw, tf.stack([tf.constant(1234, tf.int64), i]))

        ds = base.batch(batch, drop_remainder=True).enumerate()
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        return iter(ds)

    it_c = pipeline(jit=False)
    results.append((
        "(c) zf_unet augment_batch, tf.function in tf.data",
        measure(lambda: time_iterator(it_c, n_tf, batch), n_tf, reps),
    ))
    it_d = pipeline(jit=True)
    results.append((
        "(d) zf_unet augment_batch, tf.function(jit_compile=True) in tf.data",
        measure(lambda: time_iterator(it_d, n_tf, batch), n_tf, reps),
    ))

    reference = results[0][1]
    cpu = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    print(
        f"\nAugmentation throughput, {size}x{size} image+mask+weight triples "
        f"(elastic {GRID}x{GRID} grid std {STD:g} px + flips/rot90 + gray values), "
        f"batch {batch}, median of {reps} reps after warm-up"
    )
    print(
        f"{datetime.date.today().isoformat()} | {cpu} | TensorFlow {tf.__version__} | "
        f"SciPy {scipy.__version__} | NumPy {np.__version__}\n"
    )
    print("| method | img/s | vs SciPy loop |")
    print("|---|---:|---:|")
    for name, value in results:
        print(f"| {name} | {value:.1f} | {value / reference:.1f}x |")


if __name__ == "__main__":
    main()
