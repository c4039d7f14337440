"""End-to-end data pipeline throughput at 512x512 vs. a SciPy baseline and vs. training speed.

Every method yields augmented (image, mask, weight) triples of the ISBI 2012 slices at
512x512 with the U-Net paper's augmentation: elastic deformation (random 3x3 grid of
N(0, 10^2) px displacements, cubic-upsampled to a per-pixel field), random flips and
90-degree rotations, random gamma/contrast/brightness. The border weight map (paper eq. 2)
is computed once per image before anything is timed, as zf_unet does.

    1. SciPy loop        per image in Python: scipy.ndimage.map_coordinates (order 1 image,
                         order 0 mask and weight, mode="mirror") + NumPy flips/gray values
                         (``scipy_augment`` from benchmarks/augment_speed.py)
    2. SciPy tf.data     the same function in tf.data via tf.numpy_function, parallel map
                         (AUTOTUNE), batch 8, prefetch
    3. zf_unet           make_datasets(isbi, patch_size=None, batch_size=8, augment=Augment(),
                         border_weights=True, val_fraction=0) iterated for a fixed number of
                         batches, with jit_compile=True (default) and jit_compile=False;
                         3c: augment=None, the tf.data plumbing alone (for reference)
    4. training          images/s of one model.train_on_batch step of the default U-Net
                         build_unet((None, None, 1), depth=5, filters=32), BCEDiceLoss + Adam,
                         batches of 4 at 512x512, in float32 and in mixed_bfloat16

Pipeline figures: median of --repeats timed rounds after one warm-up round; a round runs
every pipeline method once in turn (round-robin, fair under load from other processes); a
tf.data rep opens a fresh iterator, skips its first batch (start-up) and times a fixed
number of batches (see ``Puller``).
Training figures: 2 warm-up steps, then the median of max(5, --repeats) steps.
Prints a Markdown table and the ratio of pipeline throughput to training consumption.

Run:  TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/pipeline.py  (4-6 minutes on the
shared 2-core CPU, mostly the 14 training steps; --quick: about 2 minutes, fewer images and
steps, for a smoke run only). Falls back to synthetic 512x512 data (and says so) when the
ISBI folder (``zf_unet.paths.isbi2012_dir()``, ``$ZF_UNET_DATA``) is missing.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import tensorflow as tf  # noqa: E402
from augment_speed import GRID, STD, scipy_augment  # noqa: E402  (the shared SciPy baseline)

import zf_unet  # noqa: E402
from zf_unet.data import Augment, border_weight_map, load_source, make_datasets  # noqa: E402
from zf_unet.data import write_synthetic_folder  # noqa: E402
from zf_unet.losses import BCEDiceLoss  # noqa: E402
from zf_unet.paths import isbi2012_dir  # noqa: E402

SIZE = 512
PIPE_BATCH = 8
TRAIN_BATCH = 4
AUGMENT = Augment(elastic=True, flips=True, rotate90=True, gray_values=True)


def find_data(tmp: str) -> tuple[Path, str]:
    """The ISBI 2012 folder, or a synthetic stand-in (24 x 512x512) when it is missing."""
    folder = isbi2012_dir()
    if (folder / "masks").is_dir() and any((folder / "images").glob("*.png")):
        n = len(list((folder / "images").glob("*.png")))
        return folder, f"ISBI 2012, {n} slices from {folder}"
    path = write_synthetic_folder(Path(tmp) / "synthetic", n=24, size=SIZE)
    return path, f"SYNTHETIC data (24 x {SIZE}x{SIZE}; ISBI 2012 not found at {folder})"


def rates(run: Callable[[], tuple[int, float]], repeats: int, warmup: int = 1) -> list[float]:
    """Items/second of ``repeats`` calls of ``run`` (-> (items, seconds)) after ``warmup``."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(repeats):
        n, seconds = run()
        out.append(n / seconds)
    return out


