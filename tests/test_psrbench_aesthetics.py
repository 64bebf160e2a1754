"""HPSv3 aesthetics wrapper: batching, per-item failure isolation, skip reasons (fake inferencer)."""

import importlib.util

import pytest
import torch

from eval.psrbench.aesthetics import hpsv3_scores, hpsv3_unavailable_reason


class FakeHPSv3:
    """reward() -> one [mu, sigma] tensor per image; mu = len(prompt); fails on paths containing 'bad'."""

    def __init__(self):
        self.batches = []

    def reward(self, prompts, image_paths):
        self.batches.append(list(image_paths))
        if any("bad" in p for p in image_paths):
            raise OSError("cannot identify image file")
        return [torch.tensor([float(len(p)), 0.5]) for p in prompts]


def test_batched_scores_and_isolated_failure():
    fake = FakeHPSv3()
    paths = ["a.png", "b.png", "bad.png", "d.png", "e.png"]
    prompts = ["x", "xx", "xxx", "xxxx", "xxxxx"]
    out = hpsv3_scores(paths, prompts, batch_size=2, inferencer=fake, progress=False)
    assert out.skipped is None
    assert out.scores == [1.0, 2.0, None, 4.0, 5.0]
    assert out.errors[2].startswith("OSError") and out.errors.count(None) == 4
    # 3 batches; the failing one is re-run image by image
    assert fake.batches == [["a.png", "b.png"], ["bad.png", "d.png"], ["bad.png"], ["d.png"], ["e.png"]]


def test_skip_reasons():
    if importlib.util.find_spec("hpsv3") is None:
        assert "not installed" in hpsv3_unavailable_reason("cuda")
        out = hpsv3_scores(["a.png"], ["p"], device="cuda", progress=False)
        assert out.skipped and "hpsv3" in out.skipped and out.scores == []
    else:
        assert "CUDA" in hpsv3_unavailable_reason("cpu")
    with pytest.raises(ValueError):
        hpsv3_scores(["a.png"], [], inferencer=FakeHPSv3())
