"""The ``zf-unet`` command line. Errors in user input exit with code 2 and one message."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from zf_unet import registry
from zf_unet.backend import BACKENDS, import_tensorflow_quietly, select_backend


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
    run_demo(args.out, cfg, verbose=0 if args.quiet else 1, overwrite=args.overwrite)
    return 0


def _cmd_show_augment(args: argparse.Namespace) -> int:
    import tempfile

    from zf_unet.data import Augment, make_datasets, write_synthetic_folder
    from zf_unet.outputs import claim_file
    from zf_unet.plots import save_augment_grid

    claim_file(args.out, inputs=[] if args.data == "synthetic" else [args.data],
               overwrite=args.overwrite)
    source = args.data
    tmp = None
    if source == "synthetic":
        tmp = tempfile.TemporaryDirectory()
        source = write_synthetic_folder(tmp.name, n=max(4, args.n), size=256, seed=args.seed)
    aug = Augment(elastic=not args.no_elastic, elastic_std=args.elastic_std,
                  rotation_degrees=args.rotation, gray_values=not args.no_gray)
    try:
        train, _ = make_datasets(source, patch_size=args.patch_size, batch_size=args.n,
                                 val_fraction=0.0, seed=args.seed, augment=aug,
                                 border_weights=not args.no_weights,
                                 samples_per_epoch=args.n, num_classes=args.num_classes)
        batch = [t.numpy() for t in next(iter(train))]
    finally:
        if tmp is not None:
            tmp.cleanup()
    weights = batch[2] if len(batch) == 3 else None
    path = save_augment_grid(batch[0], batch[1], weights, args.out)
    print(f"wrote {path} ({args.n} augmented samples)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from zf_unet.config import Config
    from zf_unet.training import train

    cfg = Config.from_toml(args.config) if args.config else Config()
    if args.set:
        cfg = cfg.override(args.set)
    # Flags win over --set; they are set as values, never pasted into TOML text (a path may
    # hold quotes or backslashes).
    flags = {"data": {"source": args.data},
             "train": {"precision": args.precision, "strategy": args.strategy,
                       "epochs": args.epochs, "seed": args.seed}}
    for section, values in flags.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(
                getattr(cfg, section), **values)})
    cfg.validate("command line")
    _, run = train(cfg, args.out, fresh=args.fresh, verbose=0 if args.quiet else "auto")
    names = [n for n in ("best.keras", "last.keras", "final.keras", "log.csv",
                         "training_curves.png") if (run / n).exists()]
    print(f"run folder: {run} ({', '.join(names)})")
    return 0


def _load_model(path: str):
    """The ``--model`` argument: a ``.keras`` file or ``pretrained:NAME``."""
    from zf_unet.hub import load_model

    return load_model(path)


class _Given(argparse.Action):
    """Store the value and record that the flag was given (``<dest>_given``): flags whose
    default is a value can then be refused where they do not apply."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest.removeprefix('model_')}_given", True)


def _int_at_least(flag: str, minimum: int):
    """argparse type: an integer >= ``minimum``, errors naming ``flag``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value

    parse.__name__ = flag  # argparse names the type in "invalid <name> value" messages
    return parse


def _probability(flag: str):
    """argparse type: a number strictly between 0 and 1, errors naming ``flag``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"expected a value between 0 and 1, got {text}")
        return value

    parse.__name__ = flag  # argparse names the type in "invalid <name> value" messages
    return parse


