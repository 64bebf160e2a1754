"""Unit tests of the training parts: freeze sets, LR schedules, clipping, EMA, CLI, checkpoint discovery."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn as nn

from train.checkpointing import find_latest_checkpoint
from train.config import build_parser, parse_config
from train.freeze import POS_EMBED_KEYS, FreezeFlags, apply_freeze, frozen_reasons
from train.optim import EMA, WarmupSchedule, clip_grad_norm, lr_factor

KEYS = os.path.join(os.path.dirname(__file__), "fixtures", "bagel-tiny", "keys.json")


@pytest.fixture(scope="module")
def names() -> list[str]:
    with open(KEYS) as f:
        return list(json.load(f)["model.safetensors"])


def frozen(names, **flags) -> set[str]:
    return set(frozen_reasons(names, FreezeFlags(**flags))) - set(POS_EMBED_KEYS)


def test_pos_embed_never_trainable(names):
    assert set(frozen_reasons(names, FreezeFlags())) == set(POS_EMBED_KEYS)


def test_freeze_vit_and_llm(names):
    assert frozen(names, freeze_vit=True) == {n for n in names if n.startswith("vit_model.")}
    llm = {n for n in names if n.startswith("language_model.")}
    assert frozen(names, freeze_llm=True) == llm
    assert "language_model.lm_head.weight" in llm and "language_model.model.embed_tokens.weight" in llm
    # freeze_llm replaces the expert flags; MLP-bridge flags are still evaluated on top
    assert frozen(names, freeze_llm=True, freeze_llm_und=True, freeze_llm_gen=True) == llm
    assert frozen(names, freeze_llm=True, freeze_mlp_gen=True) == llm | {
        n for n in names if n.split(".")[0] in ("vae2llm", "llm2vae")
    }


def test_freeze_experts_exact_sets(names):
    body = [n for n in names if n.startswith("language_model.model.")]
    gen = {n for n in body if "moe_gen" in n}
    und = {n for n in body if "moe_gen" not in n and "embed_tokens" not in n}
    assert frozen(names, freeze_llm_gen=True) == gen
    assert frozen(names, freeze_llm_und=True) == und
    assert "language_model.model.norm.weight" in und and "language_model.model.norm_moe_gen.weight" in gen
    # 18 layers x 14 tensors per expert (q/k/v w+b, o, q_norm, k_norm, 3 mlp, 2 norms) + final norm
    assert len(gen) == len(und) == 18 * 14 + 1
    both = frozen(names, freeze_llm_und=True, freeze_llm_gen=True)
    never = {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}
    assert both == (gen | und) and not (both & never)


def test_freeze_bridges_and_time_embedder(names):
    assert frozen(names, freeze_mlp_und=True) == {n for n in names if n.startswith("connector.")}
    assert frozen(names, freeze_mlp_gen=True) == {
        n for n in names if n.split(".")[0] in ("vae2llm", "llm2vae")
    }
    everything = frozen(names, freeze_vit=True, freeze_llm=True, freeze_mlp_und=True, freeze_mlp_gen=True)
    assert {n for n in names if n not in everything} - set(POS_EMBED_KEYS) == {
        n for n in names if n.startswith("time_embedder.")
    }


def test_stage2_step2_trains_only_embeddings_and_time_embedder(names):
    """As scripted upstream (docs/training.md, the four stages): und + gen + both bridges frozen, ViT frozen."""
    f = frozen(
        names,
        freeze_vit=True,
        freeze_llm_und=True,
        freeze_llm_gen=True,
        freeze_mlp_und=True,
        freeze_mlp_gen=True,
    )
    trainable = {n for n in names if n not in f} - set(POS_EMBED_KEYS)
    assert trainable == {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} | {
        n for n in names if n.startswith("time_embedder.")
    }


def test_apply_freeze_summary_and_eval_mode():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit_model = nn.Linear(2, 2)
            self.connector = nn.Linear(2, 2)
            self.latent_pos_embed = nn.Module()
            self.latent_pos_embed.pos_embed = nn.Parameter(torch.zeros(4, 2))

    m, vae = Tiny(), nn.Conv2d(1, 1, 1)
    m.train()
    s = apply_freeze(m, FreezeFlags(freeze_vit=True), vae, freeze_vae=True)
    assert not m.vit_model.weight.requires_grad and m.connector.weight.requires_grad
    assert not m.latent_pos_embed.pos_embed.requires_grad and not vae.weight.requires_grad
    assert not m.vit_model.training and not vae.training and m.connector.training
    assert s.per_prefix["vit_model"] == [0, 0, 2, 6] and s.per_prefix["connector"] == [2, 6, 0, 0]
    assert s.reasons == {"freeze_vit": 2, "pos_embed": 1, "freeze_vae": 2}
    assert "connector" in s.table()


def test_lr_schedules():
    assert lr_factor(0, "constant", 2000, 10) == 0.0
    assert lr_factor(1000, "constant", 2000, 10) == 0.5
    assert lr_factor(5000, "constant", 2000, 10) == 1.0
    assert lr_factor(0, "constant", 0, 10) == 1.0
    assert lr_factor(10, "cosine", 10, 110, 0.01) == pytest.approx(1.0)
    assert lr_factor(60, "cosine", 10, 110, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(110, "cosine", 10, 110, 0.01) == pytest.approx(0.01)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupSchedule(opt, 2e-5, "cosine", 4, 8, min_lr=1e-7)
    assert sched.apply(2) == pytest.approx(1e-5) and opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert sched.lr_at(8) == pytest.approx(1e-7)
    with pytest.raises(ValueError, match="lr_scheduler"):
        WarmupSchedule(opt, 1.0, "linear", 1, 2)


def test_clip_grad_norm_returns_total_norm():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 2.0), torch.full((4,), 1.0)
    total = clip_grad_norm([a, b], 1.0)
    assert total == pytest.approx(math.sqrt(3 * 4 + 4))
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-5)
    assert clip_grad_norm([nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no grads at all
    c = nn.Parameter(torch.zeros(2))
    c.grad = torch.tensor([float("nan"), 1.0])
    assert math.isnan(clip_grad_norm([c], 1.0))


def test_ema_update_and_reload():
    m = nn.Linear(2, 1)
    m.bias.requires_grad_(False)
    ema = EMA(m, 0.9)
    assert set(ema.shadow) == {"weight"}
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow["weight"], 0.9 * w0 + 0.1 * (w0 + 1.0))
    full = ema.full_state_dict(rank=0)
    ema2 = EMA(m, 0.9)
    ema2.load_full_state_dict(full)
    assert torch.equal(ema2.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(KeyError):
        ema2.load_full_state_dict({})
    with pytest.raises(ValueError):
        EMA(m, 1.5)


def test_cli_accepts_dashes_underscores_and_bool_values():
    base = ["--model_path", "x", "--synthetic_data"]
    a = parse_config(
        base + ["--resume-model-only", "True", "--num_worker", "3", "--freeze-llm-gen", "--lr", "2e-5"]
    )
    assert a.checkpoint.resume_model_only is True and a.data.num_workers == 3
    assert a.freeze.freeze_llm_gen is True and a.optimizer.lr == 2e-5
    b = parse_config(base + ["--resume_model_only", "False", "--auto-resume", "--cpu_offload", "False"])
    assert b.checkpoint.resume_model_only is False and b.checkpoint.auto_resume is True
    assert b.parallel.cpu_offload is False
    assert parse_config(base + ["--upstream_compat"]).parallel.reduce_dtype == "bf16"
    with pytest.raises(SystemExit):
        parse_config(base + ["--layer_module", "Qwen2DecoderLayer"])
    with pytest.raises(SystemExit):
        parse_config(["--model_path", "x"])  # no data
    with pytest.raises(SystemExit):
        parse_config(base + ["--llm_path", "hf/llm"])
    help_text = build_parser().format_help()
    for opt in ("--sharding_strategy", "--max_nonfinite_steps", "--use_semantic_mask", "--finetune_from_ema"):
        assert opt in help_text


def test_find_latest_checkpoint_skips_incomplete_and_non_numeric(tmp_path):
    def make(name, complete=True):
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if complete:
            (d / "train_state.json").write_text("{}")

    assert find_latest_checkpoint(str(tmp_path / "missing")) is None
    make("0000002")
    make("0000010")
    make("0000100", complete=False)  # crashed before its marker was written
    make(".tmp-0000200-123", complete=True)
    make("final")
    (tmp_path / "0000300").write_text("not a dir")
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "0000010")


@pytest.mark.parametrize("stage", ["stage1_step1", "stage1_step2", "stage2_step1", "stage2_step2"])
def test_stage_scripts_parse(tmp_path, stage):
    """Run each stage script with a fake ``torchrun`` that only parses the training arguments."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fake = tmp_path / "torchrun"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "from train.config import parse_config\n"
        "argv = sys.argv[sys.argv.index('train/pretrain.py') + 1:]\n"
        "a = {k: v for s in parse_config(argv).to_dict().values() for k, v in s.items()}\n"
        "print(json.dumps({k: a[k] for k in ('freeze_llm_und', 'freeze_llm_gen', 'freeze_mlp_und',"
        " 'freeze_mlp_gen', 'freeze_vit', 'use_semantic_mask', 'lr', 'total_steps', 'num_shard', 'finetune_from_ema')}))\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "NUM_NODES": "2"}
    p = subprocess.run(
        ["bash", f"scripts/train_{stage}.sh"], cwd=root, env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["lr"] == 2e-5 and got["freeze_vit"] and got["num_shard"] == 8
    gen_frozen = stage == "stage2_step1"
    assert got["freeze_llm_gen"] == got["freeze_mlp_gen"] == gen_frozen
    assert (
        got["freeze_llm_und"] is False and got["freeze_mlp_und"] is False
    )  # README: Und. trains in every stage
    assert got["use_semantic_mask"] == gen_frozen
    assert got["finetune_from_ema"] == (stage == "stage1_step1")
    assert got["total_steps"] == {"stage1_step1": 6001, "stage1_step2": 2001}.get(stage, 1001)


def test_synthetic_pack_layout_follows_position_rules():
    from train.synthetic import SyntheticSpec, make_pack

    special = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}
    spec = SyntheticSpec(
        samples_per_pack=2, num_refs=1, image_size=32, vit_size=28, text_len=3, text_loss=True
    )
    b = make_pack(spec, [0, 1], 0, special)
    # one sample: [soi 4 latents eoi] [soi 4 vit eoi] [bos 3 ids eos] [soi 4 noisy eoi] = 6 + 6 + 5 + 6
    assert b.sample_lens == [23, 23] and b.length == 46
    pos = b.position_ids[:23].tolist()
    assert pos == [0] * 6 + [1] * 6 + [2, 3, 4, 5, 6] + [7] * 6
    assert b.attn_modes[0] == ["full", "full", "causal", "noise"] and b.split_lens[0] == [6, 6, 5, 6]
    assert b.mse_indexes.tolist() == [18, 19, 20, 21, 41, 42, 43, 44]
    assert torch.isinf(b.vae_timesteps[:4]).all() and torch.isfinite(b.vae_timesteps[4:8]).all()
    assert b.label_ids[:4].tolist()[-1] == 2 and b.ce_indexes[:4].tolist() == [12, 13, 14, 15]
    assert b.vae_images.shape == (4, 3, 32, 32) and b.vit_pixels.shape == (8, 588)
    again = make_pack(spec, [0, 1], 0, special)
    assert torch.equal(again.vae_images, b.vae_images)  # pure function of (seed, ids)
