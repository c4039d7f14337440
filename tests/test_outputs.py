"""The one output rule (``zf_unet.outputs``), checked on every ``zf-unet`` command that writes.

The parser is walked: every subcommand with an output option (``--out``, ``--json``,
``--confusion``) must have an entry in ``SCENARIOS``, so a new command cannot skip the rule.
Each scenario points the command's output at a user's file or folder (or at its own input),
with and without ``--overwrite``, and checks that the user's files are byte-identical
afterwards (or, where the user asked for a named file to be replaced, that only it changed).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from _folders import snapshot, write_folder
from zf_unet.cli import build_parser, main
from zf_unet.errors import DataError, OutputExistsError
from zf_unet.outputs import MARKER, check_not_input, claim_file, claim_files, claim_folder

WRITE_FLAGS = {"--out", "--json", "--confusion"}
TINY_TRAIN = ["--set", "model.depth=3", "--set", "model.filters=4", "--epochs", "1", "--quiet",
              "--set", "data.patch_size=32", "--set", "data.samples_per_epoch=2",
              "--set", "data.batch_size=2", "--set", "train.collapse_warning=false",
              "--set", "data.augment.enabled=false"]  # no XLA augmentation to compile


def user_folder(path: Path) -> Path:
    """A folder of the user's own files (what no command may delete)."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"the user's own file, not an output of zf-unet\n")
    return path


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    argv: list[str]
    guard: list[Path]               # byte-identical afterwards
    code: int | None = 2            # expected exit status (None: any)
    survive: list[Path] = field(default_factory=list)  # must still exist with same bytes


@dataclass
class Env:
    tmp: Path
    model: Path
    data: Path


def _demo(e: Env) -> list[Scenario]:
    folder = user_folder(e.tmp / "demo_user")
    existing = user_file(e.tmp / "demo_out" / "metrics.json")
    return [
        Scenario(["demo", "--quick", "--quiet", "--out", str(e.tmp / "afile")],
                 [user_file(e.tmp / "afile")]),
        Scenario(["demo", "--quick", "--quiet", "--out", str(existing.parent)], [existing]),
        Scenario(["demo", "--quick", "--quiet", "--out", str(folder / "notes.txt"),
                  "--overwrite"], [folder]),
    ]  # a run with --overwrite beside a user's file: test_demo_refuses_then_replaces_...


def _train(e: Env) -> list[Scenario]:
    folder = user_folder(e.tmp / "train_user")
    return [
        Scenario(["train", "--data", str(e.data), "--out", str(folder), "--fresh"] + TINY_TRAIN,
                 [folder]),
        Scenario(["train", "--data", str(e.data), "--out", str(e.data / "images" / "run")]
                 + TINY_TRAIN, [e.data]),
        Scenario(["train", "--data", str(e.data), "--out", str(e.tmp / "afile")] + TINY_TRAIN,
                 [user_file(e.tmp / "afile")]),
    ]


def _predict(e: Env) -> list[Scenario]:
    img = e.data / "images" / "000.png"
    out = e.tmp / "pred"
    out.mkdir()
    user_file(out / "000_mask.png")  # an earlier result: replaced only with --overwrite
    folder = user_folder(e.tmp / "pred_user")
    return [
        Scenario(["predict", str(img), "--model", str(e.model), "--out", str(out)], [out]),
        Scenario(["predict", str(e.data / "images"), "--model", str(e.model), "--out",
                  str(e.data / "images"), "--overwrite"], [e.data]),
        Scenario(["predict", str(img), "--model", str(e.model), "--out",
                  str(e.tmp / "afile")], [user_file(e.tmp / "afile")]),
        Scenario(["predict", str(img), "--model", str(e.model), "--out", str(folder),
                  "--overwrite"], [], code=0, survive=[folder]),
        Scenario(["predict", str(img), "--model", str(e.model), "--out", str(out), "--overwrite",
                  "--no-prob"], [], code=0, survive=[]),  # replaces the earlier 000_mask.png
    ]


def _evaluate(e: Env) -> list[Scenario]:
    report = user_file(e.tmp / "report.json")
    return [
        Scenario(["evaluate", "--model", str(e.model), "--data", str(e.data), "--json",
                  str(report)], [report]),
        Scenario(["evaluate", "--model", str(e.model), "--data", str(e.data), "--json",
                  str(e.model), "--overwrite"], [e.model]),
        Scenario(["evaluate", "--model", str(e.model), "--data", str(e.data), "--json",
                  str(e.data / "masks" / "r.json")], [e.data]),
    ]