def _cmd_predict(args: argparse.Namespace) -> int:
    from zf_unet.file_prediction import predict_files

    if args.seed_threshold is not None and not args.cells:
        from zf_unet.errors import ConfigError

        raise ConfigError("--seed-threshold only applies with --cells (cell labels); "
                          "add --cells or drop it")
    model = _load_model(args.model)
    _check_tile_axes(args, model)
    written = predict_files(model, args.inputs, args.out, tile_size=args.tile_size,
                            overlap=args.overlap, tta=args.tta, threshold=args.threshold,
                            batch_size=args.batch_size,
                            cells=(0.8 if args.seed_threshold is None else args.seed_threshold)
                            if args.cells else None, overwrite=args.overwrite,
                            palette=args.palette, prob=not args.no_prob)
    from zf_unet.models import model_geometry

    if model_geometry(model).spatial_axes == 3:
        print("note: volume model: each input is one volume (multi-page TIFF, .npy or a folder "
              "of slices) -> NAME_mask.tif (and NAME_prob.tif); no overlay (2-D only)")
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zf_unet.evaluation import (confusion_paths, evaluate_model, format_report, json_ready,
                                    run_config_for, save_confusion)
    from zf_unet.models import model_geometry

    model = _load_model(args.model)
    _check_tile_axes(args, model)
    volumes = model_geometry(model).spatial_axes == 3
    several = model_geometry(model)["num_classes"] > 1 or volumes
    confusion = args.confusion
    if confusion is None and args.json and several:
        confusion = str(Path(args.json).parent / f"{Path(args.json).stem}_confusion")
    from zf_unet.outputs import claim_files

    inputs = [args.model, args.data, args.masks]
    planned = {"--json": [args.json] if args.json else [],
               "--confusion": confusion_paths(confusion) if confusion and several else []}
    for flag, paths in planned.items():  # all checked before anything is written
        claim_files(paths, inputs=inputs, overwrite=args.overwrite, flag=flag)
    if args.confusion and model_geometry(model)["num_classes"] == 1 and not volumes:
        from zf_unet.errors import ConfigError

        raise ConfigError("--confusion: a confusion matrix is written for models with several "
                          "classes; this model is binary (its report is the ISBI scores)")
    cfg = run_config_for(args.model)
    if args.val_indices:
        from zf_unet.config import Config

        cfg = (cfg or Config()).override([f"data.val_indices=[{args.val_indices}]"])
    data = args.data if args.masks is None else (args.data, args.masks)
    result = evaluate_model(model, data, split=args.split, config=cfg, name=args.model,
                            tile_size=args.tile_size, overlap=args.overlap, tta=args.tta,
                            segmentation=args.segmentation, ignore_index=args.ignore_index,
                            num_classes=args.num_classes,
                            val_indices_given=bool(args.val_indices), model_path=args.model)
    print(format_report(result))
    if result.get("kind") == "multiclass":
        if confusion is not None:
            csv_path, png_path = save_confusion(result, confusion)
            print(f"wrote {csv_path} and {png_path}")
    if args.json:
        from zf_unet.io_utils import write_json_atomic

        write_json_atomic(json_ready(result), args.json)
        print(f"wrote {args.json}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zf_unet.errors import ConfigError

    from zf_unet.outputs import check_not_input, claim_file

    if args.format != "saved_model":
        # TFLite / ONNX take the bare network: say so instead of ignoring these flags
        given = [flag for flag, used in (("--tiled", args.tiled),
                                         ("--input-dtype", args.input_dtype_given),
                                         ("--version", args.version_given),
                                         ("--threshold", args.threshold_given)) if used]
        if given:
            raise ConfigError(f"{given[0]}: applies to --format saved_model only; a "
                              f"{args.format} export is the bare network (float32 input in "
                              "[0, 1], probabilities out): drop it, or export a SavedModel")
        claim_file(args.out, inputs=[args.model], overwrite=args.overwrite)
    else:
        check_not_input(args.out, [args.model])
    model = _load_model(args.model)
    _check_tile_axes(args, model)
    if args.format != "saved_model":
        from zf_unet.models import model_geometry

        if model_geometry(model).spatial_axes == 3:
            raise ConfigError(f"--format {args.format}: supports 2-D image models only; this "
                              "model segments volumes (input (batch, D, H, W, C)); export it "
                              "with --format saved_model (with or without --tiled)")
    if args.format == "saved_model":
        from zf_unet.export import export_saved_model

        path = export_saved_model(  # an existing version: OutputExistsError (one message)
            model, args.out, version=args.model_version, tiled=args.tiled,
            tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
            input_dtype=args.input_dtype, threshold=args.threshold, overwrite=args.overwrite)
        print(f"wrote {path} ({'tiled' if args.tiled else 'untiled'}, input "
              f"{args.input_dtype}); serve with --model_base_path={Path(args.out).resolve()}; "
              f"inspect with: saved_model_cli show --dir {path} --all")
    elif args.format == "tflite":
        from zf_unet.export import export_tflite

        tile = args.tile_size if isinstance(args.tile_size, tuple) else (args.tile_size,) * 2
        size = args.input_size or list(tile)
        path = export_tflite(model, args.out, input_size=tuple(size), quantize=args.quantize,
                             overwrite=args.overwrite)
        print(f"wrote {path} (TFLite, input 1x{size[0]}x{size[1]} float32 in [0, 1])")
    else:
        from zf_unet.export import export_onnx

        try:
            path = export_onnx(model, args.out, overwrite=args.overwrite)
        except ImportError as exc:
            raise ConfigError(str(exc)) from None
        print(f"wrote {path} (ONNX, input 'image' float32 [batch, H, W, C] in [0, 1])")
    return 0


def _class_values(text: str | None) -> list | None:
    """The ``--class-values`` JSON (e.g. ``'[[0, 32], [255]]'``) as a list, or None."""
    if not text:
        return None
    import json

    from zf_unet.errors import DataError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"--class-values {text!r}: not a list ({exc}); "
                        "expected e.g. '[[0, 32], [255]]'") from None


