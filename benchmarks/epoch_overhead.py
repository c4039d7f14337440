"""Time per epoch spent outside the training steps: where it goes, for Keras's `fit` and
`zf_unet.train`.

Every epoch (or every `fit` call) is cut into intervals by hooks on Keras's `CallbackList`
(patched in the child process only; the library is not changed) and by timing `Model.fit`:

    setup      `fit` entered -> `on_train_begin` (data adapter, iterator, symbolic build)
    head       `on_epoch_begin` -> first step begins (iterator, metric reset)
    steps      the sum of the steps (`on_train_batch_begin` -> `on_train_batch_end`)
    between    the sum of the gaps between steps (callback dispatch)
    tail       last step -> validation / `on_epoch_end` (metric results, `evaluate`'s set-up)
    validation `on_test_begin` -> `on_test_end` (the `evaluate` inside `fit`)
    callbacks  inside `on_epoch_end`, per callback (checkpoints, backups, logs, ...)
    teardown   `on_train_end` entered -> returned (callbacks, the callback thread pool)
    release    `on_train_end` returned -> `fit` returned to its caller (its locals freed:
               the data iterator, the callback list)
    rest       the epoch's wall time minus all of the above

Each interval also records the process CPU time it used, so a wait (a thread join, a sleep, a
lock) shows as wall time without CPU time. `gc` is the time Python's garbage collector ran
during the epoch; it overlaps the other intervals.

Variants, each in a fresh process, interleaved over `--rounds`:

    fit        one `model.fit(ds, epochs=E, steps_per_epoch=S)`: ZF_UNET_224 (bf16, batch 8 of
               224x224x3, `FusedAdam`, BCE+Dice) on an in-memory `tf.data` pipeline, no
               validation, verbose 0: Keras's own per-epoch cost
    refit      the same model, E calls of `fit(..., epochs=1, steps_per_epoch=S)` (the issue's
               "4-step fit" measurement: setup and teardown are paid per call)
    fit-zf, refit-zf   the same, the pipeline ending in `zf_unet.data.finish_pipeline` (what
               zf_unet's own pipelines end with: prefetch, tf.data autotuning off)
    train      `zf_unet.train` on the ISBI 2012 recipe (configs/isbi2012.toml, E epochs of S
               steps, per-epoch validation, best/last checkpoints, backup, CSV log, collapse
               check); synthetic data when ../shared/data/isbi2012 is missing

Run:  python benchmarks/epoch_overhead.py                 (about 6 minutes on 2 cores)
      python benchmarks/epoch_overhead.py --variants train --epochs 4 --rounds 1
The first epoch (tracing) is reported apart; medians over the later epochs of all rounds.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fit", "refit", "fit-zf", "refit-zf", "train")
RESULT_TAG = "@@EPOCH_OVERHEAD@@ "
PARTS = ("setup", "head", "steps", "between", "tail", "validation", "callbacks", "teardown",
         "release", "gc", "rest")


# --------------------------------------------------------------------------- child: tracing


class Trace:
    """Wall / CPU time stamps of training events, and the garbage collector's runs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, object]] = []
        self.gc_runs: list[tuple[float, float]] = []
        self._gc_t = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t = time.perf_counter()
        else:
            self.gc_runs.append((self._gc_t, time.perf_counter()))

    def mark(self, name: str, extra: object = None) -> None:
        self.events.append((name, time.perf_counter(), time.process_time(), extra))


