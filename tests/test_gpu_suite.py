"""``bench/gpu_suite.py --smoke``: the GPU suite's whole path (every float mode, int8, group offload, the
training row) on a tiny geometry on the CPU, printing one table."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def _suite(*args: str, timeout: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_suite", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_gpu_suite_smoke_prints_one_row_per_mode_and_a_training_row():
    proc = _suite("--smoke", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| mode")
    }
    assert list(rows) == ["eager", "cache", "offload", "int8", "int8+cache"]
    evaluations = {mode: float(cells[2]) for mode, cells in rows.items()}
    # 8 timesteps = 7 Euler steps of 3 CFG branches; the cache computes steps 0-3 and 6 (warm-up 3, every 4th)
    assert evaluations["eager"] == evaluations["offload"] == evaluations["int8"] == 21
    assert evaluations["cache"] == evaluations["int8+cache"] == 15
    assert all(float(cells[0]) > 0 and float(cells[1]) > 0 for cells in rows.values())
    assert "training step (tiny" in proc.stdout and "tokens/s" in proc.stdout
    assert proc.stdout.splitlines()[0].startswith("CPU, torch ")


def test_gpu_suite_without_a_gpu_says_so():
    proc = _suite("--no_train", timeout=120, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode != 0 and "--smoke" in proc.stderr