def _cmd_check_data(args: argparse.Namespace) -> int:
    from zf_unet.doctor import check_data
    from zf_unet.errors import DataError

    class_values = _class_values(args.class_values)
    if args.json:
        from zf_unet.outputs import claim_file

        json_out = claim_file(args.json, inputs=[args.data], overwrite=args.overwrite,
                              flag="--json")
    from zf_unet.data.colour_masks import parse_palette_text

    palette = parse_palette_text(args.palette) if args.palette else None
    report = check_data(args.data, num_classes=args.num_classes, patch_size=args.patch_size,
                        ignore_index=args.ignore_index, class_values=class_values,
                        palette=palette)
    print(report.format())
    if args.json:
        from zf_unet.io_utils import write_json_atomic

        write_json_atomic(report.to_dict(), json_out)
        print(f"wrote {args.json}")
    if report.unreadable:
        more = f" (and {len(report.unreadable) - 1} more)" if len(report.unreadable) > 1 else ""
        raise DataError(f"{len(report.unreadable)} file(s) cannot be read: "
                        f"{report.unreadable[0]}{more}")
    return report.exit_code


def _cmd_pack(args: argparse.Namespace) -> int:
    from zf_unet.data.shard_format import parse_size
    from zf_unet.data.shard_writer import write_shards
    from zf_unet.data.sources import open_source

    from zf_unet.data.colour_masks import palette_arguments

    shard_size = parse_size(args.shard_size, "--shard-size")
    class_values = _class_values(args.class_values)
    palette, num_classes = palette_arguments(args.palette, args.num_classes, args.ignore_index)
    samples = open_source(args.source, convention="auto", num_classes=num_classes,
                          palette=palette, class_values=class_values,
                          ignore_index=args.ignore_index)
    info = write_shards(samples, args.out, shard_size=shard_size,
                        border_weights=args.border_weights, w0=args.w0, sigma=args.sigma,
                        ignore_index=args.ignore_index, num_classes=num_classes,
                        meta={"source": str(args.source)}, overwrite=args.overwrite,
                        inputs=[args.source])
    print(f"wrote {info.num_samples} samples in {len(info.shards)} shards to {args.out} "
          f"({info.total_bytes / 2**20:.1f} MB)")
    return 0


def _tile_values(flag: str, minimum: int):
    """argparse type for ``--tile-size`` / ``--overlap``: an int (every spatial axis) or one
    int per spatial axis, comma-separated (``16,256,256`` for a volume model, ``256,512`` for
    an image model), each >= ``minimum``. Returns an int or a tuple of ints; errors name
    ``flag``. Whether the count fits the model is checked once it is loaded
    (:func:`_check_tile_axes`)."""
    def parse(text: str) -> int | tuple[int, ...]:
        parts = [t.strip() for t in text.split(",")]
        values = []
        for part in parts:
            try:
                values.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected an integer or comma-separated integers (one per spatial axis, "
                    f"e.g. 16,256,256), got {text!r}") from None
        if len(values) not in (1, 2, 3):
            raise argparse.ArgumentTypeError(
                f"expected an integer or 2 (H,W) / 3 (D,H,W) comma-separated integers, got "
                f"{len(values)} values in {text!r}")
        bad = [v for v in values if v < minimum]
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected integers >= {minimum}, got {bad[0]} in {text!r}")
        return values[0] if len(values) == 1 else tuple(values)

    parse.__name__ = flag  # argparse names the type in "invalid <name> value" messages
    return parse