def install_hooks(trace: Trace) -> None:
    """Time-stamp the `CallbackList` hooks and `Model.fit`; time each callback's
    `on_epoch_end` (the patched methods call the originals)."""
    import keras

    cl = keras.callbacks.CallbackList

    def wrap(name: str, before: bool = True):
        orig = getattr(cl, name)

        def hook(self, *args, **kwargs):
            if before:
                trace.mark(name)
            out = orig(self, *args, **kwargs)
            if not before:
                trace.mark(name)
            return out

        setattr(cl, name, hook)

    wrap("on_train_begin")
    wrap("on_epoch_begin")
    wrap("on_train_batch_begin", before=False)  # the step starts when the hook returns
    wrap("on_train_batch_end")
    wrap("on_test_begin")
    wrap("on_test_end", before=False)
    wrap("on_train_end")
    orig_end = cl.on_train_end

    def on_train_end(self, *args, **kwargs):
        out = orig_end(self, *args, **kwargs)
        trace.mark("train_end_exit")
        return out

    cl.on_train_end = on_train_end

    def on_epoch_end(self, epoch, logs=None):
        trace.mark("epoch_end_enter")
        if self._async_train:
            self._flush_futures()
        from keras.src.utils import python_utils  # the same conversion CallbackList does

        logs = python_utils.pythonify_logs(logs)
        for cb in self.callbacks:
            t = time.perf_counter()
            c = time.process_time()
            cb.on_epoch_end(epoch, logs)
            trace.mark("callback", (type(cb).__name__, time.perf_counter() - t,
                                    time.process_time() - c))
        trace.mark("epoch_end_exit")

    cl.on_epoch_end = on_epoch_end
    fit = keras.Model.fit

    def timed_fit(self, *args, **kwargs):
        trace.mark("fit_enter")
        try:
            return fit(self, *args, **kwargs)
        finally:
            trace.mark("fit_exit")

    keras.Model.fit = timed_fit


def epochs_from_trace(trace: Trace) -> list[dict]:
    """One dict per epoch: wall and CPU seconds of every interval in ``PARTS``, per callback."""
    ev = trace.events
    starts = [i for i, e in enumerate(ev) if e[0] == "on_epoch_begin"]
    out = []
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(ev)
        seg = ev[i:end]
        # a fit call that ends inside this epoch's segment: its teardown belongs here
        fit_exit = next((e for e in seg if e[0] == "fit_exit"), None)
        nxt = ev[end] if end < len(ev) else None
        t_end = fit_exit if fit_exit is not None else (nxt if nxt is not None else seg[-1])
        # the epoch starts at `fit` entry for the first epoch of a fit call
        prev = ev[:i]
        enter = next((e for e in reversed(prev) if e[0] in ("fit_enter", "epoch_end_exit")),
                     None)
        begin = enter if enter is not None and enter[0] == "fit_enter" else ev[i]
        parts = {p: [0.0, 0.0] for p in PARTS}

        def add(part: str, a, b) -> None:
            parts[part][0] += b[1] - a[1]
            parts[part][1] += b[2] - a[2]

        if begin is not ev[i]:
            tb = next(e for e in reversed(prev) if e[0] == "on_train_begin")
            add("setup", begin, tb)
            add("head", tb, ev[i])  # on_train_begin callbacks + loop entry count as head
        names = [e[0] for e in seg]
        bb = [k for k, x in enumerate(names) if x == "on_train_batch_begin"]
        be = [k for k, x in enumerate(names) if x == "on_train_batch_end"]
        if bb:
            add("head", seg[0], seg[bb[0]])
        for a, b in zip(bb, be):
            add("steps", seg[a], seg[b])
        for b, a in zip(be, bb[1:]):
            add("between", seg[b], seg[a])
        t_close = next((k for k, x in enumerate(names) if x in ("on_test_begin",
                                                              "epoch_end_enter")), None)
        if be and t_close is not None:
            add("tail", seg[be[-1]], seg[t_close])
        tb_ = [k for k, x in enumerate(names) if x == "on_test_begin"]
        te_ = [k for k, x in enumerate(names) if x == "on_test_end"]
        for a, b in zip(tb_, te_):
            add("validation", seg[a], seg[b])
        cbs: dict[str, list[float]] = {}
        for e in seg:
            if e[0] == "callback":
                name, w, c = e[3]
                cbs.setdefault(name, [0.0, 0.0])
                cbs[name][0] += w
                cbs[name][1] += c
                parts["callbacks"][0] += w
                parts["callbacks"][1] += c
        te = next((e for e in seg if e[0] == "on_train_end"), None)
        tx = next((e for e in seg if e[0] == "train_end_exit"), None)
        if te is not None and tx is not None and fit_exit is not None:
            add("teardown", te, tx)
            add("release", tx, fit_exit)
        wall = t_end[1] - begin[1]
        cpu = t_end[2] - begin[2]
        parts["gc"][0] = sum(min(b, t_end[1]) - max(a, begin[1]) for a, b in trace.gc_runs
                             if b > begin[1] and a < t_end[1])
        named = sum(v[0] for k, v in parts.items() if k not in ("rest", "gc"))
        parts["rest"] = [wall - named, cpu - sum(v[1] for k, v in parts.items()
                                                 if k not in ("rest", "gc"))]
        out.append({"wall": wall, "cpu": cpu, "n_steps": len(be), "fit_end": te is not None,
                    "parts": {k: [round(v[0], 5), round(v[1], 5)] for k, v in parts.items()},
                    "callbacks": {k: [round(v[0], 5), round(v[1], 5)] for k, v in cbs.items()}})
    return out


