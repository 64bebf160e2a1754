"""2-process FSDP2 training on CPU (torchrun + gloo) equals a 1-process run with the same global batch.

The synthetic source gives rank r's micro-batch a of step s the global pack index ``s·W·A + r·A + a``,
and every random draw of the loop is keyed by that index, so 2 ranks × 1 pack and 1 rank × 2
accumulated packs see identical data and noise; the loss normalisation (global token counts, ×W
for FSDP's gradient averaging) must make the updates identical too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from train.parallel import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "tests", "fixtures", "bagel-tiny", "checkpoint")


def common(out) -> list[str]:
    spec = json.dumps({"text_loss": True, "image_size": 32, "vit_size": 28, "text_len": 8})
    return [
        "--model_path",
        CKPT,
        "--device",
        "cpu",
        "--synthetic_data",
        "--synthetic_spec",
        spec,
        "--total_steps",
        "3",
        "--log_every",
        "1",
        "--save_every",
        "1000",
        "--warmup_steps",
        "1",
        "--lr",
        "3e-3",
        "--ema",
        "0.9",
        "--results_dir",
        str(out),
        "--checkpoint_dir",
        str(out / "ckpt"),
    ]


def run(cmd: list[str], timeout: int = 240, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, (
            f"{' '.join(cmd)}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "train/pretrain.py",
        *args,
    ]


def records(out) -> list[dict]:
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if "event" not in line]


@pytest.mark.slow
def test_two_process_fsdp_matches_single_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "train.pretrain", *common(one), "--gradient_accumulation_steps", "2"])
    run(
        torchrun(
            *common(two), "--sharding_strategy", "HYBRID_SHARD", "--num_replicate", "1", "--num_shard", "2"
        )
    )
    # The default: rank 1 built on the meta device and got its shard from rank 0.
    with open(two / "train.log") as f:
        assert "weights read by rank 0 and broadcast" in f.read()
    r1, r2 = records(one), records(two)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [0, 1, 2]
    for a, b in zip(r1, r2):
        assert (
            a["tokens"] == b["tokens"]
            and a["mse_tokens"] == b["mse_tokens"]
            and a["ce_tokens"] == b["ce_tokens"]
        )
        for k in ("mse", "ce", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k, a[k], b[k])
    assert r1[-1]["mse"] != r1[0]["mse"]  # it actually trained
    for name in ("model.safetensors", "ema.safetensors"):
        w1 = load_file(str(one / "ckpt" / "0000002" / name))
        w2 = load_file(str(two / "ckpt" / "0000002" / name))
        assert set(w1) == set(w2) and len(w1) == 559  # full, clean keys like the released checkpoint
        for k in w1:
            if k.startswith("vit_model.") and k.endswith("k_proj.bias"):
                # Softmax is invariant to a key bias without RoPE: its true gradient is 0, the computed one
                # is rounding noise that Adam (eps 1e-15) turns into full-size, order-dependent updates.
                continue
            torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5, msg=k)
    status = torch.load(two / "ckpt" / "0000002" / "data_status.pt", weights_only=True)
    assert [s["consumed"] for s in status] == [3, 3]  # one entry per rank
    assert os.path.isdir(two / "ckpt" / "0000002" / "optimizer")


@pytest.mark.slow
def test_corrupt_weights_on_rank0_stop_every_rank(tmp_path):
    """Rank 0 alone reads the weights: its checkpoint error must reach rank 1 (a named error, no hang)."""
    folder = tmp_path / "ckpt_in"
    shutil.copytree(CKPT, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated download
    args = common(tmp_path / "out")
    args[args.index("--model_path") + 1] = str(folder)
    p = run(torchrun(*args, "--sharding_strategy", "FULL_SHARD"), timeout=180, ok=False)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert out.count("rank 0 could not load the weights") >= 2, out[-3000:]  # raised on both ranks
    assert "model.safetensors" in out