def _check_tile_axes(args: argparse.Namespace, model) -> None:
    """A per-axis ``--tile-size`` / ``--overlap`` must have one value per spatial axis of
    ``model``: :class:`ConfigError` (one line, naming the flag) otherwise."""
    from zf_unet.errors import ConfigError
    from zf_unet.models import model_geometry

    nd = model_geometry(model).spatial_axes
    axes = "(D, H, W)" if nd == 3 else "(H, W)"
    kind = "volumes" if nd == 3 else "2-D images"
    for flag, dest in (("--tile-size", "tile_size"), ("--overlap", "overlap")):
        value = getattr(args, dest, None)
        if isinstance(value, tuple) and len(value) != nd:
            raise ConfigError(
                f"argument {flag}: {len(value)} values {','.join(map(str, value))} but the "
                f"model segments {kind} with {nd} spatial axes {axes}; expected an integer "
                f"or {nd} comma-separated integers")


def _add_tiling_args(parser: argparse.ArgumentParser, *, tta: bool = True,
                     batch_size: bool = True, tile_help: str | None = None,
                     batch_help: str | None = None) -> None:
    """The overlap-tile options that predict, evaluate and export share, with the defaults
    of :func:`zf_unet.predict_tiled` and the TTA names of :data:`zf_unet.registry.TTA_MODES`.
    ``--tile-size`` and ``--overlap`` take an int or one value per spatial axis
    (``16,256,256``), parsed to an int or a tuple (:func:`_tile_values`)."""
    default = registry.TILING_DEFAULTS
    parser.add_argument("--tile-size", dest="tile_size", type=_tile_values("--tile-size", 1),
                        default=default["tile_size"], metavar="N[,N,N]",
                        help=(tile_help or f"model input tile side (default "
                              f"{default['tile_size']})") + "; one value per spatial axis "
                        "also works, e.g. 16,256,256 (D,H,W) for a volume model")
    parser.add_argument("--overlap", type=_tile_values("--overlap", 0),
                        default=default["overlap"], metavar="N[,N,N]",
                        help=f"minimum tile overlap in output pixels (default "
                        f"{default['overlap']}); or one per spatial axis, e.g. 4,64,64")
    if batch_size:
        parser.add_argument("--batch-size", dest="batch_size",
                            type=_int_at_least("--batch-size", 1), default=default["batch_size"],
                            help=batch_help or f"tiles per model call (default "
                            f"{default['batch_size']})")
    if tta:
        names = [n for n in registry.TTA_MODES if n != "none"]
        parser.add_argument("--tta", choices=names, help="test-time augmentation: " + "; ".join(
            f"{n}: {registry.TTA_MODES.doc.get(n, n)}" for n in names))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other ``zf-unet`` error:
    ``zf-unet COMMAND: error: MESSAGE (see zf-unet COMMAND --help)``, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, help="Keras backend to run the model on "
                   "(default: $KERAS_BACKEND, else tensorflow)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zf-unet", description="Keras 3 U-Net toolkit.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="train a small U-Net on built-in synthetic EM-like data")
    demo.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    demo.add_argument("--epochs", type=_int_at_least("--epochs", 1))
    demo.add_argument("--n-train", dest="n_train", type=_int_at_least("--n-train", 1))
    demo.add_argument("--n-val", dest="n_val", type=_int_at_least("--n-val", 1))
    demo.add_argument("--size", type=_int_at_least("--size", 8), help="image side length (multiple of 8)")
    demo.add_argument("--batch-size", dest="batch_size",
                      type=_int_at_least("--batch-size", 1))
    demo.add_argument("--seed", type=_int_at_least("--seed", 0))
    demo.add_argument("--precision", choices=registry.PRECISIONS.names())
    demo.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the outputs of an earlier demo in --out")
    demo.add_argument("--quiet", action="store_true")
    _add_backend(demo)
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser("train", help="train a U-Net from a TOML config (resumes if interrupted)")
    tr.add_argument("--config", help="TOML config (see configs/); defaults for missing keys")
    tr.add_argument("--data", help="data folder (images/ + masks/), 'synthetic' (built-in) or "
                    "tfds:NAME (a TensorFlow Datasets name); anything else is a path")
    tr.add_argument("--out", default="runs/run", help="run folder; re-running resumes it")
    tr.add_argument("--precision", choices=registry.PRECISIONS.names())
    tr.add_argument("--strategy", choices=registry.STRATEGIES.names())
    tr.add_argument("--epochs", type=_int_at_least("--epochs", 1))
    tr.add_argument("--seed", type=_int_at_least("--seed", 0))
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set model.filters=16")
    tr.add_argument("--fresh", action="store_true", help="delete the run folder and start over")
    tr.add_argument("--quiet", action="store_true")
    _add_backend(tr)
    tr.set_defaults(func=_cmd_train)

    pr = sub.add_parser("predict", help="overlap-tile prediction of images, folders, TIFF stacks")
    pr.add_argument("inputs", nargs="+", help="image files, folders or multi-page TIFF stacks")
    pr.add_argument("--model", required=True, help=".keras model")
    pr.add_argument("--out", default="predictions", help="output folder")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (default: refuse, before writing)")
    _add_tiling_args(pr)
    pr.add_argument("--threshold", type=_probability("--threshold"), default=0.5,
                    help="mask = probability > this (binary models; default 0.5)")
    pr.add_argument("--cells", action="store_true", help="also write NAME_cells.tif: cell labels "
                    "from a seeded watershed of the probability map (binary models)")
    pr.add_argument("--seed-threshold", dest="seed_threshold",
                    type=_probability("--seed-threshold"),
                    help="with --cells: seeds are the regions with p > this (default 0.8)")
    pr.add_argument("--palette", help="class colours of the overlay (models with several "
                    "classes): a matplotlib colormap name (tab10, tab20, viridis) or hex "
                    "colours #ff0000,#00ff00,... (default tab10, tab20 above 10 classes)")
    pr.add_argument("--no-prob", dest="no_prob", action="store_true",
                    help="skip NAME_prob.tif (the float32 per-class probabilities)")
    _add_backend(pr)
    pr.set_defaults(func=_cmd_predict)

    ev = sub.add_parser(
        "evaluate", help="scores on a data set: ISBI-style (pixel error, Rand error, VI, IoU) "
        "for binary models, per-class IoU/Dice/precision/recall and mIoU for several classes",
        description="Predict every image of a split of DIR and score it. Binary models get the "
        "ISBI 2012 scores; models with several classes a confusion matrix summed over all "
        "images (void pixels left out) with per-class IoU, Dice, precision, recall, support, "
        "mIoU, pixel accuracy and mean class accuracy. Masks are read with the run's "
        "conventions (config.toml: class_values, ignore_index; resolved.json). Volume "
        "models: every volume is predicted whole and scored by a confusion matrix over all "
        "voxels (binary models: p > 0.5, two classes); the ISBI Rand error / VI are 2-D "
        "only and not computed.")
    ev.add_argument("--model", required=True, help=".keras model (its run's config.toml sets "
                    "the split and how masks are read)")
    ev.add_argument("--data", required=True, help="folder with images/ and masks/ (volume "
                    "models: one volume per entry: multi-page TIFF, .npy or a folder of "
                    "slices), or, with --masks, an image stack / volume")
    ev.add_argument("--masks", help="the masks of --data when it is one image stack or volume "
                    "(multi-page TIFF, or for volume models also .npy or a folder of slices)")
    ev.add_argument("--split", choices=["auto", "val", "train", "all"], default="auto",
                    help="auto (default): the held-out images (as training split them) when "
                    "--data is the run's training source (data.source) or --val-indices is "
                    "given; every image otherwise (another folder, the run's val_source, or a "
                    "model without a run config.toml)")
    ev.add_argument("--val-indices", dest="val_indices", help="e.g. 20,21,22,23")
    ev.add_argument("--ignore-index", dest="ignore_index",
                    type=_int_at_least("--ignore-index", -1),
                    help="void mask value left out of the scores (default: the run's; -1 = "
                    "none)")
    ev.add_argument("--num-classes", dest="num_classes",
                    type=_int_at_least("--num-classes", 1),
                    help="K to read the masks with (default: the model's output count, which "
                    "it must equal)")
    _add_tiling_args(ev, batch_size=False)
    ev.add_argument("--segmentation", choices=["threshold", "watershed"], default="threshold",
                    help="cells for the Rand error: connected components of p > threshold "
                    "(default, no post-processing) or a seeded watershed (seeds p > threshold)")
    ev.add_argument("--json", help="also write the full result as JSON (several classes: also "
                    "JSONSTEM_confusion.csv / .png next to it, unless --confusion is given)")
    ev.add_argument("--confusion", metavar="PREFIX",
                    help="several classes: write the confusion matrix to PREFIX.csv (pixel "
                    "counts, rows truth, columns prediction) and PREFIX.png (row-normalised "
                    "heat map)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace existing --json / --confusion files")
    _add_backend(ev)
    ev.set_defaults(func=_cmd_evaluate)

    ex = sub.add_parser("export", help="export a .keras model for TF Serving (SavedModel), "
                        "TFLite or ONNX")
    ex.add_argument("--model", required=True, help=".keras model")
    ex.add_argument("--out", required=True, help="SavedModel base folder (writes OUT/VERSION/), "
                    "or the .tflite / .onnx file")
    ex.add_argument("--format", choices=["saved_model", "tflite", "onnx"], default="saved_model")
    # dest differs from the top-level --version flag (print the package version)
    ex.add_argument("--version", dest="model_version", type=_int_at_least("--version", 1),
                    default=1, action=_Given,
                    help="SavedModel version subfolder (default 1)")
    ex.add_argument("--tiled", action="store_true",
                    help="overlap-tile prediction inside the SavedModel (large images)")
    _add_tiling_args(ex, tta=False, tile_help="tile side (--tiled); TFLite input size when "
                     "--input-size is not given", batch_help="tiles per model call (--tiled)")
    ex.add_argument("--input-dtype", dest="input_dtype", choices=registry.INPUT_DTYPES,
                    action=_Given, default=registry.INPUT_DTYPES[0],
                    help="dtype of the SavedModel's 'image' input")
    ex.add_argument("--threshold", type=_probability("--threshold"), default=0.5,
                    action=_Given, help="mask = probability > this")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing version "
                    "(SavedModel) or file (TFLite, ONNX)")
    ex.add_argument("--input-size", dest="input_size", type=_int_at_least("--input-size", 1),
                    nargs=2, metavar=("H", "W"),
                    help="TFLite fixed input size (default TILE_SIZE TILE_SIZE)")
    ex.add_argument("--quantize", action="store_true",
                    help="TFLite dynamic-range quantisation (int8 weights)")
    ex.set_defaults(func=_cmd_export, input_dtype_given=False, version_given=False,
                    threshold_given=False)

    ck = sub.add_parser(
        "check-data", help="check a training folder (images/ + masks/) and report problems",
        description="Read every image/mask pair of DIR with the training readers and report "
        "sizes, dtypes, channels, mask value conventions, class frequencies, empty masks and "
        "likely problems (size mismatches, bad mask values, NaN pixels, one class only, "
        "severe imbalance, mixed conventions, images smaller than the patch size).",
        epilog="exit status: 0 no problems found; 1 problems found (errors or warnings, "
        "listed in the report); 2 unreadable input (DIR missing or not an images/ + masks/ "
        "folder, unpaired file names, or files that cannot be decoded).")
    ck.add_argument("data", metavar="DIR", help="folder with images/ and masks/")
    ck.add_argument("--num-classes", dest="num_classes", type=_int_at_least("--num-classes", 1),
                    help="K for class-id masks (values 0..K-1); default: binary masks")
    ck.add_argument("--patch-size", dest="patch_size", type=_int_at_least("--patch-size", 1),
                    help="training patch size; smaller images are reported")
    ck.add_argument("--ignore-index", dest="ignore_index", type=_int_at_least("--ignore-index", 0),
                    help="void mask value, left out of the class statistics")
    ck.add_argument("--class-values", dest="class_values",
                    help="gray-value codes per class as JSON, e.g. '[[0, 32, 64], [255]]'")
    ck.add_argument("--palette", help="class colours of RGB masks (data.palette): class i = "
                    "colour i, e.g. '[[0,0,0],[255,0,0]]', or a table '{\"#000000\"=0, "
                    "\"#ffffff\"=255}' (a colour mapped to --ignore-index is void); without "
                    "it the colours found are listed with a palette to paste")
    ck.add_argument("--json", help="also write the report as JSON")
    ck.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ck.set_defaults(func=_cmd_check_data)

    pk = sub.add_parser(
        "pack", help="pack a training folder into TFRecord shards for data larger than memory",
        description="Read every image/mask pair of SOURCE (a folder with images/ and masks/, "
        "or any data source `train` accepts) and write TFRecord shard files of about "
        "--shard-size bytes to DIR, with an index (zf_unet_shards.json) holding class pixel "
        "counts and per-channel mean/std. Train from them with `zf-unet train --data DIR`.",
        epilog="exit status: 0 written; 2 unreadable input or DIR exists (see --overwrite).")
    pk.add_argument("source", metavar="SOURCE", help="folder with images/ and masks/")
    pk.add_argument("--out", required=True, metavar="DIR", help="shard folder to create")
    pk.add_argument("--shard-size", dest="shard_size", default="256MB",
                    help="about how large each shard file is, e.g. 256MB, 1GB, 500k "
                    "(default: 256MB)")
    pk.add_argument("--border-weights", dest="border_weights", action="store_true",
                    help="also store U-Net border weight maps (binary masks only)")
    pk.add_argument("--w0", type=float, default=10.0, help="border weight w0 (default: 10)")
    pk.add_argument("--sigma", type=float, default=5.0,
                    help="border width sigma in pixels (default: 5)")
    pk.add_argument("--num-classes", dest="num_classes", type=_int_at_least("--num-classes", 1),
                    help="K for class-id masks (values 0..K-1); default: binary masks")
    pk.add_argument("--class-values", dest="class_values",
                    help="gray-value codes per class as JSON, e.g. '[[0, 32, 64], [255]]'")
    pk.add_argument("--ignore-index", dest="ignore_index", type=_int_at_least("--ignore-index", 0),
                    help="void mask value, left out of class counts and weight maps")
    pk.add_argument("--palette", help="class colours of RGB masks (data.palette): class i = "
                    "colour i, e.g. '[[0,0,0],[255,0,0]]', or a table '{\"#000000\"=0, "
                    "\"#ffffff\"=255}' (a colour mapped to --ignore-index is void); "
                    "--num-classes defaults to the palette's")
    pk.add_argument("--overwrite", action="store_true", help="replace an existing DIR that "
                    "zf-unet pack wrote (a folder of other files is never replaced)")
    pk.set_defaults(func=_cmd_pack)

    show = sub.add_parser("show-augment", help="write a PNG grid of augmented training samples")
    show.add_argument("data", help="folder with images/ and masks/, or 'synthetic'")
    show.add_argument("--out", default="augment_grid.png", help="PNG to write")
    show.add_argument("--n", type=_int_at_least("--n", 1), default=4, help="number of samples (rows)")
    show.add_argument("--patch-size", dest="patch_size", type=_int_at_least("--patch-size", 1),
                      default=256)
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--elastic-std", dest="elastic_std", type=float, default=10.0)
    show.add_argument("--rotation", type=float, default=0.0, help="max small rotation, degrees")
    show.add_argument("--num-classes", dest="num_classes",
                      type=_int_at_least("--num-classes", 1))
    show.add_argument("--no-elastic", dest="no_elastic", action="store_true")
    show.add_argument("--no-gray", dest="no_gray", action="store_true")
    show.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    show.add_argument("--no-weights", dest="no_weights", action="store_true",
                      help="skip border weight maps (needed for multi-class masks)")
    show.set_defaults(func=_cmd_show_augment)
    return parser


