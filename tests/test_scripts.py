"""The bash entry points a newcomer runs first: with their defaults they work, with a missing input they
stop with one line and a non-zero exit, and leave nothing half-written behind."""

from __future__ import annotations

import os
import subprocess

from PIL import Image

from tests.conftest import ROOT


def _bash(script: str, *args: str, cwd, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run(
        ["bash", str(ROOT / script), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=300
    )


def test_single_case_script_runs_with_its_defaults(tmp_path):
    r = _bash("scripts/inference_single_case.sh", "--output", "out.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(tmp_path / "out.png").size == (96, 96)  # the shipped tiny model's default size


def test_single_case_script_missing_image_is_one_line(tmp_path):
    r = _bash(
        "scripts/inference_single_case.sh", "--output", "out.png", cwd=tmp_path, INPUT_IMAGES="gone.png"
    )
    assert r.returncode == 2
    errors = [x for x in r.stderr.splitlines() if "ERROR" in x]
    assert len(errors) == 1 and "gone.png" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out.png").exists()


def test_tiny_eval_before_make_data_stops_cleanly(tmp_path):
    work = tmp_path / "work"
    r = _bash("scripts/tiny/eval.sh", str(ROOT / "ckpts" / "scone-tiny"), str(tmp_path / "out"), cwd=ROOT,
              WORK=str(work))  # fmt: skip
    assert r.returncode == 2
    assert "run scripts/tiny/make_data.sh first" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not work.exists() and not (tmp_path / "out").exists()  # nothing created, no broken links
    usage = _bash("scripts/tiny/eval.sh", cwd=ROOT, WORK=str(work))
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_understanding_stage_without_a_stage2_model_stops_cleanly(tmp_path):
    """understand.sh starts from this WORK's final Stage II model (the shipped model already went through the
    stage): without one it names the folder and what to do, and trains nothing."""
    work = tmp_path / "work"
    r = _bash("scripts/tiny/understand.sh", cwd=ROOT, WORK=str(work), PYTHON="python")
    assert r.returncode == 2
    assert f"no model folder at {work}/stage2_step2_mask/0000699" in r.stderr and "FROM=" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not work.exists()


def test_every_benchmark_runs_as_python_m_eval_name():
    import sys

    names = ("generate", "omnicontext", "sconeeval", "psrbench", "shapeworld")
    for name in (*names, "shapeworld_vqa", "shapeworld_plans", "bridge_probe"):
        r = subprocess.run([sys.executable, "-m", f"eval.{name}", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0 and "usage:" in r.stdout, (name, r.stderr[-1000:])
        if name in ("generate", "omnicontext", "sconeeval"):  # examples keep their line continuations
            assert " \\\n" in r.stdout, (name, r.stdout[:800])
