"""Every command and code block in README.md is exercised: run here, or by a named test.

The fenced blocks of README.md are extracted: shell blocks (no language, ``bash``, ``sh``) line by
line, and ``python`` blocks whole.

* Cheap commands run here: ``zf-unet --help`` and every ``COMMAND --help``, ``zf-unet
  check-data``, ``zf-unet show-augment synthetic``. ``zf-unet train`` commands run through the
  real command line with only the training itself replaced by a stub, which shows that the
  config files, ``--data``, ``--set`` and the other flags give the config that is trained.
* Expensive commands (``demo``, ``predict``, ``evaluate``, ``export``, ``saved_model_cli``,
  ``make demo``) are parsed by the real argument parser and matched to the tests that run them
  (``MAPPED``). Each mapped test must exist, must invoke the command, and every flag the README
  uses must appear in one of them.
* Python blocks run here (with small settings where the README trains) or, if expensive, are
  matched to tests (``PY_BLOCKS``).

A README command or block that is in neither list makes ``test_every_readme_block_is_known``
fail: add it to ``CHEAP``/``MAPPED``/``PY_BLOCKS`` together with what exercises it.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from zf_unet.cli import build_parser, main
from zf_unet.paths import data_root, isbi2012_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_LANGS = {"", "bash", "sh", "shell"}
KNOWN_LANGS = SHELL_LANGS | {"python", "text", "toml"}

# zf-unet subcommands run here (cheaply); train runs with the training stubbed out.
CHEAP = {"check-data", "show-augment", "train"}

# zf-unet subcommand / other program -> tests that run it ("file::function").
MAPPED = {
    "demo": ["test_cli.py::test_demo_quick_writes_all_results",
             "test_cli.py::test_demo_learns_well_above_trivial"],
    "train": ["test_train.py::test_cli_train_with_config_and_overrides",
              "test_train.py::test_train_writes_run_folder_and_resumes",
              "test_train.py::test_mixed_precision_training",
              "test_train.py::test_multiworker_two_processes_end_with_identical_weights"],
    "predict": ["test_evaluation.py::test_cli_predict_files_folders_and_stacks",
                "test_inference.py::test_tta_equals_average_of_manual_transforms",
                "test_postprocess.py::test_cli_predict_cells_for_an_image_and_a_stack",
                "test_cli_volumes.py::test_predict_volume_files_npy_and_slice_folder",
                "test_cli_volumes.py::test_per_axis_tiles_equal_the_python_call"],
    "evaluate": ["test_evaluation.py::test_cli_evaluate_prints_isbi_scores",
                 "test_evaluation.py::test_split_follows_training_config",
                 "test_postprocess.py::test_cli_evaluate_watershed",
                 "test_cli_volumes.py::test_evaluate_volumes_matches_a_numpy_confusion_matrix"],
    "export": ["test_cli.py::test_cli_export_refuses_to_overwrite_and_checks_sizes",
               "test_export.py::test_export_is_atomic_and_keeps_versions",
               "test_export.py::test_tiled_savedmodel_matches_predict_tiled",
               "test_cli_volumes.py::test_export_tiled_volume_saved_model_and_refusals"],
    "saved_model_cli": ["test_export.py::test_saved_model_cli_lists_the_signature"],
    "pack": ["test_shards.py::test_pack_command",
             "test_streaming.py::test_shards_stream_with_held_out_files_and_train"],
    "make demo": ["test_cli.py::test_demo_learns_well_above_trivial"],
}
# What a mapped test's source must contain to count as running the command.
INVOKES = {"demo": '"demo"', "train": '"train"', "predict": '"predict"', "evaluate": '"evaluate"',
           "export": '"export"', "pack": '"pack"', "saved_model_cli": "saved_model_cli", "make demo": "run_demo"}

# Python blocks, by their first line: ("run", substitutions) or ("mapped", tests).
PY_BLOCKS = {
    "import keras, zf_unet": ("run", {"make_synthetic(64, size=128)": "make_synthetic(8, size=32)",
                                      "depth=5, filters=32": "depth=3, filters=4",
                                      "epochs=5": "epochs=1"}),
    "train_ds, val_ds = zf_unet.data.make_datasets(": (
        "mapped", ["test_pipeline.py::test_folder_with_patches_augmentation_and_border_weights",
                   "test_pipeline.py::test_isbi_folder_trains_through_pipeline"]),
    "history, run_dir = zf_unet.train(": ("run", {}),
    "probs = zf_unet.predict_tiled(model, image,": ("run", {}),
    'model = zf_unet.pretrained("isbi2012-em")': ("run", {}),
    "model = zf_unet.build_unet_plus_plus(": ("run", {}),
    "model = zf_unet.build_unet((None, None, 3), num_classes=11)": ("run", {}),
    "import numpy as np, zf_unet": ("run", {}),
}


# ------------------------------------------------------------------------------- parsing


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(language, body, line number)`` of every fenced block."""
    out = []
    for m in re.finditer(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S):
        out.append((m.group(1).lower(), m.group(2), text[:m.start()].count("\n") + 1))
    return out


