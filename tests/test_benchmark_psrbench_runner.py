"""`inference.benchmark --benchmark psrbench`: PSRBench subset JSONs in, images + results JSON out."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from inference import benchmark
from tests.conftest import CHECKPOINT
from tests.synthetic_psrbench import make_synthetic_psrbench


@pytest.fixture(scope="module")
def tiny_pipe():
    from inference.pipeline import SconePipeline

    return SconePipeline.from_pretrained(
        str(CHECKPOINT),
        device="cpu",
        dtype=torch.float32,
        vae_transform=(64, 32, 16),
        vit_transform=(56, 28, 14),
    )


def test_psrbench_runner_writes_images_and_results(tmp_path, tiny_pipe, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    root = make_synthetic_psrbench(tmp_path / "PSRBench", subsets=("Attribute", "Three"), n_per_subset=1)
    out = tmp_path / "out"
    argv = [
        "--benchmark",
        "psrbench",
        "--model_path",
        "unused",
        "--data_root",
        str(root),
        "--output_dir",
        str(out),
        "--height",
        "32",
        "--width",
        "32",
        "--num_timesteps",
        "2",
        "--no_progress",
        "--task_types",
        "Attribute",
        "Three",
    ]
    assert benchmark.main(argv, pipe=tiny_pipe) == 0
    for subset in ("Attribute", "Three"):
        pngs = list((out / "round0" / subset).glob("*.png"))
        assert len(pngs) == 1 and Image.open(pngs[0]).size == (32, 32)
        entries = json.loads((out / "round0" / f"{subset}.json").read_text())
        assert len(entries) == 1 and entries[0]["result_path"].endswith(".png")
    # resume: a second run regenerates nothing and gives the same files
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    assert benchmark.main(argv, pipe=tiny_pipe) == 0
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