# --------------------------------------------------------------------------- child: variants


def keras_model():
    """ZF_UNET_224 under mixed_bfloat16, compiled as `zf_unet.train` compiles: FusedAdam,
    BCE + Dice."""
    import keras

    import zf_unet
    from zf_unet.losses import BCEDiceLoss
    from zf_unet.optimizers import FusedAdam
    from zf_unet.precision import precision_scope

    keras.utils.set_random_seed(0)
    with precision_scope("mixed_bfloat16"):
        model = zf_unet.ZF_UNET_224()
    model.compile(optimizer=FusedAdam(), loss=BCEDiceLoss())
    return model


def keras_dataset(batch: int, size: int, zf: bool = False):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((4 * batch, size, size, 3), dtype=np.float32)
    y = (rng.random((4 * batch, size, size, 1)) > 0.5).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    if zf:
        from zf_unet.data import finish_pipeline

        return finish_pipeline(ds)
    return ds.prefetch(tf.data.AUTOTUNE)


def run_variant(name: str, args: argparse.Namespace) -> dict:
    trace = Trace()
    install_hooks(trace)
    info: dict = {}
    if name in ("fit", "refit", "fit-zf", "refit-zf"):
        model = keras_model()
        ds = keras_dataset(args.batch, args.size, zf=name.endswith("-zf"))
        if name.startswith("fit"):
            model.fit(ds, epochs=args.epochs, steps_per_epoch=args.steps, verbose=0)
        else:
            for _ in range(args.epochs):
                model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
        info = {"model": "ZF_UNET_224 (bf16)", "batch": args.batch, "size": args.size,
                "pipeline": "finish_pipeline" if name.endswith("-zf") else "prefetch"}
    elif name == "train":
        import zf_unet
        from zf_unet.config import Config

        data = Path(os.environ.get("ZF_UNET_DATA", ROOT.parent / "shared" / "data")) / "isbi2012"
        cfg = Config.from_toml(ROOT / "configs" / "isbi2012.toml")
        sets = [f"train.epochs={args.epochs}", "train.tensorboard=false",
                f"data.samples_per_epoch={args.steps * cfg.data.batch_size}"]
        if data.is_dir():
            sets.append(f"data.source={json.dumps(str(data))}")
        else:
            sets += ['data.source="synthetic"', "data.synthetic_n=24", "data.synthetic_size=512"]
        cfg = cfg.override(sets)
        with tempfile.TemporaryDirectory() as tmp:
            zf_unet.train(cfg, Path(tmp) / "run", fresh=True, verbose=0)
        info = {"model": "ISBI 2012 recipe (build_unet depth 5, 16 filters, bf16)",
                "batch": cfg.data.batch_size, "size": cfg.data.patch_size,
                "data": "isbi2012" if data.is_dir() else "synthetic"}
    else:
        raise ValueError(f"unknown variant {name!r}; known: {VARIANTS}")
    return {"variant": name, **info, "epochs": epochs_from_trace(trace)}


# --------------------------------------------------------------------------- parent


