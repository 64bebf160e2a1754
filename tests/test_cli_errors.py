"""Bad input to the inference CLIs: one ERROR line, exit code 2, and no checkpoint file read first."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

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


def _inputs(tmp_path):
    good = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
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


def test_understand_bad_input_is_one_line(tmp_path, caplog, no_weights_read):
    with caplog.at_level(logging.INFO):
        assert understand.main(["--model_path", str(CHECKPOINT), "--question", "", "--images"]) == 2
    (err,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "--question must not be empty" in err.getMessage()


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
