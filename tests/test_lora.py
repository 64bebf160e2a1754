"""LoRA adapters: targets, PEFT on-disk format, round trip into the pipeline, merge, bad adapters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from inference.pipeline import SconePipeline
from modeling.checkpoint import load_pretrained
from modeling.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraConfig,
    add_lora,
    load_adapter,
    lora_parameters,
    merge_lora,
    parse_targets,
    read_adapter,
    save_adapter,
)
from tests.conftest import ROOT

SHIPPED = str(ROOT / "ckpts" / "scone-tiny")
REFS = [str(ROOT / "assets" / "examples" / f) for f in ("ref1.png", "ref2.png")]
TEXT = "Place the green cross from image 1 on the right, on the gray background from image 2."
KW = dict(images=REFS, prompt=TEXT, seed=3, num_timesteps=6)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A trained-looking adapter (random non-zero B) on the shipped model, saved in PEFT format."""
    folder = tmp_path_factory.mktemp("adapter")
    loaded = load_pretrained(SHIPPED)
    config = LoraConfig(r=4, lora_alpha=8)
    add_lora(loaded.model, config, seed=0)
    g = torch.Generator().manual_seed(1)
    for name, p in loaded.model.named_parameters():
        if ".lora_B." in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(loaded.model, config, str(folder), base=SHIPPED)
    return folder, loaded


def test_targets():
    assert parse_targets("gen:attn") == [
        "self_attn.q_proj_moe_gen", "self_attn.k_proj_moe_gen", "self_attn.v_proj_moe_gen", "self_attn.o_proj_moe_gen",
    ]  # fmt: skip
    default = parse_targets("gen:attn,mlp;und:attn")
    assert len(default) == 11 and "mlp.up_proj" not in default and "mlp_moe_gen.up_proj" in default
    for bad in ("vision:attn", "gen:ffn", "gen", ""):
        with pytest.raises(ValueError):
            parse_targets(bad)


def test_fresh_adapter_changes_nothing_and_trains_few_parameters():
    base = SconePipeline.from_pretrained(SHIPPED)
    adapted = SconePipeline.from_pretrained(SHIPPED)
    add_lora(adapted.model, LoraConfig(r=2, lora_alpha=4), seed=0)  # rank 2: 1% of this 4 M model
    assert torch.equal(base.generate(**KW).latent, adapted.generate(**KW).latent)  # B = 0
    trainable = sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.model.parameters())
    assert trainable == sum(p.numel() for p in lora_parameters(adapted.model))
    assert trainable / total <= 0.02, trainable / total


def test_adapter_files_are_peft_format_and_small(adapter):
    folder, loaded = adapter
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == parse_targets("gen:attn,mlp;und:attn")
    keys = load_file(str(folder / ADAPTER_WEIGHTS))
    layers = loaded.config.llm.num_hidden_layers
    assert len(keys) == 2 * 11 * layers
    assert "base_model.model.language_model.model.layers.0.self_attn.q_proj_moe_gen.lora_A.weight" in keys
    assert (folder / ADAPTER_WEIGHTS).stat().st_size < 0.1 * (
        ROOT / "ckpts" / "scone-tiny" / "model.safetensors"
    ).stat().st_size
    # the base keys are untouched: the model still saves and loads in the released layout
    assert "language_model.model.layers.0.self_attn.q_proj_moe_gen.weight" in loaded.model.state_dict()


def test_round_trip_into_the_pipeline_is_identical(adapter):
    folder, loaded = adapter
    reference = SconePipeline(loaded).generate(**KW).latent  # the model the adapter was saved from
    pipe = SconePipeline.from_pretrained(SHIPPED, lora=str(folder))
    assert torch.equal(pipe.generate(**KW).latent, reference)
    base = SconePipeline.from_pretrained(SHIPPED).generate(**KW).latent
    assert (reference - base).abs().max() > 1e-3  # the adapter does something
    half = SconePipeline.from_pretrained(SHIPPED, lora=str(folder), lora_scale=0.0).generate(**KW).latent
    assert torch.equal(half, base)  # scale 0 is the base model


def test_merged_folder_matches_base_plus_adapter(adapter, tmp_path):
    folder, _ = adapter
    out = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "train.merge_lora", "--base", SHIPPED, "--lora", str(folder),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    merged = SconePipeline.from_pretrained(str(out)).generate(**KW).latent
    unmerged = SconePipeline.from_pretrained(SHIPPED, lora=str(folder)).generate(**KW).latent
    assert (merged - unmerged).abs().max() <= 1e-4
    m = load_pretrained(SHIPPED)
    load_adapter(m.model, str(folder))
    assert merge_lora(m.model) == 11 * m.config.llm.num_hidden_layers
    assert not any(".lora_" in k for k in m.model.state_dict())


def test_bad_adapters_are_clear_errors(adapter, tmp_path):
    folder, _ = adapter
    with pytest.raises(ValueError, match="missing adapter_config.json"):
        SconePipeline.from_pretrained(SHIPPED, lora=str(tmp_path))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cfg = json.loads((folder / ADAPTER_CONFIG).read_text()) | {"target_modules": ["mlp.up_proj"]}
    (wrong / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    (wrong / ADAPTER_WEIGHTS).write_bytes((folder / ADAPTER_WEIGHTS).read_bytes())
    with pytest.raises(ValueError, match="does not fit this model"):
        SconePipeline.from_pretrained(SHIPPED, lora=str(wrong))
    with pytest.raises(ValueError, match="neither a folder nor a hub id"):
        SconePipeline.from_pretrained(SHIPPED, lora=str(tmp_path / "gone" / "deeper" / "x"))


def test_fp32_adapter_on_a_bf16_base(adapter):
    folder, _ = adapter
    m = load_pretrained(SHIPPED, dtype=torch.bfloat16).model
    config, _ = read_adapter(str(folder))
    mods = add_lora(m, config, dtype=torch.float32)
    lin = next(iter(mods.values()))
    x = torch.randn(3, lin.in_features, dtype=torch.bfloat16)
    out = lin(x)
    assert out.dtype == torch.bfloat16 and lin.lora_A.weight.dtype == torch.float32