def _one_line(exc: BaseException) -> str:
    """An exception as one line (multi-line messages joined)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


#: Arguments that name files or folders: a leading ``~`` is expanded (a shell leaves
#: ``--out=~/x`` as it is), so what is checked is what is written.
PATH_ARGS = ("out", "json", "confusion", "data", "masks", "model", "source", "config", "inputs")


def _expand_home(args: argparse.Namespace) -> None:
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) and
                                 v.startswith("~") else v for v in value])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 = bad input, with one message)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (one line on stderr, status 2)
        return exc.code if isinstance(exc.code, int) else 2
    _expand_home(args)
    if args.version:
        from zf_unet import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from zf_unet.errors import TrainingFailedError, ZFUNetError

    try:
        # Before Keras is imported: export traces TensorFlow graphs, whatever trained the model.
        chosen = select_backend("tensorflow" if args.command == "export"
                                else getattr(args, "backend", None))
        if chosen == "tensorflow":
            import_tensorflow_quietly()
        for module in ("losses", "metrics", "models", "optimizers",
                       "data.augment_layer"):  # registers their objects
            importlib.import_module(f"zf_unet.{module}")
        return int(args.func(args) or 0)
    except TrainingFailedError as exc:  # it ran, and failed: not a usage error
        print(f"zf-unet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (ZFUNetError, ValueError, OSError) as exc:
        # OSError: missing / unreadable / unwritable paths (permissions, full disk, ...)
        print(f"zf-unet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