def shell_commands(text: str) -> list[tuple[str, int]]:
    cmds = []
    for lang, body, line in fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for i, raw in enumerate(body.splitlines()):
            cmd = re.sub(r"\s+#\s.*$", "", raw).strip()  # trailing "  # comment"
            if cmd and not cmd.startswith("#"):
                cmds.append((cmd, line + 1 + i))
    return cmds


def python_blocks(text: str) -> list[tuple[str, int]]:
    return [(body, line) for lang, body, line in fenced_blocks(text) if lang == "python"]


def zf_unet_argv(cmd: str) -> list[str]:
    """``zf-unet ...`` as argv: env assignments, ``...`` and ``[optional]`` brackets removed."""
    words = shlex.split(cmd)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    assert words[0] == "zf-unet", cmd
    return [w.strip("[]") for w in words[1:] if w != "..."]


def block_key(body: str) -> str | None:
    first = next(line for line in body.splitlines() if line.strip())
    return next((k for k in PY_BLOCKS if first.startswith(k)), None)


def long_flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def _test_function(ref: str):
    """The test function ``file.py::name`` (imported, so it must exist and import)."""
    file, name = ref.split("::")
    module = importlib.import_module(Path(file).stem)
    func = getattr(module, name, None)
    assert callable(func) and name.startswith("test_"), f"{ref}: no such test"
    return func


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


# --------------------------------------------------------------------------- structure


def test_readme_blocks_parse():
    blocks = fenced_blocks(_readme())
    assert len(blocks) >= 10
    unknown = [(lang, line) for lang, _, line in blocks if lang not in KNOWN_LANGS]
    assert not unknown, f"README blocks in unknown languages (add them to KNOWN_LANGS): {unknown}"
    assert "zf-unet train" in " ".join(c for c, _ in shell_commands(_readme()))


def test_quick_start_is_exactly_make_demo_and_make_test():
    text = _readme()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = fenced_blocks(section)
    cmds = [c for c, _ in shell_commands(section)]
    assert cmds == ["make demo", "make test"], cmds
    assert len(blocks) == 1


def test_every_readme_block_is_known():
    """Unmapped commands or code blocks fail here, naming the README line."""
    text = _readme()
    problems = []
    subs = _subcommands()
    for cmd, line in shell_commands(text):
        prog = [w for w in shlex.split(cmd) if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)][0]
        if prog == "zf-unet":
            argv = zf_unet_argv(cmd)
            sub = next((a for a in argv if not a.startswith("-")), None)
            if "--help" in argv or argv in (["--version"],):
                continue
            if sub not in subs:
                problems.append(f"line {line}: unknown zf-unet command {sub!r}: {cmd}")
            elif sub not in CHEAP and sub not in MAPPED:
                problems.append(f"line {line}: zf-unet {sub} is neither run here nor mapped: {cmd}")
        elif prog == "make":
            if cmd not in ("make demo", "make test"):
                problems.append(f"line {line}: unknown make target: {cmd}")
        elif prog == "pip":
            if not re.fullmatch(r'pip install "zf_unet\[\w+\]"', cmd):
                problems.append(f"line {line}: unexpected pip command: {cmd}")
        elif prog not in MAPPED:
            problems.append(f"line {line}: command {prog!r} is not exercised by any test: {cmd}")
    for body, line in python_blocks(text):
        if block_key(body) is None:
            problems.append(f"line {line}: Python block not in PY_BLOCKS: {body.splitlines()[0]!r}")
    assert not problems, "\n".join(problems)


