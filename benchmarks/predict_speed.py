"""Overlap-tile prediction speed and memory (Step 4).

1. Tiling overhead. ``zf_unet.predict_tiled`` on a 2048 x 2048 uint8 image is timed against
   the sum of plain forward passes over exactly the tiles it predicts: the same number of
   model calls, the same batch shape ``(batch, tile, tile, 1)``, through one traced
   ``tf.function`` of ``model(x, training=False)`` on ready-made float32 batches. The
   difference is what tiling itself costs: gathering tiles with mirror padding, scaling,
   blending windows, accumulation and normalisation. Both are timed alternately in the same
   process (median of ``--repeats``); overhead = tiled / plain - 1. Goal: <= 15 %.
   With ``tta="flips"`` the reference is 4x the plain passes (4 transforms per tile batch).
2. Peak memory for 8192 x 8192: in a fresh process, after a warm-up prediction, the resident
   set high-water mark is reset (``/proc/self/clear_refs``) and read back (``VmHWM``) after
   ``predict_tiled``; "extra" = peak - resident size just before the call, with and without
   the float32 result (256 MiB for one class), which the caller asked for. For scale, one
   forward pass of the whole image at once would hold a single 16-channel float32 feature map
   of 4 GiB at the first level alone.

3. Against the peer a user would pick (``--peer``, Step 14): the same network and weights in
   PyTorch (``torch_unet.from_keras``) run by MONAI's ``sliding_window_inference`` (Gaussian
   blending, ``overlap=0.25`` = 64 px of a 256 tile, ``sw_batch_size`` = ``--batch``), against
   ``predict_tiled`` (Gaussian blend, overlap 64) and the tiled SavedModel
   (``export_saved_model(tiled=True)``, same settings, called through its signature), on
   ``--peer-sizes`` images (default 2048 and 4096): a mosaic of the ISBI 2012 slices when
   ``../shared/data/isbi2012`` exists, else random. Precisions: float32 on both sides, and
   bfloat16 (the same weights in a ``mixed_bfloat16`` Keras model; PyTorch
   ``torch.autocast("cpu", torch.bfloat16)`` with channels-last). Variants alternate in every
   repeat; images/s from the median. Blend accuracy: each result against one whole-image
   float32 pass of the PyTorch twin (no tiling; images up to ``--peer-reference-max``): mean
   absolute difference, and the share of pixels whose ``p > 0.5`` decision differs.

Model: the shipped ISBI model (``zf_unet.pretrained("isbi2012-em")``: depth 5, 16..256
filters, float32) unless ``--filters`` builds a random-weight U-Net of that width instead.

Run (about 3-5 minutes on 2 cores; `--peer` adds about 10):
    python benchmarks/predict_speed.py
    python benchmarks/predict_speed.py --quick          # 1024^2, 2048^2 for memory, 3 repeats
    python benchmarks/predict_speed.py --peer-only --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import status_kib  # noqa: E402


def _load_model(filters: int | None):
    import zf_unet

    if filters:
        import keras

        keras.utils.set_random_seed(0)
        return zf_unet.build_unet((None, None, 1), depth=5, filters=filters)
    return zf_unet.pretrained("isbi2012-em")


def tiles_for(model, size: int, tile: int, overlap: int, batch: int):
    """The tile grid ``predict_tiled`` uses for a ``size`` x ``size`` image."""
    from zf_unet.models import model_geometry
    from zf_unet.tiling import TilePlan

    geom = model_geometry(model)
    plan = TilePlan.for_geometry(geom, tile, overlap)
    out = plan.output_tile(size, 0)
    n = len(plan.tile_starts(size, out)) ** 2
    return n, out + 2 * geom.margin


def bench_overhead(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    import zf_unet

    model = _load_model(args.filters)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size), dtype=np.uint8)
    rows = []
    for tile, overlap, tta in args.settings:
        n_tiles, in_tile = tiles_for(model, args.size, tile, overlap, args.batch)
        calls = -(-n_tiles // args.batch)
        n_tf = 4 if tta == "flips" else 1
        spec = tf.TensorSpec((args.batch, in_tile, in_tile, 1), tf.float32)
        forward = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                              autograph=False)
        batches = [tf.constant(rng.random((args.batch, in_tile, in_tile, 1), dtype=np.float32))
                   for _ in range(min(calls, 4))]

        def plain() -> None:
            for i in range(calls * n_tf):
                np.asarray(forward(batches[i % len(batches)]))

        def tiled() -> None:
            zf_unet.predict_tiled(model, image, tile_size=tile, overlap=overlap,
                                  batch_size=args.batch, tta=tta)

        plain()  # trace + warm up
        tiled()
        t_plain, t_tiled = [], []
        for _ in range(args.repeats):
            for fn, times in ((plain, t_plain), (tiled, t_tiled)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        mp, mt = statistics.median(t_plain), statistics.median(t_tiled)
        paired = statistics.median(b / a for a, b in zip(t_plain, t_tiled))
        rows.append({"tile": tile, "overlap": overlap, "tta": tta, "tiles": n_tiles,
                     "calls": calls * n_tf, "input_tile": in_tile, "plain_s": mp,
                     "tiled_s": mt, "overhead": mt / mp - 1.0, "paired_overhead": paired - 1.0,
                     "plain_all": t_plain, "tiled_all": t_tiled})
        print(f"  tile {tile} overlap {overlap} tta {tta}: {n_tiles} tiles, plain {mp:.2f} s, "
              f"tiled {mt:.2f} s, overhead {100 * (mt / mp - 1):+.1f} % "
              f"(paired {100 * (paired - 1):+.1f} %)", file=sys.stderr, flush=True)
    return rows


def peer_image(size: int, folder: str = "images"):
    """``(size, size)`` uint8: ISBI 2012 slices tiled (mirrored in turn, so no seam is a
    straight copy), or random values without the data. ``folder="masks"``: the same mosaic
    of the annotations (None without the data)."""
    import numpy as np

    data = Path(os.environ.get("ZF_UNET_DATA", Path(__file__).resolve().parents[2] / "shared"
                               / "data")) / "isbi2012"
    if not data.is_dir():
        if folder != "images":
            return None, "random"
        return np.random.default_rng(3).integers(0, 256, (size, size), dtype=np.uint8), "random"
    from zf_unet.data.io import read_volume

    stack = read_volume(data / folder)  # the slices in order: (N, H, W)
    if stack.ndim == 4:
        stack = stack[..., 0]
    tile = stack.shape[1]
    out = np.empty((size, size), np.uint8)
    k = 0
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            img = stack[k % len(stack)]
            img = img[::-1] if (k // len(stack)) % 2 else img
            h, w = min(tile, size - y), min(tile, size - x)
            out[y:y + h, x:x + w] = img[:h, :w]
            k += 1
    return out, "isbi2012 mosaic"


def bf16_twin(model):
    """The same network and weights under ``mixed_bfloat16`` (the head stays float32)."""
    import keras

    def clone(layer):
        cfg = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer) and layer.name != "head_activation":
            cfg["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(cfg)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def bench_peer(args: argparse.Namespace) -> list[dict]:
    """predict_tiled / tiled SavedModel / MONAI sliding_window_inference, float32 and bf16."""
    import tempfile

    import numpy as np
    import tensorflow as tf
    import torch
    from monai.inferers import sliding_window_inference

    import zf_unet
    from torch_unet import from_keras

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = _load_model(args.filters)
    model16 = bf16_twin(model)
    net = from_keras(model)
    net_cl = from_keras(model).to(memory_format=torch.channels_last)
    tile, overlap = 256, 64
    tmp = tempfile.TemporaryDirectory()
    served = tf.saved_model.load(str(zf_unet.export_saved_model(
        model, tmp.name, tiled=True, tile_size=tile, overlap=overlap, blend="gaussian",
        batch_size=args.batch))).signatures["serving_default"]

    def monai(image: np.ndarray, bf16: bool) -> np.ndarray:
        x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
        with torch.inference_mode():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = sliding_window_inference(
                        x.contiguous(memory_format=torch.channels_last), (tile, tile),
                        args.batch, net_cl, overlap=overlap / tile, mode="gaussian")
            else:
                out = sliding_window_inference(x, (tile, tile), args.batch, net,
                                               overlap=overlap / tile, mode="gaussian")
        return out[0, 0].float().numpy()

    variants = {
        "zf_unet predict_tiled, float32":
            lambda im: zf_unet.predict_tiled(model, im, tile, overlap, "gaussian",
                                             batch_size=args.batch)[..., 0],
        "zf_unet tiled SavedModel, float32":
            lambda im: served(image=tf.constant(im[None, ..., None]))["probabilities"]
            .numpy()[0, ..., 0],
        "MONAI sliding_window_inference, float32": lambda im: monai(im, False),
        "zf_unet predict_tiled, bfloat16":
            lambda im: zf_unet.predict_tiled(model16, im, tile, overlap, "gaussian",
                                             batch_size=args.batch)[..., 0],
        "MONAI sliding_window_inference, bf16 autocast channels-last":
            lambda im: monai(im, True),
    }
    rows = []
    for size in args.peer_sizes:
        image, kind = peer_image(size)
        truth, _ = peer_image(size, "masks")
        truth = None if truth is None else truth > 127  # 255 = cell interior
        ref = None
        if size <= args.peer_reference_max:  # one whole-image float32 pass (memory grows)
            with torch.inference_mode():
                ref = net(torch.from_numpy(image.astype(np.float32) / 255.0)[None, None])
            ref = ref[0, 0].numpy()
        times: dict[str, list[float]] = {k: [] for k in variants}
        errors = {}
        band = overlap  # the image border, where tilers pad differently (mirror vs zeros)
        for name, fn in variants.items():  # warm up (tracing), and the accuracy
            out = fn(image)
            inner = (slice(band, -band),) * 2
            errors[name] = ((float(np.mean(np.abs(out - ref))),
                             float(np.mean((out > 0.5) != (ref > 0.5))),
                             float(np.mean(np.abs(out[inner] - ref[inner]))))
                            if ref is not None else (float("nan"),) * 3)
            errors[name] += ((float(np.mean((out > 0.5) != truth)),) if truth is not None
                             else (float("nan"),))
        for _ in range(args.repeats):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn(image)
                times[name].append(time.perf_counter() - t0)
        for name in variants:
            med = statistics.median(times[name])
            rows.append({"size": size, "image": kind, "variant": name, "seconds": med,
                         "images_per_s": 1.0 / med, "all": times[name],
                         "mean_abs_diff": errors[name][0], "decision_diff": errors[name][1],
                         "mean_abs_diff_inner": errors[name][2],
                         "pixel_error": errors[name][3]})
            print(f"  {size}: {name}: {med:.2f} s, |p - whole| {errors[name][0]:.2e} "
                  f"({errors[name][2]:.2e} without the {band}-px border), decisions differ "
                  f"{100 * errors[name][1]:.3f} %, pixel error vs annotation "
                  f"{errors[name][3]:.4f}", file=sys.stderr, flush=True)
    tmp.cleanup()
    return rows


def bench_forward(args: argparse.Namespace, reps: int = 25) -> list[dict]:
    """One model call on ``args.batch`` tiles of 256² (bf16 and fp32): the inference twin
    unfused / fused (``fold_batch_norm(..., fuse_upsampling=...)``) against the PyTorch twin,
    interleaved, median ms."""
    import numpy as np
    import tensorflow as tf
    import torch

    from torch_unet import from_keras
    from zf_unet.models import fold_batch_norm, unfused_copy

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = unfused_copy(_load_model(args.filters))  # separate UpSampling / Concatenate
    xn = np.random.default_rng(0).random((args.batch, 256, 256, 1), dtype=np.float32)
    x = tf.constant(xn)
    xt = torch.from_numpy(xn.transpose(0, 3, 1, 2).copy())
    rows = []
    for precision, keras_model in (("bfloat16", bf16_twin(model)), ("float32", model)):
        net = from_keras(model)
        xin = xt
        if precision == "bfloat16":
            net = net.to(memory_format=torch.channels_last)
            xin = xt.contiguous(memory_format=torch.channels_last)

        def torch_call(net=net, xin=xin, bf16=precision == "bfloat16"):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=bf16):
                return net(xin).float().numpy()

        fns = {}
        for fuse in (False, True):
            twin = fold_batch_norm(keras_model, fuse_upsampling=fuse)
            fn = tf.function(lambda t, m=twin: m(t, training=False))
            fns[f"zf_unet twin, {'fused' if fuse else 'unfused'} decoder"] = (
                lambda fn=fn: fn(x).numpy())
        fns["PyTorch twin" + (", bf16 autocast channels-last" if precision == "bfloat16"
                              else "")] = torch_call
        for fn in fns.values():
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            rows.append({"precision": precision, "variant": name,
                         "ms": 1000 * statistics.median(ts)})
            print(f"  forward {precision}: {name}: {rows[-1]['ms']:.1f} ms", file=sys.stderr,
                  flush=True)
    return rows


def bench_served(args: argparse.Namespace) -> list[dict]:
    """``predict_tiled`` against the tiled SavedModel alone (no PyTorch in the process),
    alternating, float32, tiles 256 / overlap 64 / Gaussian: median seconds per image."""
    import tempfile

    import tensorflow as tf

    import zf_unet

    model = _load_model(args.filters)
    tmp = tempfile.TemporaryDirectory()
    served = tf.saved_model.load(str(zf_unet.export_saved_model(
        model, tmp.name, tiled=True, tile_size=256, overlap=64, blend="gaussian",
        batch_size=args.batch))).signatures["serving_default"]
    rows = []
    for size in args.peer_sizes:
        image, _ = peer_image(size)
        fns = {"predict_tiled": lambda im=image: zf_unet.predict_tiled(
                   model, im, 256, 64, "gaussian", batch_size=args.batch),
               "tiled SavedModel": lambda im=image: served(
                   image=tf.constant(im[None, ..., None]))["probabilities"].numpy()}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"size": size, **med, "ratio": med["tiled SavedModel"] / med["predict_tiled"]})
        print(f"| {size}² | {med['predict_tiled']:.2f} | {med['tiled SavedModel']:.2f} | "
              f"{100 * (rows[-1]['ratio'] - 1):+.1f} % |", flush=True)
    tmp.cleanup()
    return rows


def forward_table(rows: list[dict]) -> str:
    """Markdown: ms per model call and the ratio to the PyTorch twin (same precision)."""
    lines = ["| precision | variant | ms per call | vs PyTorch |", "|---|---|---:|---:|"]
    for r in rows:
        peer = next(q for q in rows if q["precision"] == r["precision"]
                    and q["variant"].startswith("PyTorch"))
        lines.append(f"| {r['precision']} | {r['variant']} | {r['ms']:.1f} | "
                     f"{peer['ms'] / r['ms']:.2f}x |")
    return "\n".join(lines)


def peer_table(rows: list[dict]) -> str:
    """Markdown: images/s and the ratio to MONAI at the same size and precision."""
    lines = ["| image | variant | s / image | images/s | vs MONAI (same precision) "
             "| mean abs diff to whole-image pass (without the border band) "
             "| p > 0.5 decisions that differ | pixel error vs annotation |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bf16 = "bf" in r["variant"]
        peer = next((q for q in rows if q["size"] == r["size"] and q["variant"].startswith(
            "MONAI") and ("bf" in q["variant"]) == bf16), None)
        ratio = f"{peer['seconds'] / r['seconds']:.2f}x" if peer else "n/a"
        lines.append(f"| {r['size']}x{r['size']} ({r['image']}) | {r['variant']} | "
                     f"{r['seconds']:.2f} | {r['images_per_s']:.3f} | {ratio} | "
                     + (f"{r['mean_abs_diff']:.1e} ({r['mean_abs_diff_inner']:.1e}) | "
                        f"{100 * r['decision_diff']:.3f} % | "
                        if r["mean_abs_diff"] == r["mean_abs_diff"] else "n/a | n/a | ")
                     + (f"{r['pixel_error']:.4f} |" if r["pixel_error"] == r["pixel_error"]
                        else "n/a |"))
    return "\n".join(lines)


def memory_child(args: argparse.Namespace) -> dict:
    import numpy as np

    import zf_unet

    model = _load_model(args.filters)
    small = np.random.default_rng(1).integers(0, 256, (600, 600), dtype=np.uint8)
    zf_unet.predict_tiled(model, small, tile_size=args.mem_tile, batch_size=args.batch)
    image = np.random.default_rng(2).integers(0, 256, (args.mem_size,) * 2, dtype=np.uint8)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset the peak resident set size
    before = status_kib("VmRSS")
    t0 = time.perf_counter()
    out = zf_unet.predict_tiled(model, image, tile_size=args.mem_tile, batch_size=args.batch)
    elapsed = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    return {"size": args.mem_size, "tile": args.mem_tile, "seconds": elapsed,
            "rss_before_mib": before / 1024, "peak_mib": peak / 1024,
            "extra_mib": (peak - before) / 1024, "output_mib": out.nbytes / 2**20,
            "image_mib": image.nbytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="image side for the overhead table")
    p.add_argument("--batch", type=int, default=4, help="tiles per model call (predict_tiled)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--filters", type=int, default=None,
                   help="random-weight U-Net of this width instead of the shipped ISBI model")
    p.add_argument("--mem-size", type=int, default=8192)
    p.add_argument("--mem-tile", type=int, default=256)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--peer", action="store_true",
                   help="also compare with MONAI sliding_window_inference (needs torch, monai)")
    p.add_argument("--peer-only", action="store_true", help="only the MONAI comparison")
    p.add_argument("--served-only", action="store_true",
                   help="only predict_tiled vs the tiled SavedModel, without PyTorch")
    p.add_argument("--peer-sizes", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--peer-reference-max", type=int, default=2048,
                   help="largest image side for the whole-image accuracy reference")
    p.add_argument("--json", help="also write raw results here")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.mem_size = 1024, 3, 2048
    args.settings = [(256, 64, None), (256, 32, None), (512, 64, None), (256, 64, "flips")]
    if args.quick:
        args.settings = args.settings[:1]
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0

    import tensorflow as tf

    if args.served_only:
        print(f"| image | predict_tiled s | tiled SavedModel s | SavedModel vs predict_tiled |"
              f"\n|---|---:|---:|---:|")
        rows = bench_served(args)
        print(f"\nmedian of {args.repeats}, float32, load average {os.getloadavg()[0]:.1f}, "
              f"TF {tf.__version__}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"served": rows}, f, indent=1)
        return 0
    if args.peer or args.peer_only:
        forward = bench_forward(args)
        peer = bench_peer(args)
        print(f"# One model call on {args.batch} tiles of 256², median of 25 interleaved\n")
        print(forward_table(forward))
        print(f"\n# predict_tiled vs MONAI sliding_window_inference, tile 256, overlap 64, "
              f"Gaussian, batch {args.batch}, median of {args.repeats}, load average "
              f"{os.getloadavg()[0]:.1f}, TF {tf.__version__}\n")
        print(peer_table(peer))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"forward": forward, "peer": peer}, f, indent=1)
        if args.peer_only:
            return 0
    rows = bench_overhead(args)
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child",
           "--mem-size", str(args.mem_size), "--mem-tile", str(args.mem_tile),
           "--batch", str(args.batch)] + (["--filters", str(args.filters)] if args.filters else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    mem = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None

    model_name = (f"random U-Net depth 5, {args.filters} filters" if args.filters
                  else "shipped `isbi2012-em` U-Net (depth 5, 16..256 filters, float32)")
    print(f"# predict_tiled speed, {args.size}x{args.size} uint8, {model_name}, "
          f"batch {args.batch}, median of {args.repeats}")
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| tile / overlap / TTA | tiles | model calls | plain forward passes (s) "
          "| predict_tiled (s) | overhead | paired overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tile']} / {r['overlap']} / {r['tta'] or 'none'} | {r['tiles']} | "
              f"{r['calls']} | {r['plain_s']:.2f} | {r['tiled_s']:.2f} | "
              f"{100 * r['overhead']:+.1f} % | {100 * r['paired_overhead']:+.1f} % |")
    if mem:
        print(f"\n{mem['size']}x{mem['size']} uint8 ({mem['image_mib']:.0f} MiB) in "
              f"{mem['seconds']:.1f} s with tile {mem['tile']}: peak resident set "
              f"{mem['extra_mib']:.0f} MiB above the {mem['rss_before_mib']:.0f} MiB before the "
              f"call, of which {mem['output_mib']:.0f} MiB is the float32 result; without it "
              f"{mem['extra_mib'] - mem['output_mib']:.0f} MiB.")
    else:
        print(f"\nmemory run failed: {proc.stderr[-2000:]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"overhead": rows, "memory": mem}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