def _export(e: Env) -> list[Scenario]:
    tfl = user_file(e.tmp / "model.tflite")
    onnx = user_file(e.tmp / "model.onnx")
    base = e.tmp / "serving"
    base.mkdir()
    not_ours = user_folder(base / "1")
    return [
        Scenario(["export", "--model", str(e.model), "--format", "tflite", "--out", str(tfl),
                  "--tile-size", "32"], [tfl]),
        Scenario(["export", "--model", str(e.model), "--format", "onnx", "--out", str(onnx)],
                 [onnx]),
        Scenario(["export", "--model", str(e.model), "--format", "tflite", "--out",
                  str(e.model), "--overwrite"], [e.model]),
        Scenario(["export", "--model", str(e.model), "--out", str(base), "--overwrite"],
                 [not_ours]),
        Scenario(["export", "--model", str(e.model), "--format", "tflite", "--tiled", "--out",
                  str(e.tmp / "x.tflite")], [e.model]),
    ]


def _check_data(e: Env) -> list[Scenario]:
    report = user_file(e.tmp / "check.json")
    return [
        Scenario(["check-data", str(e.data), "--json", str(report)], [report]),
        Scenario(["check-data", str(e.data), "--json", str(e.data / "images" / "000.png"),
                  "--overwrite"], [e.data]),
    ]


def _pack(e: Env) -> list[Scenario]:
    folder = user_folder(e.tmp / "pack_user")
    return [
        Scenario(["pack", str(e.data), "--out", str(e.data), "--overwrite"], [e.data]),
        Scenario(["pack", str(e.data), "--out", str(e.data.parent), "--overwrite"], [e.data]),
        Scenario(["pack", str(e.data), "--out", str(folder), "--overwrite"], [folder]),
        Scenario(["pack", str(e.data), "--out", str(folder)], [folder]),
    ]


def _show_augment(e: Env) -> list[Scenario]:
    grid = user_file(e.tmp / "grid.png")
    return [
        Scenario(["show-augment", str(e.data), "--out", str(grid), "--patch-size", "32",
                  "--n", "2"], [grid]),
        Scenario(["show-augment", str(e.data), "--out", str(e.data / "masks" / "000.png"),
                  "--patch-size", "32", "--n", "2", "--overwrite"], [e.data]),
    ]


SCENARIOS: dict[str, Callable[[Env], list[Scenario]]] = {
    "demo": _demo, "train": _train, "predict": _predict, "evaluate": _evaluate,
    "export": _export, "check-data": _check_data, "pack": _pack,
    "show-augment": _show_augment,
}


