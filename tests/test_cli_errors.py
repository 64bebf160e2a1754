"""Bad input to the command lines: one ERROR line, exit code 2 (the training run's documented code where it
is another), checked before the model loads where it can be, and nothing lost or left behind."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from inference import single_case, understand
from tests.conftest import CHECKPOINT, ROOT

GOOD = ["--height", "32", "--width", "32", "--num_timesteps", "2"]


@pytest.fixture()
def no_weights_read(monkeypatch):
    """Fail the test if a weights file is opened: every check must come first."""
    import modeling.checkpoint as ckpt

    def boom(*a, **k):
        raise AssertionError("a checkpoint file was read before the inputs were checked")

    monkeypatch.setattr(ckpt, "load_bagel_weights", boom)
    monkeypatch.setattr(ckpt, "load_autoencoder", boom)
    monkeypatch.setattr(ckpt, "load_tokenizer", boom)


def decompression_bomb(path) -> None:
    """A 69-byte PNG that declares 20000x20000 pixels (PIL refuses to decode more than 2 x 89 M)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))  # fmt: skip


def _inputs(tmp_path):
    good = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    decompression_bomb(tmp_path / "bomb.png")
    broken_config = tmp_path / "broken_config"
    shutil.copytree(CHECKPOINT, broken_config)
    text_ = (broken_config / "llm_config.json").read_text()
    (broken_config / "llm_config.json").write_text(text_.replace(",", "", 1))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    corrupt = tmp_path / "cut.png"
    corrupt.write_bytes(good.read_bytes()[:40])
    empty = tmp_path / "empty_model"
    empty.mkdir()
    no_weights = tmp_path / "no_weights"
    shutil.copytree(CHECKPOINT, no_weights)
    for name in ("model.safetensors", "ema.safetensors"):
        (no_weights / name).unlink(missing_ok=True)
    return good, text, corrupt, empty, no_weights


