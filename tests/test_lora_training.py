"""LoRA training with train/pretrain.py (CPU, the tiny fixture): adapter-only step folders in PEFT format,
a frozen base, optimizer and EMA over the adapters only, and an exact kill-and-resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from modeling.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX
from tests.test_train_loop import CKPT, GEN_ONLY, SYN, args_for, losses
from train.pretrain import train

LORA = ["--lora_rank", "2", "--lora_alpha", "4", "--lr", "5e-3", "--ema", "0.5", "--save_every", "2"]


def test_lora_run_writes_adapters_only_and_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*SYN, GEN_ONLY, *LORA]
    train(args_for(straight, *common, "--total_steps", "5"))
    train(args_for(resumed, *common, "--total_steps", "3"))  # "killed" after its save at step 2
    train(args_for(resumed, *common, "--total_steps", "5", "--auto_resume", "True"))

    step = straight / "ckpt" / "0000004"
    names = {p.name for p in step.iterdir()}
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "ema", "train_state.json"} <= names
    assert "model.safetensors" not in names and "ae.safetensors" not in names  # no copy of the base
    config = json.loads((step / ADAPTER_CONFIG).read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4 and config["peft_type"] == "LORA"
    base_bytes = os.path.getsize(os.path.join(CKPT, "model.safetensors"))
    assert (step / ADAPTER_WEIGHTS).stat().st_size < 0.2 * base_bytes

    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(5))
    for s in range(5):
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), (s, a[s], b[s])
    for rel in (ADAPTER_WEIGHTS, f"ema/{ADAPTER_WEIGHTS}"):
        wa = load_file(str(straight / "ckpt" / "0000004" / rel))
        wb = load_file(str(resumed / "ckpt" / "0000004" / rel))
        assert set(wa) == set(wb) and all(k.startswith(PEFT_PREFIX) for k in wa)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")
    trained = load_file(str(step / ADAPTER_WEIGHTS))
    assert any(v.abs().max() > 0 for k, v in trained.items() if ".lora_B." in k)  # the adapters learned

    # the adapter loads into the pipeline on the untouched base
    from inference.pipeline import SconePipeline

    pipe = SconePipeline.from_pretrained(CKPT, lora=str(step))
    out = pipe.generate(images=[], prompt="a red ball", seed=0, height=32, width=32, num_timesteps=3)
    assert out.image.size == (32, 32)


def test_optimizer_state_covers_only_the_adapters(tmp_path):
    from modeling.checkpoint import load_pretrained
    from train.config import parse_config
    from train.model_setup import StartPoint
    from train.optim import build_optimizer
    from train.parallel import DistInfo
    from train.trained_weights import trained_weights

    loaded = load_pretrained(CKPT)
    cfg = parse_config(["--model_path", CKPT, *SYN, GEN_ONLY, "--lora_rank", "2"])
    weights = trained_weights(cfg.freeze, cfg.lora, cfg.objective.global_seed)
    weights.prepare(loaded.model, loaded.vae, StartPoint("x", None, "test"), torch.float32, DistInfo())
    opt = build_optimizer(loaded.model, 1e-3, (0.9, 0.95), 1e-8)
    trained = [p for g in opt.param_groups for p in g["params"]]
    assert trained and all(p.requires_grad for p in trained)
    assert sum(p.numel() for p in trained) == sum(
        p.numel() for n, p in loaded.model.named_parameters() if ".lora_" in n
    )


def test_int8_base_lora_trains_resumes_and_tracks_the_float_base(tmp_path):
    """QLoRA-style: the frozen base's decoder linears in weight-only int8, fp32 adapters on top."""
    from modeling.weight_formats import storage_bytes

    common = [*SYN, GEN_ONLY, *LORA, "--lora_base_weights", "int8"]
    straight, resumed, floating = tmp_path / "int8", tmp_path / "int8_resumed", tmp_path / "float"
    train(args_for(straight, *common, "--total_steps", "4"))
    train(args_for(resumed, *common, "--total_steps", "3"))
    train(args_for(resumed, *common, "--total_steps", "4", "--auto_resume", "True"))
    train(args_for(floating, *SYN, GEN_ONLY, *LORA, "--total_steps", "4"))
    a, b, f = losses(straight), losses(resumed), losses(floating)
    for s in range(4):
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6)  # exact resume on the int8 base
        assert a[s] == pytest.approx(f[s], rel=0.1)  # int8 base ~ float base (random tiny model: loose)
    assert a != f  # the base really is another one
    step = straight / "ckpt" / "0000003"
    trained = load_file(str(step / ADAPTER_WEIGHTS))
    assert any(v.abs().max() > 0 for k, v in trained.items() if ".lora_B." in k)
    # the quantized base takes about half of bf16's bytes for those linears
    from modeling.checkpoint import load_pretrained
    from modeling.weight_formats import quantize_model, quantized_keys

    model = load_pretrained(CKPT, "cpu", torch.bfloat16).model
    keys = sorted(quantized_keys(model, "int8"))
    before = sum(storage_bytes(model.get_parameter(k)) for k in keys)
    quantize_model(model, "int8")
    after = sum(storage_bytes(model.get_parameter(k)) for k in keys)
    assert after < 0.6 * before


def test_int8_base_needs_lora():
    from train.config import parse_config

    with pytest.raises(SystemExit, match="needs --lora_rank"):
        parse_config(["--model_path", CKPT, "--synthetic_data", "True", "--lora_base_weights", "int8"])