def writing_commands() -> dict[str, set[str]]:
    """Every subcommand of the parser with an output option, and those options."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings} & WRITE_FLAGS
        if flags:
            found[name] = {s for a in p._actions for s in a.option_strings}
    return found


def test_every_command_that_writes_has_scenarios_and_an_overwrite_flag():
    found = writing_commands()
    assert set(found) == set(SCENARIOS), "add the new command's scenarios to SCENARIOS"
    for name, flags in found.items():
        if name != "train":  # train resumes its run folder; --fresh starts it over
            assert "--overwrite" in flags, name


@pytest.mark.parametrize("command", sorted(SCENARIOS))
def test_users_files_survive(command, tmp_path, tiny_model_path, capsys):
    model = tmp_path / "model.keras"
    model.write_bytes(tiny_model_path.read_bytes())
    env = Env(tmp_path, model, write_folder(tmp_path / "data"))
    scenarios = SCENARIOS[command](env)
    for sc in scenarios:
        before = snapshot(sc.guard + [model, env.data])
        kept = snapshot(sc.survive)
        capsys.readouterr()
        code = main(sc.argv)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        if sc.code is not None:
            assert code == sc.code, (sc.argv, err)
        if code == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1, err
        assert snapshot(sc.guard + [model, env.data]) == before, sc.argv
        after = snapshot(sc.survive)
        assert {k: v for k, v in after.items() if k in kept} == kept, sc.argv
    if command == "predict":  # the earlier result went only with --overwrite
        assert (tmp_path / "pred" / "000_mask.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "pred_user" / MARKER).exists() is False


# --------------------------------------------------------------------------- the rule itself


def test_claim_files_refuses_inputs_folders_and_existing_files(tmp_path):
    data = user_folder(tmp_path / "data")
    with pytest.raises(DataError, match="is an input"):
        claim_file(data / "notes.txt", inputs=[data / "notes.txt"], overwrite=True)
    with pytest.raises(DataError, match="inside the input folder"):
        claim_file(data / "new.json", inputs=[data], overwrite=True)
    with pytest.raises(DataError, match="is a folder"):
        claim_file(data / "sub", overwrite=True)
    report = user_file(tmp_path / "r.json")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        claim_files([tmp_path / "new.csv", report])
    assert claim_files([tmp_path / "new.csv", report], overwrite=True)[1] == report
    assert report.read_bytes().startswith(b"the user's")  # claiming writes nothing


def test_claim_folder_never_replaces_a_users_folder(tmp_path):
    folder = user_folder(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        claim_folder(folder, replace=True)
    with pytest.raises(OutputExistsError, match="did not write.*notes.txt"):
        claim_folder(folder, replace=True, overwrite=True)
    owned = lambda name: name.endswith(".bin")  # noqa: E731 - what "test" writes
    made = tmp_path / "made"
    assert claim_folder(made, command="test") is False
    assert (made / MARKER).is_file()
    (made / "x.bin").write_bytes(b"1")
    assert claim_folder(made, replace=True, overwrite=True, command="test", owned=owned)
    # the marker is no licence: a file of the user's added later is never deleted ...
    (made / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        claim_folder(made, replace=True, overwrite=True, command="test", owned=owned)
    (made / "notes.txt").unlink()
    # ... nor is a folder another command made (predict's outputs are not pack's)
    with pytest.raises(OutputExistsError, match="x.bin"):
        claim_folder(made, replace=True, overwrite=True, command="other", owned=owned)
    # legacy: a folder holding only names the writer owns, without a marker
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "index.json").write_text("{}")
    assert claim_folder(legacy, replace=True, overwrite=True,
                        owned=lambda n: n == "index.json") is True
    with pytest.raises(DataError, match="holds the input"):
        claim_folder(tmp_path, inputs=[folder], replace=True, overwrite=True)
    check_not_input(tmp_path / "out", [folder], whole_folder=True)  # a sibling is fine
    # URLs are compared as text: gs://b/p holds gs://b/p/raw
    with pytest.raises(DataError, match="holds the input"):
        check_not_input("gs://b/p/", ["gs://b/p/raw"], whole_folder=True)
    with pytest.raises(DataError, match="inside the input folder"):
        check_not_input("gs://b/p/raw/out", ["gs://b/p/raw"])
    check_not_input("gs://b/p2", ["gs://b/p"], whole_folder=True)


def test_claim_file_removes_what_a_killed_write_left(tmp_path):
    (tmp_path / ".best.abcd1234.keras").write_bytes(b"half")
    (tmp_path / ".best.notmine.keras").write_bytes(b"user")
    claim_file(tmp_path / "best.keras")
    assert not (tmp_path / ".best.abcd1234.keras").exists()
    assert (tmp_path / ".best.notmine.keras").exists()


def test_demo_refuses_then_replaces_only_its_outputs(tmp_path):
    out = tmp_path / "demo"
    # The smallest demo: what is checked is which files it writes, not what it learns.
    tiny = ["demo", "--quick", "--quiet", "--epochs", "1", "--n-train", "2", "--n-val", "1",
            "--size", "16", "--batch-size", "2", "--precision", "float32", "--out", str(out)]
    assert main(tiny) == 0
    metrics = (out / "metrics.json").read_bytes()
    (out / "mine.txt").write_text("keep")
    assert main(tiny) == 2
    assert (out / "metrics.json").read_bytes() == metrics
    assert main(tiny + ["--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "keep"
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_fresh_keeps_the_users_files_in_the_run_folder(tmp_path):
    data = write_folder(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run)] + TINY_TRAIN
    assert main(argv) == 0
    (run / "my_notes.md").write_text("what I tried")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"png")
    first = (run / "final.keras").read_bytes()
    assert main(argv + ["--fresh", "--seed", "3", "--set", "train.seed=3"]) == 0
    assert (run / "my_notes.md").read_text() == "what I tried"
    assert (run / "plots" / "a.png").read_bytes() == b"png"
    assert (run / "final.keras").read_bytes() != first  # the run itself was replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_pack_killed_leaves_nothing_behind_after_the_next_run(tmp_path):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "shards"
    # A pack killed with SIGKILL while it writes: its hidden work folder stays behind ...
    script = textwrap.dedent(f"""
        import os, signal
        from zf_unet.data.shard_writer import write_shards
        from zf_unet.data.sources import open_source

        def samples():
            for i, sample in enumerate(open_source({str(data)!r})):
                if i == 2:  # two samples written, the third being read
                    os.kill(os.getpid(), signal.SIGKILL)
                yield sample

        write_shards(samples(), {str(out)!r}, shard_size=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".zf_unet_pack-")]
    assert left and not out.exists()
    # ... and the next pack removes it
    assert main(["pack", str(data), "--out", str(out)]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".zf_unet_pack-")]
    assert (out / MARKER).is_file()
    # a second pack over its own folder is allowed with --overwrite
    assert main(["pack", str(data), "--out", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("flag", [["--tiled"], ["--input-dtype", "uint16"], ["--version", "2"],
                                  ["--threshold", "0.3"]])
def test_tflite_and_onnx_refuse_saved_model_flags(flag, tmp_path, tiny_model_path, capsys):
    for fmt in ("tflite", "onnx"):
        out = tmp_path / f"m.{fmt}"
        capsys.readouterr()
        assert main(["export", "--model", str(tiny_model_path), "--format", fmt, "--out",
                     str(out)] + flag) == 2
        err = capsys.readouterr().err.strip()
        assert f"{flag[0]}: applies to --format saved_model only" in err, err
        assert not out.exists()


def test_pack_never_replaces_its_folder_once_it_holds_a_users_file(tmp_path):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "shards"
    assert main(["pack", str(data), "--out", str(out)]) == 0
    (out / "notes.txt").write_text("which slices these are")
    before = snapshot([out])
    assert main(["pack", str(data), "--out", str(out), "--overwrite"]) == 2
    assert snapshot([out]) == before
    # nor a folder that predict made
    pred = tmp_path / "pred"
    assert main(["predict", str(data / "images" / "000.png"), "--model",
                 str(_model(tmp_path)), "--out", str(pred)]) == 0
    before = snapshot([pred])
    assert main(["pack", str(data), "--out", str(pred), "--overwrite"]) == 2
    assert snapshot([pred]) == before


def _model(tmp_path: Path) -> Path:
    import zf_unet
    from zf_unet.io_utils import save_model_atomic

    return save_model_atomic(zf_unet.build_unet((None, None, 1), depth=3, filters=4),
                             tmp_path / "m.keras")


def test_confusion_prefix_with_a_suffix_is_claimed_as_written(tmp_path, capsys):
    import zf_unet
    from zf_unet.io_utils import save_model_atomic

    data = write_folder(tmp_path / "data", masks="ids")  # class ids 0..2
    model = save_model_atomic(zf_unet.build_unet((None, None, 1), depth=3, filters=4,
                                                 num_classes=3), tmp_path / "k3.keras")
    mine = user_file(tmp_path / "cm.csv")
    argv = ["evaluate", "--model", str(model), "--data", str(data), "--confusion",
            str(tmp_path / "cm.csv")]
    assert main(argv) == 2
    assert "cm.csv" in capsys.readouterr().err and mine.read_bytes().startswith(b"the user")
    assert main(argv + ["--overwrite"]) == 0
    assert mine.read_text().startswith("truth")  # replaced, as asked
    assert (tmp_path / "cm.png").is_file()


def test_a_home_path_given_with_equals_is_expanded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    data = write_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["check-data", str(data), "--json=~/report.json"]) == 0
    assert (tmp_path / "home" / "report.json").is_file()
    assert not (tmp_path / "~").exists()
    assert main(["check-data", str(data), "--json=~/report.json"]) == 2  # exists: refused


def test_stop_on_non_finite_checks_the_epoch_end_losses():
    from zf_unet.callbacks import StopOnNonFinite
    from zf_unet.errors import TrainingFailedError

    cb = StopOnNonFinite()
    cb.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.7, "val_iou": float("nan")})  # a metric
    with pytest.raises(TrainingFailedError, match="val_loss became nan at the end of epoch 3"):
        cb.on_epoch_end(2, {"loss": 0.5, "val_loss": float("nan")})


def test_recovering_a_killed_fresh_swap_keeps_the_users_files(tmp_path):
    from zf_unet.run_folder import recover_fresh_swap

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("# the new run\n")
    holder = tmp_path / ".run.old-0123abcd"  # killed after the swap, before the clean-up
    (holder / "run").mkdir(parents=True)
    (holder / "run" / "config.toml").write_text("# the old run\n")
    (holder / "run" / "notes.md").write_text("mine")
    (run / "notes.md").write_text("also mine, written meanwhile")
    recover_fresh_swap(run)
    assert not holder.exists()
    assert (run / "config.toml").read_text() == "# the new run\n"
    assert (run / "notes.md").read_text() == "also mine, written meanwhile"
    assert (run / "notes.md.kept-1").read_text() == "mine"
