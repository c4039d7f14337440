"""The ``zf-unet`` command line. Errors in user input exit with code 2 and one message."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _cmd_demo(args: argparse.Namespace) -> int:
    from zf_unet.demo import DemoConfig, run_demo

    cfg = DemoConfig()
    for field in ("epochs", "n_train", "n_val", "size", "seed", "precision", "batch_size"):
        value = getattr(args, field)
        if value is not None:
            setattr(cfg, field, value)
    if args.quick:
        cfg.epochs = min(cfg.epochs, 2)
        cfg.n_train = min(cfg.n_train, 16)
        cfg.n_val = min(cfg.n_val, 4)
        cfg.size = min(cfg.size, 64)
    run_demo(args.out, cfg, verbose=0 if args.quiet else 1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zf-unet", description="Keras 3 U-Net toolkit.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="train a small U-Net on built-in synthetic EM-like data")
    demo.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    demo.add_argument("--epochs", type=int)
    demo.add_argument("--n-train", dest="n_train", type=int)
    demo.add_argument("--n-val", dest="n_val", type=int)
    demo.add_argument("--size", type=int, help="image side length (multiple of 8)")
    demo.add_argument("--batch-size", dest="batch_size", type=int)
    demo.add_argument("--seed", type=int)
    demo.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"])
    demo.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from zf_unet import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from zf_unet.errors import ZFUNetError

    try:
        return int(args.func(args) or 0)
    except (ZFUNetError, FileNotFoundError) as exc:
        print(f"zf-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
