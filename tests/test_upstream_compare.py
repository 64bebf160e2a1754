"""bench/upstream_compare.py's step profile (the comparison itself needs a clone of upstream and its Python)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.upstream_compare import StepProfile


def test_step_profile_splits_a_step_into_attention_matmuls_and_the_rest() -> None:
    profile = StepProfile()
    calls = []

    def forward(q, w):  # one "denoising forward": an attention call, a matrix product, elementwise work
        calls.append(1)
        a = F.scaled_dot_product_attention(q, q, q)
        return (a.flatten(0, 2) @ w).sin() * 2

    step = profile.wrap(forward)
    q, w = torch.randn(1, 2, 256, 32), torch.randn(32, 32)
    step(q, w)  # profiling off: nothing recorded
    assert profile.seconds == {"attention": 0.0, "matmul": 0.0, "other": 0.0}

    def run():  # one "image" of three steps
        for _ in range(3):
            step(q, w)

    per_step = profile.per_step(run, steps=3)
    assert len(calls) == 4 and not profile.on
    assert set(per_step) == {"attention", "matmul", "other"}
    assert all(v > 0 for v in per_step.values())
    assert abs(sum(per_step.values()) * 3 - sum(profile.seconds.values())) < 1e-9
    step(q, w)  # off again after the profiled run
    assert abs(sum(per_step.values()) * 3 - sum(profile.seconds.values())) < 1e-9


def test_a_missing_upstream_python_stops_before_any_work(tmp_path, monkeypatch) -> None:
    from bench import upstream_compare

    monkeypatch.setattr(upstream_compare, "write_model", lambda folder: pytest.fail("wrote a model"))
    with pytest.raises(SystemExit, match="--upstream_python ../nope/bin/python: no such executable"):
        upstream_compare.main(["--upstream_dir", str(tmp_path), "--upstream_python", "../nope/bin/python"])
