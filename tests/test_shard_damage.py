"""Damaged shard folders give one DataError naming the shard file or the index (never a
TensorFlow traceback), with the default data.cache and with "none"; data.skip_bad_files
leaves a damaged shard out with one warning; shards train with every default (cache "auto",
val_fraction 0.2 of a single shard file). Also the validation checks of split_checks and the
3-D patch depth rule."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from zf_unet.cli import main
from zf_unet.data import make_datasets, make_synthetic, make_volume_datasets
from zf_unet.data.shard_checks import hold_out_shards
from zf_unet.data.shard_format import INDEX_NAME
from zf_unet.data.shard_source import ShardSource
from zf_unet.data.shard_writer import write_shards
from zf_unet.errors import DataError

TINY = ["--set", "model.depth=2", "--set", "model.filters=4", "--epochs", "1", "--set",
        "data.patch_size=16", "--set", "data.batch_size=2", "--quiet", "--fresh",
        "--set", "data.augment.enabled=false"]  # no XLA augmentation to compile


def _samples(n: int = 6, size: int = 16) -> list[SimpleNamespace]:
    images, masks = make_synthetic(n, size, 0, 1)
    return [SimpleNamespace(name=f"s{i}", image=np.round(im * 255).astype(np.uint8),
                            mask=m[..., 0].astype(np.uint8)) for i, (im, m) in
            enumerate(zip(images, masks))]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """Six 16x16 samples, one per shard file."""
    out = tmp_path_factory.mktemp("packed") / "s"
    write_shards(_samples(), out, shard_size=1)
    return out


def _copy(packed: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(packed, tmp / "s"))


def _index_edit(**fields) -> Callable[[Path], str]:
    def edit(folder: Path) -> str:
        index = folder / INDEX_NAME
        data = json.loads(index.read_text())
        data.update({k: v(data) if callable(v) else v for k, v in fields.items()})
        index.write_text(json.dumps(data))
        return INDEX_NAME
    return edit


def _shard(folder: Path) -> Path:
    return sorted(folder.glob("*.tfrecord"))[1]


def _truncate(folder: Path) -> str:
    victim = _shard(folder)
    victim.write_bytes(victim.read_bytes()[:-40])
    return victim.name


def _delete(folder: Path) -> str:
    victim = _shard(folder)
    victim.unlink()
    return victim.name


def _empty(folder: Path) -> str:
    victim = _shard(folder)
    victim.write_bytes(b"")
    return victim.name


def _flip_byte(folder: Path) -> str:
    victim = _shard(folder)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the data CRC no longer matches
    victim.write_bytes(bytes(data))
    return victim.name


def _bad_json(folder: Path) -> str:
    (folder / INDEX_NAME).write_text('{"format_version": 1, "shards": [')
    return INDEX_NAME


# (damage, what the message must say, the named file is a shard that skip_bad_files may skip)
DAMAGE = {
    "truncated": (_truncate, "damaged shard file", True),
    "deleted": (_delete, "shard file not found", True),
    "empty": (_empty, "shard file is empty", True),
    "bad_crc": (_flip_byte, "damaged shard file", True),
    "bad_json": (_bad_json, "not valid JSON", False),
    "lying_channels": (_index_edit(channels=3, channel_sum=[0.1] * 3, channel_sum_sq=[0.1] * 3),
                       "1 channel.*says channels = 3", False),
    "channels_not_in_stats": (_index_edit(channels=3), "channel_sum", False),
    "lying_has_weights": (_index_edit(has_weights=True, w0=10.0, sigma=5.0),
                          "holds no border weight map.*has_weights = true", False),
    "lying_counts": (_index_edit(shard_counts=lambda d: [2, 0] + d["shard_counts"][2:]),
                     "at least one sample per shard", False),
    "lying_num_samples": (_index_edit(num_samples=7), "do not add up", False),
    "lying_size": (_index_edit(sizes=lambda d: [[8, 32]] + d["sizes"][1:]),
                   "16x16 .*says 8x32", False),
}


@pytest.mark.parametrize("cache", ["auto", "none"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shards_raise_a_data_error_naming_the_file(packed, tmp_path, damage, cache):
    folder = _copy(packed, tmp_path)
    damage_fn, expect, _ = DAMAGE[damage]
    named = damage_fn(folder)
    with pytest.raises(DataError, match=expect) as info:
        make_datasets(folder, patch_size=16, batch_size=2, cache=cache)
    assert named in str(info.value) and "\n" not in str(info.value)
    assert "function_node" not in str(info.value)  # no TensorFlow op names


@pytest.mark.parametrize("damage", ["truncated", "lying_has_weights"])
def test_the_cli_says_it_in_one_line(packed, tmp_path, capsys, damage):
    folder = _copy(packed, tmp_path)
    named = DAMAGE[damage][0](folder)
    capsys.readouterr()
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run")] + TINY) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("zf-unet train: error: ")
    assert named in lines[0] and "Traceback" not in captured.err + captured.out


def test_the_in_memory_path_checks_the_records_too(packed, tmp_path):
    folder = _copy(packed, tmp_path)
    _index_edit(channels=3, channel_sum=[0.1] * 3, channel_sum_sq=[0.1] * 3)(folder)
    with pytest.raises(DataError, match="says channels = 3"):
        make_datasets(folder, patch_size=16, cache="memory")
    with pytest.raises(DataError, match="says channels = 3"):
        ShardSource(folder).read(4)


@pytest.mark.parametrize("damage", [d for d, (_, _, shard) in DAMAGE.items() if shard])
def test_skip_bad_files_leaves_a_damaged_shard_out(packed, tmp_path, caplog, damage):
    folder = _copy(packed, tmp_path)
    named = DAMAGE[damage][0](folder)
    with caplog.at_level(logging.WARNING, logger="zf_unet"):
        train, val = ds = make_datasets(folder, patch_size=16, batch_size=2,
                                        skip_bad_files=True, val_fraction=0.2)
        info = ds.info
    warnings = [r.getMessage() for r in caplog.records if named in r.getMessage()]
    assert len(warnings) == 1 and "skip_bad_files" in warnings[0]
    assert info.read_log.skipped == [str(folder / named)]
    assert info.num_train + info.num_val == 5  # one sample per file, one file left out
    assert len(list(train)) > 0 and len(list(val)) == info.num_val


def test_pack_then_train_with_every_default(tmp_path, capsys):
    """The README's two commands: pack a small folder (one shard file) and train on it
    with data.cache = "auto" and data.val_fraction = 0.2."""
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for s in _samples(5):
        Image.fromarray(s.image[..., 0]).save(data / "images" / f"{s.name}.png")
        Image.fromarray(s.mask * 255).save(data / "masks" / f"{s.name}.png")
    assert main(["pack", str(data), "--out", str(tmp_path / "sh")]) == 0
    assert len(ShardSource(tmp_path / "sh").files) == 1
    default_augment = TINY[:-2]  # the default augmentation too: "every default"
    assert main(["train", "--data", str(tmp_path / "sh"), "--out", str(tmp_path / "run")]
                + default_augment) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["streaming"] is True and "val_dice" in summary["final"]


def test_hold_out_takes_the_last_records_even_inside_one_file(tmp_path):
    write_shards(_samples(5), tmp_path / "one")
    src = ShardSource(tmp_path / "one")
    (file,) = src.files
    assert hold_out_shards(src, 0.2, None) == ([(file, 0, 4)], [(file, 4, 5)])
    assert hold_out_shards(src, 0.0, None) == ([(file, 0, 5)], [])
    _, val = ds = make_datasets(tmp_path / "one", patch_size=16, val_fraction=0.4)
    info = ds.info
    assert (info.num_train, info.num_val) == (3, 2)
    names = [s.name for s in _samples(5)]
    assert [ShardSource(tmp_path / "one").read(i).name for i in (3, 4)] == names[3:]
    write_shards(_samples(6), tmp_path / "many", shard_size=1)
    many = ShardSource(tmp_path / "many")
    train, held = hold_out_shards(many, 0.34, None)  # 2 of 6: two whole files
    assert held == [(f, 0, 1) for f in many.files[4:]] and len(train) == 4
    write_shards(_samples(2), tmp_path / "two")
    with pytest.raises(DataError, match="leaves none to train on"):
        hold_out_shards(ShardSource(tmp_path / "two"), 0.9, None)


# --------------------------------------------------------------------------- validation


def _folder(root: Path, masks: list[np.ndarray]) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        Image.fromarray(rng.integers(0, 256, mask.shape, dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{i}.png")
    return root


def _stripes(ids: list[int], size: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for j, c in enumerate(ids):
        mask[:, j * size // len(ids):(j + 1) * size // len(ids)] = c
    return mask


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_val_source_with_another_mask_convention_is_refused(tmp_path, cache):
    train = _folder(tmp_path / "train", [_stripes([0, 1, 2, 3, 4])] * 3)
    binary = _folder(tmp_path / "val", [_stripes([0, 255])] * 2)
    with pytest.raises(DataError, match=r"data\.val_source: masks are \{0, 255\} binary masks "
                       r"\(2 of 2.*training masks are class ids \[0, 1, 2, 3, 4\]"):
        make_datasets(train, val_source=binary, num_classes="auto", patch_size=16, cache=cache)
    # the other way round: binary training masks, class-id validation masks
    with pytest.raises(DataError, match=r"data\.val_source: masks are class ids"):
        make_datasets(binary, val_source=train, num_classes="auto", patch_size=16, cache=cache)
    # the same convention on both sides is fine
    same = _folder(tmp_path / "val2", [_stripes([0, 2, 4])] * 2)
    info = make_datasets(train, val_source=same, num_classes="auto", patch_size=16,
                         cache=cache).info
    assert info.num_classes == 5


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_class_only_in_the_validation_data(tmp_path, cache, caplog):
    train = _folder(tmp_path / "train", [_stripes([0, 1, 2])] * 3)
    wider = _folder(tmp_path / "val", [_stripes([0, 1, 3])] * 2)
    with pytest.raises(DataError, match=r"data\.val_source: class id\(s\) \[3\] appear only in "
                       r"the validation masks.*data\.num_classes"):
        make_datasets(train, val_source=wider, num_classes="auto", patch_size=16, cache=cache)
    # an explicit K keeps the class, with one warning naming it
    with caplog.at_level(logging.WARNING, logger="zf_unet"):
        info = make_datasets(train, val_source=wider, num_classes=4, patch_size=16,
                             cache=cache).info
    assert info.num_classes == 4
    lines = [r.getMessage() for r in caplog.records if "appear only" in r.getMessage()]
    assert len(lines) == 1 and "data.val_source" in lines[0] and "[3]" in lines[0]


def test_a_3d_patch_deeper_than_every_volume_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    lab = np.zeros((4, 32, 32), np.uint8)
    lab[:, 8:20, 8:20] = 1
    with pytest.raises(DataError, match=r"data\.patch_size = \[8, 16, 16\]: depth 8 .*has 4 "
                       r"z-sections\); expected a patch depth <= 4"):
        make_volume_datasets((vol, lab), patch_size=[8, 16, 16], val_fraction=0)
    train, _ = make_volume_datasets((vol, lab), patch_size=[4, 16, 16], val_fraction=0)
    assert next(iter(train))[0].shape[1:4] == (4, 16, 16)
