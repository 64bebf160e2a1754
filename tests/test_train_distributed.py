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
    # mixed packs: in one step, one rank's pack is text only while the other's has no ViT view, and so on
    spec = json.dumps({"text_loss": True, "image_size": 32, "vit_size": 28, "text_len": 8, "mixed": True})
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
    """Ranks whose packs differ (text only / no ViT / CE / no CE) make the same collectives, and the result
    equals one process over the same global batch."""
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
    assert r2[0]["mse_tokens"] > 0 and r2[2]["ce_tokens"] > 0  # the modalities differ between the ranks
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


def parquet_command(out, data_root: str, port: int) -> list[str]:
    """The documented tiny mix as shipped (default condition dropouts), 2 ranks, EMA on, auto-resume."""
    cmd = torchrun(
        "--model_path", CKPT, "--device", "cpu", "--dataset_config_file",
        os.path.join(ROOT, "data", "configs", "scone_tiny.yaml"), "--data_root", data_root,
        "--expected_num_tokens", "300", "--max_num_tokens", "420", "--max_num_tokens_per_sample", "420",
        "--num_workers", "1", "--total_steps", "9", "--save_every", "3", "--log_every", "1", "--lr", "1e-3",
        "--warmup_steps", "1", "--ema", "0.9", "--auto_resume", "True", "--results_dir", str(out),
        "--checkpoint_dir", str(out / "ckpt"),
    )  # fmt: skip
    cmd[cmd.index("--master_port") + 1] = str(port)
    return cmd


def last_records(out) -> dict[int, dict]:
    return {r["step"]: r for r in records(out)}  # a step logged again after a resume: the later line


@pytest.mark.slow
def test_two_rank_real_mix_survives_sigkill_and_resumes_exactly(tmp_path):
    import random
    import signal
    import time

    from data.tiny_data import make_tiny_dataset

    data_root = str(tmp_path / "data")
    make_tiny_dataset(data_root, seed=0)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(parquet_command(straight, data_root, free_port()), timeout=400)

    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = parquet_command(killed, data_root, free_port())
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    first = killed / "ckpt" / "0000003" / "train_state.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert first.exists(), "the run never wrote its first checkpoint"
    time.sleep(random.Random().uniform(0.0, 1.5))  # a random moment after the first checkpoint
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    cmd[cmd.index("--master_port") + 1] = str(free_port())
    run(cmd, timeout=400)  # the same command again

    a, b = last_records(straight), last_records(killed)
    assert sorted(a) == sorted(b) == list(range(9))
    for step in range(9):
        for k in ("mse", "ce", "tokens", "mse_tokens", "ce_tokens"):
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-5, abs=1e-7), (
                step,
                k,
                a[step][k],
                b[step][k],
            )
    with open(killed / "train.log") as f:
        assert "resumed train state at step" in f.read()
    for name in ("model.safetensors", "ema.safetensors"):
        wa = load_file(str(straight / "ckpt" / "0000008" / name))
        wb = load_file(str(killed / "ckpt" / "0000008" / name))
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-6, msg=k)
    da = torch.load(straight / "ckpt" / "0000008" / "data_status.pt", weights_only=True)
    db = torch.load(killed / "ckpt" / "0000008" / "data_status.pt", weights_only=True)
    assert da == db and len(da) == 2
    # the logged data counters are those of both ranks (each rank's state holds its workers' counters)
    from collections import Counter

    per_rank = [sum((Counter(w["stats"]) for w in st["workers"].values()), Counter()) for st in da]
    assert all(per_rank), per_rank  # both ranks skipped or dropped something
    logged = {k[len("data/") :]: v for k, v in a[8].items() if k.startswith("data/")}
    assert logged == dict(per_rank[0] + per_rank[1])
    assert not [p for p in (killed / "ckpt").iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.slow
def test_two_process_fsdp_lora_matches_single_process(tmp_path):
    """LoRA under FSDP2: the adapters are sharded with their blocks, gathered for the save (adapter files
    only), and the 2-rank run equals the 1-process run over the same global batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    lora = ["--lora_rank", "2", "--lora_alpha", "4"]
    run([sys.executable, "-m", "train.pretrain", *common(one), *lora, "--gradient_accumulation_steps", "2"])
    run(torchrun(*common(two), *lora))
    r1, r2 = records(one), records(two)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [0, 1, 2]
    for a, b in zip(r1, r2):
        for k in ("mse", "ce", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k, a[k], b[k])
    for rel in ("adapter_model.safetensors", "ema/adapter_model.safetensors"):
        w1 = load_file(str(one / "ckpt" / "0000002" / rel))
        w2 = load_file(str(two / "ckpt" / "0000002" / rel))
        assert set(w1) == set(w2) and len(w1) == 2 * 11 * 18  # A and B of 11 modules x 18 blocks
        for k in w1:
            torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-6, msg=k)
    assert not os.path.exists(two / "ckpt" / "0000002" / "model.safetensors")
    assert os.path.isdir(two / "ckpt" / "0000002" / "optimizer")