def run_child(name: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--epochs",
           str(args.epochs), "--steps", str(args.steps), "--batch", str(args.batch),
           "--size", str(args.size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"variant {name} failed (exit {proc.returncode}): " + " | ".join(tail))


def summarise(runs: list[dict]) -> dict:
    """Medians per part (wall, CPU) over the epochs after the first, and the first epoch."""
    later = [e for r in runs for e in r["epochs"][1:]]
    first = [r["epochs"][0] for r in runs if r["epochs"]]

    def med(eps: list[dict], key: str, i: int) -> float:
        return statistics.median(e["parts"][key][i] for e in eps) if eps else float("nan")

    out = {"n_epochs": len(later),
           "wall": statistics.median(e["wall"] for e in later) if later else float("nan"),
           "outside_steps": statistics.median(e["wall"] - e["parts"]["steps"][0]
                                              for e in later) if later else float("nan"),
           "parts": {p: [med(later, p, 0), med(later, p, 1)] for p in PARTS},
           "first_epoch_wall": statistics.median(e["wall"] for e in first) if first else None}
    cbs: dict[str, list[float]] = {}
    for e in later:
        for k, v in e["callbacks"].items():
            cbs.setdefault(k, []).append(v[0])
    out["callbacks"] = {k: statistics.median(v) for k, v in cbs.items()}
    # every `fit` call's release (the last epoch of each call, the first epochs included)
    ends = [e["parts"]["release"][0] for r in runs for e in r["epochs"] if e.get("fit_end")]
    out["release_per_fit"] = {"n": len(ends), "median": statistics.median(ends) if ends else None,
                              "mean": statistics.fmean(ends) if ends else None,
                              "max": max(ends) if ends else None,
                              "over_0.1s": sum(v > 0.1 for v in ends)}
    return out


def report(summary: dict, meta: dict) -> str:
    lines = [f"epoch overhead, {meta['date']} ({meta['cpu']}, {meta['cores']} cores), load "
             f"{meta['load_start']:.2f} -> {meta['load_end']:.2f}, {meta['rounds']} round(s), "
             f"{meta['epochs']} epochs x {meta['steps']} steps", "",
             "| variant | epochs | wall s/epoch | outside steps s | "
             + " | ".join(PARTS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(PARTS)]
    for name, s in summary.items():
        cells = " | ".join(f"{s['parts'][p][0]:.3f}" for p in PARTS)
        lines.append(f"| {name} | {s['n_epochs']} | {s['wall']:.3f} | {s['outside_steps']:.3f} "
                     f"| {cells} |")
    lines += ["", "Release (`on_train_end` returned -> `fit` returned) of every `fit` call, "
              "first epochs included:", ""]
    for name, s in summary.items():
        r = s["release_per_fit"]
        if r["n"]:
            lines.append(f"- {name}: {r['n']} calls, median {r['median']:.3f} s, mean "
                         f"{r['mean']:.3f} s, max {r['max']:.3f} s, {r['over_0.1s']} over 0.1 s")
    lines += ["", "CPU seconds in the same intervals (a wait shows as wall >> CPU):", ""]
    for name, s in summary.items():
        lines.append(f"- {name}: " + ", ".join(f"{p} {s['parts'][p][1]:.3f}" for p in PARTS
                                               if p != "gc"))
    for name, s in summary.items():
        if s["callbacks"]:
            lines.append(f"- {name} on_epoch_end per callback (s): " + ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(s["callbacks"].items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/epoch_overhead.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(RESULT_TAG + json.dumps(run_variant(args.child, args)), flush=True)
        return 0
    meta = {**machine_info(), "load_start": os.getloadavg()[0], "rounds": args.rounds,
            "epochs": args.epochs, "steps": args.steps, "batch": args.batch, "size": args.size,
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for v in args.variants:
            print(f"round {r + 1}/{args.rounds}: {v}", flush=True)
            runs[v].append(run_child(v, args))
    meta["load_end"] = os.getloadavg()[0]
    summary = {v: summarise(rs) for v, rs in runs.items()}
    text = report(summary, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1)
                        + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