CASES = {
    "missing image": (lambda g, t, c, e, n: ["--input_image_paths", "nope.png"], "nope.png"),
    "text file as image": (lambda g, t, c, e, n: ["--input_image_paths", str(t)], "cannot read input image"),
    "corrupt image": (lambda g, t, c, e, n: ["--input_image_paths", str(c)], "cannot read input image"),
    "bad size": (lambda g, t, c, e, n: ["--height", "30"], "--height must be a positive multiple of 16"),
    "empty instruction": (lambda g, t, c, e, n: ["--instruction", " "], "--instruction must not be empty"),
    "no such folder": (lambda g, t, c, e, n: ["--model_path", "./no/such/folder"], "not found"),
    "a file as folder": (lambda g, t, c, e, n: ["--model_path", str(g)], "is a file"),
    "empty folder": (
        lambda g, t, c, e, n: ["--model_path", str(e)],
        "missing: llm_config.json, vit_config.json, ae.safetensors, model.safetensors or ema.safetensors, "
        "vocab.json, merges.txt, tokenizer_config.json",
    ),
    "no weights": (lambda g, t, c, e, n: ["--model_path", str(n)], "model.safetensors or ema.safetensors"),
    "decompression bomb": (
        lambda g, t, c, e, n: ["--input_image_paths", str(g.parent / "bomb.png")],
        "could be decompression bomb",
    ),
    "size beyond the model": (
        lambda g, t, c, e, n: ["--height", "100000"],
        "--height/--width 100000 exceeds this model's largest side",
    ),
    "broken llm_config.json": (
        lambda g, t, c, e, n: ["--model_path", str(g.parent / "broken_config")],
        "llm_config.json is not valid JSON",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_case_bad_input_is_one_line(case, tmp_path, caplog, no_weights_read):
    extra, expected = CASES[case]
    args = ["--model_path", str(CHECKPOINT), "--instruction", "draw", "--output", str(tmp_path / "o.png")]
    args += [*GOOD, *extra(*_inputs(tmp_path))]
    with caplog.at_level(logging.INFO):
        assert single_case.main(args) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and expected in errors[0].getMessage(), [r.getMessage() for r in errors]
    assert "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [(["--question", ""], "--question must not be empty"), (["--question", "what?", "--images", "BOMB"], "decompression bomb")],
)  # fmt: skip
def test_understand_bad_input_is_one_line(extra, expected, tmp_path, caplog, no_weights_read):
    decompression_bomb(tmp_path / "bomb.png")
    extra = [str(tmp_path / "bomb.png") if a == "BOMB" else a for a in extra]
    with caplog.at_level(logging.INFO):
        assert understand.main(["--model_path", str(CHECKPOINT), *extra]) == 2
    (err,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert expected in err.getMessage() and "\n" not in err.getMessage()


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan_model"
    shutil.copytree(CHECKPOINT, folder)
    weights = next(p for p in (folder / "model.safetensors", folder / "ema.safetensors") if p.exists())
    state = load_file(weights)
    name = sorted(k for k in state if state[k].is_floating_point())[3]
    state[name].view(-1)[0] = float("nan")
    save_file(state, weights)
    args = ["--model_path", str(folder), "--instruction", "draw", "--output", str(tmp_path / "o.png"), *GOOD]
    with caplog.at_level(logging.INFO):
        assert single_case.main(args) == 2
    (err,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"tensor {name} holds 1 NaN/inf value" in err.getMessage(), err.getMessage()
    assert not (tmp_path / "o.png").exists()


def test_debug_shows_the_traceback(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        code = single_case.main(["--model_path", str(tmp_path), "--instruction", "x", "--debug", *GOOD])
    assert code == 2
    (err,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert err.exc_info is not None


def test_offline_hub_id_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "inference.single_case", "--model_path", "some-org/some-model", "--instruction",
         "x", *GOOD],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if "ERROR" in x]
    assert len(lines) == 1 and "could not fetch 'some-org/some-model'" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- training: the data mix
def _converted(tmp_path, *extra):
    """The shipped example pairs through scripts/make_s2i_parquet.py (the tiny model's sizes by default)."""
    from tests.test_s2i_converter import conv

    out = tmp_path / "mine"
    example = ROOT / "assets" / "finetune_example"
    args = ["--images", str(example), "--jsonl", str(example / "pairs.jsonl"), "--out", str(out), *extra]
    assert conv.main(args) == 0
    return out


def _train_main(tmp_path, data, monkeypatch, *extra):
    """train.pretrain.main on the shipped tiny model; the model must not load before the data is checked."""
    import train.pretrain as pretrain

    def boom(*a, **k):
        raise AssertionError("the model loaded before the data mix was checked")

    monkeypatch.setattr(pretrain, "load_model_for_rank", boom)
    return pretrain.main(
        ["--model_path", str(ROOT / "ckpts" / "scone-tiny"), "--dataset_config_file", str(data / "my_s2i.yaml"),
         "--data_root", str(data), "--lora_rank", "2", "--total_steps", "2", "--device", "cpu",
         "--results_dir", str(tmp_path / "res"), "--checkpoint_dir", str(tmp_path / "ck"), *extra]
    )  # fmt: skip


def train_errors(results_dir) -> list[str]:
    """The ERROR lines of a training run's log (train.pretrain installs its own log handlers)."""
    lines = (results_dir / "train.log").read_text().splitlines()
    return [line.split(" ERROR ", 1)[1] for line in lines if " ERROR " in line]


def _drop_instruction(data):
    import pyarrow.parquet as pq

    for f in (data / "parquet_data" / "my_s2i").glob("*.parquet"):
        pq.write_table(pq.read_table(f).drop(["instruction"]), f, row_group_size=1)


def _remove_second_file(data):
    files = sorted((data / "parquet_data" / "my_s2i").glob("*.parquet"))
    files[1].unlink()


TRAIN_CASES = {
    "7B image sizes on the tiny model": (
        ["--model_path", "SKIP"],  # the converter without --model_path: Scone's 1024 px
        None,
        ["--num_workers", "1"],
        "image_transform_args.max_image_size 1024 exceeds the model's largest VAE image side, 256 px",
    ),
    "more workers than row groups": ([], None, ["--num_workers", "16"], "Use --num_workers 8"),
    "parquet without an instruction column": ([], _drop_instruction, ["--num_workers", "1"], "has no column 'instruction'"),
    "parquet_info entry of a deleted file": (
        ["--rows_per_file", "4"],
        _remove_second_file,
        ["--num_workers", "1"],
        "part-00001.parquet",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_data_mix_errors_are_one_line_before_loading(case, tmp_path, monkeypatch):
    conv_args, damage, train_args, expected = TRAIN_CASES[case]
    model = (
        []
        if conv_args[:2] == ["--model_path", "SKIP"]
        else ["--model_path", str(ROOT / "ckpts" / "scone-tiny")]
    )
    data = _converted(tmp_path, *model, *[a for a in conv_args if a not in ("--model_path", "SKIP")])
    if damage:
        damage(data)
    assert _train_main(tmp_path, data, monkeypatch, *train_args) == 2
    errors = train_errors(tmp_path / "res")
    assert len(errors) == 1 and expected in errors[0], errors


def test_parquet_info_is_found_from_another_folder(tmp_path, monkeypatch):
    """The converter's parquet_info keys are absolute: a relative --out works from any working folder."""
    import json

    monkeypatch.chdir(tmp_path)
    from tests.test_s2i_converter import conv

    example = ROOT / "assets" / "finetune_example"
    assert conv.main(["--images", str(example), "--jsonl", str(example / "pairs.jsonl"), "--out", "rel"]) == 0
    keys = list(json.loads((tmp_path / "rel" / "parquet_info" / "my_s2i.json").read_text()))
    assert keys and all(os.path.isabs(k) and os.path.isfile(k) for k in keys)
    from data.parquet_io import row_groups_of_files

    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    units, missing = row_groups_of_files(
        ["../rel/parquet_data/my_s2i/part-00000.parquet"], {keys[0]: {"num_row_groups": 8}}
    )
    assert len(units) == 8 and not missing


# ----------------------------------------------------------------------------- training: a full disk
def test_full_disk_during_a_save_names_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    import train.checkpointing as ckpt
    import train.pretrain as pretrain

    real, calls = ckpt.save_safetensors, []

    def full_disk(state, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:  # the first save works, the second finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(state, path, metadata)

    monkeypatch.setattr(ckpt, "save_safetensors", full_disk)
    out = tmp_path / "run"
    argv = ["--model_path", str(CHECKPOINT), "--synthetic_data", "--device", "cpu", "--total_steps", "4",
            "--save_every", "1", "--warmup_steps", "0", "--results_dir", str(out), "--checkpoint_dir", str(out / "ck")]  # fmt: skip
    assert pretrain.main(argv) == 4
    (err,) = train_errors(out)
    assert "step 2: writing the checkpoint" in err and "No space left on device" in err, err
    assert f"Last good checkpoint: {out / 'ck' / '0000001'}" in err
    assert sorted(p.name for p in (out / "ck").iterdir()) == ["0000001"]  # no partial folder left


# ----------------------------------------------------------------------------- files written
def test_weights_and_images_get_the_default_file_mode(tmp_path):
    import torch

    from inference.benchmark import atomic_save_png
    from modeling.files import save_safetensors

    old = os.umask(0o022)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        atomic_save_png(Image.new("RGB", (4, 4)), tmp_path / "round0" / "x.png")
    finally:
        os.umask(old)
    for f in (tmp_path / "w.safetensors", tmp_path / "round0" / "x.png"):
        assert oct(f.stat().st_mode & 0o777) == oct(0o644), f


def test_a_rerun_removes_the_temp_files_of_an_interrupted_write(tmp_path):
    import time

    from inference.benchmark import remove_stale_temp_images

    left = tmp_path / "round0" / "task" / ".k1.abc123.png.tmp"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half a png")
    old = time.time() - 60
    os.utime(left, (old, old))
    fresh = tmp_path / "round0" / "task" / ".k2.def456.png.tmp"  # another rank writing right now
    fresh.write_bytes(b"in progress")
    keep = tmp_path / "round0" / "task" / "k0.png"
    keep.write_bytes(b"png")
    assert remove_stale_temp_images(tmp_path, before=time.time() - 30) == [left]
    assert not left.exists() and fresh.exists() and keep.exists()
