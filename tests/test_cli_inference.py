"""The command lines run end to end on the fixture model and fail cleanly on bad input."""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image

from tests.conftest import CHECKPOINT, ROOT


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_single_case_writes_png(tmp_path):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (20, 20), (0, 0, 255)).save(ref)
    out = tmp_path / "o.png"
    r = _run(
        [
            "inference.single_case",
            "--model_path",
            str(CHECKPOINT),
            "--instruction",
            "a blue square",
            "--input_image_paths",
            str(ref),
            "--height",
            "32",
            "--width",
            "32",
            "--num_timesteps",
            "2",
            "--output",
            str(out),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("o.png")
    assert Image.open(out).size == (32, 32)


def test_single_case_missing_image_is_clean_error(tmp_path):
    r = _run(
        [
            "inference.single_case",
            "--model_path",
            str(CHECKPOINT),
            "--instruction",
            "x",
            "--input_image_paths",
            "missing.png",
            "--height",
            "32",
            "--width",
            "32",
        ],
        tmp_path,
    )
    assert r.returncode == 2
    assert "missing.png" in r.stderr and "Traceback" not in r.stderr


def test_understand_cli(tmp_path):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (20, 20), (0, 255, 0)).save(ref)
    r = _run(
        [
            "inference.understand",
            "--model_path",
            str(CHECKPOINT),
            "--images",
            str(ref),
            "--question",
            "color?",
            "--max_new_tokens",
            "3",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr


def test_help():
    for mod in ("inference.single_case", "inference.understand"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "--model_path" in r.stdout