def test_readme_command_table_lists_every_cli_command():
    text = _readme()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z-]+)[ `]", section, flags=re.M))
    assert documented == _subcommands(), (documented, _subcommands())
    in_block = {zf_unet_argv(c)[0] for c, _ in shell_commands(section) if c.startswith("zf-unet")}
    assert _subcommands() <= in_block, _subcommands() - in_block


def test_inline_zf_unet_commands_name_real_subcommands():
    spans = re.findall(r"`zf-unet ([a-z-]+)[^`]*`", _readme())
    assert spans
    unknown = sorted(set(spans) - _subcommands())
    assert not unknown, f"README mentions unknown zf-unet commands: {unknown}"


# -------------------------------------------------------------------- every CLI command


def test_every_zf_unet_command_parses_with_the_real_parser():
    parser = build_parser()
    for cmd, line in shell_commands(_readme()):
        if not cmd.split()[0].startswith(("zf-unet", "TF_CONFIG")):
            continue
        argv = zf_unet_argv(cmd)
        if "--help" in argv:
            continue
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"README line {line}: {cmd!r} does not parse: {err.getvalue()}")
        assert args.command, cmd


def test_mapped_tests_exist_invoke_the_command_and_use_every_readme_flag():
    text = _readme()
    for key, refs in MAPPED.items():
        sources = [inspect.getsource(_test_function(ref)) for ref in refs]
        assert any(INVOKES[key] in s for s in sources), f"{key}: no mapped test runs it ({refs})"
    for cmd, line in shell_commands(text):
        if not cmd.split()[0].startswith(("zf-unet", "TF_CONFIG")):
            continue
        argv = zf_unet_argv(cmd)
        sub = next((a for a in argv if not a.startswith("-")), None)
        if sub not in MAPPED or sub in CHEAP:  # CHEAP commands run in this file
            continue
        sources = "\n".join(inspect.getsource(_test_function(r)) for r in MAPPED[sub])
        for flag in long_flags(argv):
            dest = flag[2:].replace("-", "_")
            assert flag in sources or dest in sources, \
                f"README line {line}: {flag} of `zf-unet {sub}` is not used by {MAPPED[sub]}"


def test_make_targets_and_pip_extras_exist():
    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    test = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert demo and "zf-unet demo" in demo.group(1)
    assert test and "pytest" in test.group(1)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for cmd, line in shell_commands(_readme()):
        m = re.fullmatch(r'pip install "zf_unet\[(\w+)\]"', cmd)
        if m:
            assert m.group(1) in extras, f"README line {line}: no extra {m.group(1)!r} in pyproject"


def test_help_of_the_console_script_and_of_every_command(capsys):
    script = Path(sys.executable).with_name("zf-unet")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "zf_unet.cli"]
    proc = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for sub in _subcommands():
        assert sub in proc.stdout
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([sub, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: zf-unet {sub}" in capsys.readouterr().out


def _readme_zf_unet(sub: str) -> list[list[str]]:
    return [zf_unet_argv(c) for c, _ in shell_commands(_readme())
            if c.split()[0].startswith(("zf-unet", "TF_CONFIG"))
            and next((a for a in zf_unet_argv(c) if not a.startswith("-")), None) == sub]


def _with_data_root(argv: list[str]) -> list[str]:
    return [a.replace("../shared/data", str(data_root())) for a in argv]


def test_check_data_command_runs(capsys):
    if not (isbi2012_dir() / "images").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {isbi2012_dir()}")
    # The commands on the shared data run; generic ones ("data/train") only parse (above).
    runs = [a for a in _readme_zf_unet("check-data") if any("../shared/data" in x for x in a)]
    assert runs
    for argv in runs:
        assert main(_with_data_root(argv)) == 0, argv
        out = capsys.readouterr().out
        assert "24 image/mask pair(s)" in out and "no problems found" in out


def test_show_augment_command_runs(tmp_path, monkeypatch, capsys):
    runs = _readme_zf_unet("show-augment")
    assert runs
    monkeypatch.chdir(tmp_path)
    for argv in runs:
        assert main(argv) == 0, argv
        out = Path(argv[argv.index("--out") + 1])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_commands_build_the_config_they_claim(monkeypatch, tmp_path):
    """The real `zf-unet train` code path, with only zf_unet.training.train replaced."""
    import zf_unet.training

    seen = []

    def fake_train(cfg, out, **kwargs):
        seen.append((cfg, str(out)))
        return None, tmp_path / "run"

    monkeypatch.setattr(zf_unet.training, "train", fake_train)
    monkeypatch.chdir(ROOT)  # configs/... paths are relative to the repository
    runs = _readme_zf_unet("train")
    assert len(runs) >= 3
    for argv in runs:
        assert main(argv) == 0, argv
        cfg, out = seen[-1]
        args = build_parser().parse_args(argv)
        assert out == args.out
        if args.data:
            assert cfg.data.source == args.data
        if args.precision:
            assert cfg.train.precision == args.precision
        if args.strategy:
            assert cfg.train.strategy == args.strategy
        for item in args.set or []:
            section, key, value = re.match(r"(\w+)\.(\w+)=(.*)", item).groups()
            assert str(getattr(getattr(cfg, section), key)) == value, item
        if args.config == "configs/isbi2012.toml":
            assert cfg.data.border_weights and cfg.loss.name == "weighted_ce"
    assert len(seen) == len(runs)


# ---------------------------------------------------------------------- Python blocks


def _run_block(key: str, namespace: dict, extra: dict | None = None) -> dict:
    blocks = [b for b, _ in python_blocks(_readme()) if block_key(b) == key]
    assert len(blocks) == 1, f"expected one README block starting {key!r}, found {len(blocks)}"
    code = blocks[0]
    kind, subs = PY_BLOCKS[key]
    assert kind == "run"
    for old, new in {**subs, **(extra or {})}.items():
        assert old in code, f"README block {key!r} no longer contains {old!r}; update PY_BLOCKS"
        code = code.replace(old, new)
    exec(compile(code, f"README.md:{key}", "exec"), namespace)
    return namespace


def test_mapped_python_blocks_name_existing_tests():
    checked = []
    for key, (kind, refs) in PY_BLOCKS.items():
        if kind == "mapped":
            for ref in refs:
                func = _test_function(ref)
                assert callable(func) and func.__name__ == ref.split("::")[1], ref
                checked.append(ref)
    assert all("::test_" in ref for ref in checked)


def test_python_example_trains_saves_and_reloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _run_block("import keras, zf_unet", {})
    assert (tmp_path / "m.keras").is_file()
    reloaded = ns["keras"].saving.load_model(tmp_path / "m.keras")
    assert reloaded.count_params() == ns["model"].count_params()
    assert len(ns["model"].history.history["loss"]) == 1


def test_train_from_python_block(monkeypatch, tmp_path):
    import zf_unet

    calls = []
    monkeypatch.setattr(zf_unet, "train", lambda cfg, out: calls.append((cfg, out)) or (None, out))
    monkeypatch.chdir(ROOT)
    ns = _run_block("history, run_dir = zf_unet.train(", {"zf_unet": zf_unet})
    assert calls and calls[0][0].model.depth == 5 and ns["run_dir"] == "runs/isbi"


def test_predict_tiled_block():
    import numpy as np

    import zf_unet

    model = zf_unet.build_unet((None, None, 1), depth=3, filters=4)
    image = np.random.default_rng(0).random((100, 150)).astype(np.float32)
    ns = _run_block("probs = zf_unet.predict_tiled(model, image,",
                    {"zf_unet": zf_unet, "model": model, "image": image})
    assert ns["probs"].shape == (100, 150, 1)
    assert 0.0 <= ns["probs"].min() and ns["probs"].max() <= 1.0


def test_pretrained_block_on_an_isbi_slice():
    if not (isbi2012_dir() / "images").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {isbi2012_dir()}")
    import numpy as np
    import PIL.Image

    import zf_unet

    ns = _run_block('model = zf_unet.pretrained("isbi2012-em")',
                    {"zf_unet": zf_unet, "np": np, "PIL": PIL},
                    extra={"../shared/data": str(data_root())})  # wherever $ZF_UNET_DATA is
    probs = ns["probs"]
    truth = np.asarray(PIL.Image.open(isbi2012_dir() / "masks" / "22.png")) > 127
    assert probs.shape == (512, 512)
    assert zf_unet.metrics.misclassification_rate(probs, truth, 0.5) < 0.15  # trivial: ~0.22


def test_unet_plus_plus_block():
    import zf_unet

    ns = _run_block("model = zf_unet.build_unet_plus_plus(", {"zf_unet": zf_unet})
    model, fast, avg = ns["model"], ns["fast"], ns["avg"]
    assert model.output_names == ["L1", "L2", "L3", "L4"]
    assert len(fast.outputs) == 1 and fast.count_params() < model.count_params()
    assert len(avg.outputs) == 1
    full_vars = {id(v) for v in model.weights}
    assert all(id(v) in full_vars for v in fast.weights)  # "shares the weights"
