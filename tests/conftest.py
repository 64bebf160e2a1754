"""Shared fixtures: the vendored golden fixture (recorded from upstream on a tiny random model)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
CHECKPOINT = FIXTURE / "checkpoint"

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def checkpoint_dir() -> Path:
    return CHECKPOINT


@pytest.fixture(scope="session")
def cases() -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "cases.safetensors"))


@pytest.fixture(scope="session")
def cases_json() -> dict:
    with open(FIXTURE / "cases.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def pipe():
    """The tiny fixture model loaded once per test session (fp32, CPU). Tests must not mutate it."""
    from inference.pipeline import SconePipeline

    return SconePipeline.from_pretrained(str(CHECKPOINT), device="cpu", dtype=torch.float32)