class Puller:
    """Steady-state rate of a tf.data pipeline, one fresh iterator per call.

    Each call opens a new iterator, takes the first batch untimed (iterator start-up: about
    0.3 s with augmentation, jit or not, which ``model.fit`` pays once per epoch), then times
    the next ``n_batches`` batches and closes the iterator. Nothing is prefetched while the
    pipeline is idle, and no background work runs while the next method is timed, so the
    methods can be interleaved fairly. ``startup`` keeps the first-batch latencies.
    """

    def __init__(self, ds: tf.data.Dataset, n_batches: int) -> None:
        self.ds, self.n_batches = ds, n_batches
        self.startup: list[float] = []

    def __call__(self) -> tuple[int, float]:
        start = time.perf_counter()
        it = iter(self.ds)
        next(it)
        self.startup.append(time.perf_counter() - start)
        images = 0
        start = time.perf_counter()
        for _ in range(self.n_batches):
            images += int(next(it)[0].shape[0])
        seconds = time.perf_counter() - start
        del it
        return images, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per figure")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer images/steps")
    args = parser.parse_args()
    repeats = max(1, args.repeats)
    if args.quick:
        repeats = min(repeats, 2)
        n_scipy, n_scipy_tf, n_zf_batches, train_warmup, train_steps = 8, 16, 4, 1, 2
    else:
        n_scipy, n_scipy_tf, n_zf_batches = 16, 48, 32
        train_warmup, train_steps = 2, max(5, repeats)
    t_total = time.perf_counter()
    tmp = tempfile.TemporaryDirectory()
    data_dir, data_note = find_data(tmp.name)
    print(f"data: {data_note}", flush=True)
    load_start = os.getloadavg()[0]

    # ---- inputs of the SciPy baseline: float images, binary masks, precomputed weight maps
    split = load_source(data_dir)
    images = [img[..., 0] for img in split.images]
    masks = split.masks
    if any(img.shape != (SIZE, SIZE) for img in images):
        raise SystemExit(f"expected {SIZE}x{SIZE} images, got {sorted({i.shape for i in images})}")
    start = time.perf_counter()
    weights = [border_weight_map(m) for m in masks]
    t_weights = time.perf_counter() - start
    print(f"border weight maps (one-time precompute): {t_weights:.2f} s for {len(masks)} images",
          flush=True)
    n_img = len(images)

    # ---- 1. SciPy per-image loop
    rng = np.random.default_rng(1)
    counter = [0]

    def scipy_loop() -> tuple[int, float]:
        start = time.perf_counter()
        for _ in range(n_scipy):
            j = counter[0] % n_img
            counter[0] += 1
            scipy_augment(images[j], masks[j], weights[j], rng)
        return n_scipy, time.perf_counter() - start

    methods: list[tuple[str, Callable[[], tuple[int, float]]]] = [
        ("1. SciPy map_coordinates, per-image Python loop", scipy_loop)]

    # ---- 2. the same function in tf.data (tf.numpy_function, parallel map, prefetch)
    def np_fn(x: np.ndarray, m: np.ndarray, w: np.ndarray, i: np.int64) -> tuple:
        return scipy_augment(x, m, w, np.random.default_rng(int(i)))

    def tf_scipy(i: tf.Tensor, xmw: tuple) -> tuple:
        x, m, w = tf.numpy_function(np_fn, [*xmw, i], [tf.float32, tf.uint8, tf.float32])
        return tuple(tf.ensure_shape(t, [SIZE, SIZE]) for t in (x, m, w))

    base = tf.data.Dataset.from_tensor_slices(
        (np.stack(images), np.stack(masks), np.stack(weights))).repeat()
    ds_scipy = base.enumerate().map(tf_scipy, num_parallel_calls=tf.data.AUTOTUNE)
    ds_scipy = ds_scipy.batch(PIPE_BATCH).prefetch(tf.data.AUTOTUNE)
    methods.append(("2. SciPy in tf.data (tf.numpy_function, parallel map, prefetch)",
                    Puller(ds_scipy, n_scipy_tf // PIPE_BATCH)))

    # ---- 3. zf_unet make_datasets, whole 512x512 images, border weights, augmentation
    variants = [
        ("3a. zf_unet make_datasets (jit_compile=True, default)", AUGMENT, True),
        ("3b. zf_unet make_datasets (jit_compile=False)", AUGMENT, False),
        ("3c. zf_unet make_datasets, augment=None (tf.data plumbing only, reference)", None, True),
    ]
    n_batches = max(n_zf_batches, -(-n_img // PIPE_BATCH))  # >= one epoch: every batch shape
    for name, aug, jit in variants:
        start = time.perf_counter()
        train_ds, val_ds = make_datasets(
            data_dir, patch_size=None, batch_size=PIPE_BATCH, augment=aug,
            border_weights=True, val_fraction=0, jit_compile=jit)
        seconds = time.perf_counter() - start
        assert val_ds is None
        print(f"  make_datasets(augment={'Augment()' if aug else None}, jit_compile={jit}): "
              f"{seconds:.1f} s (PNG reading + border weight maps + graph setup)", flush=True)
        methods.append((name, Puller(train_ds.repeat(), n_batches)))
    first_batch = next(iter(train_ds))  # the augment=None variant: real, unaugmented slices
    shapes = [tuple(t.shape) for t in first_batch]
    print(f"  make_datasets batch: {shapes} {sorted({t.dtype.name for t in first_batch})}",
          flush=True)

    # Round-robin over the methods (1 warm-up round, then ``repeats`` timed rounds), so that
    # load from other processes on this shared machine hits all of them alike.
    samples: dict[str, list[float]] = {name: [] for name, _ in methods}
    for round_ in range(1 + repeats):
        for name, run in methods:
            n, seconds = run()
            if round_:
                samples[name].append(n / seconds)
        gc.collect()
    results: list[tuple[str, list[float]]] = list(samples.items())
    for name, run in methods:
        extra = ""
        if isinstance(run, Puller):
            extra = (f" (fresh iterator to first batch: "
                     f"{1000 * statistics.median(run.startup[1:] or run.startup):.0f} ms)")
        print(f"  {name}: {statistics.median(samples[name]):.1f} triples/s{extra}", flush=True)
    del methods
    gc.collect()

    # ---- 4. training consumption of the default U-Net, one train_on_batch step
    x = first_batch[0][:TRAIN_BATCH].numpy()
    y = first_batch[1][:TRAIN_BATCH].numpy()
    train: list[tuple[str, list[float]]] = []
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.clear_session()
            model = zf_unet.build_unet((None, None, 1), depth=5, filters=32)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=BCEDiceLoss())

            def step() -> tuple[int, float]:
                start = time.perf_counter()
                model.train_on_batch(x, y)
                return TRAIN_BATCH, time.perf_counter() - start

            train.append((f"4{'ab'[len(train)]}. training step, default U-Net, {policy} "
                          f"(batch {TRAIN_BATCH}, img/s)", rates(step, train_steps, train_warmup)))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        print(f"  {train[-1][0]}: {statistics.median(train[-1][1]):.2f} img/s", flush=True)
        model = None
        gc.collect()
    results.extend(train)

    # ---- report
    reference = statistics.median(results[0][1])
    cpu = f"{os.cpu_count()}-core CPU ({platform.machine()})"
    print(
        f"\nData pipeline throughput, {SIZE}x{SIZE} image+mask+weight triples (elastic "
        f"{GRID}x{GRID} grid std {STD:g} px + flips/rot90 + gray values; weight maps "
        f"precomputed), pipeline batch {PIPE_BATCH}; median of {repeats} reps after warm-up "
        f"(training: {train_warmup} warm-up + median of {train_steps} steps)"
    )
    print(f"{datetime.date.today().isoformat()} | {cpu} | TensorFlow {tf.__version__} | "
          f"Keras {keras.__version__} | SciPy {scipy.__version__} | NumPy {np.__version__}")
    print(f"data: {data_note}\n")
    print("| method | triples/s (or img/s) | vs SciPy loop | min-max over reps |")
    print("|---|---:|---:|---:|")
    for name, values in results:
        med = statistics.median(values)
        if (name, values) in train:  # consumption, not a pipeline: no ratio to the baseline
            print(f"| {name} | {med:.2f} | - | {min(values):.2f}-{max(values):.2f} |")
        else:
            print(f"| {name} | {med:.1f} | {med / reference:.1f}x | "
                  f"{min(values):.1f}-{max(values):.1f} |")
    pipe = statistics.median(results[2][1])
    bf16 = statistics.median(train[1][1])
    fp32 = statistics.median(train[0][1])
    print(f"\npipeline / training consumption (bf16) = {pipe / bf16:.1f}x")
    print(f"pipeline / training consumption (float32) = {pipe / fp32:.1f}x")
    print(f"zf_unet pipeline / SciPy loop = {pipe / reference:.1f}x; "
          f"/ SciPy tf.data = {pipe / statistics.median(results[1][1]):.1f}x")
    print(f"total runtime: {time.perf_counter() - t_total:.0f} s; 1-min load average "
          f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end (other processes share "
          f"the {os.cpu_count()} cores)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
