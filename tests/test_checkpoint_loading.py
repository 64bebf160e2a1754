"""Loader strictness: every defect of a checkpoint folder is one clear error naming the file/key."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling.checkpoint import load_pretrained, resolve_model_path
from modeling.errors import CheckpointError


@pytest.fixture()
def ckpt_copy(tmp_path, checkpoint_dir):
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, dst, symlinks=False)
    for p in dst.iterdir():
        os.chmod(p, 0o644)
    return dst


def test_loads_model_and_ema_and_casts(ckpt_copy):
    lm = load_pretrained(str(ckpt_copy), dtype=torch.bfloat16)
    assert lm.weights_file.endswith("model.safetensors")
    assert lm.model.dtype == torch.bfloat16
    assert not lm.model.latent_pos_embed.pos_embed.requires_grad
    assert lm.config.vit.num_hidden_layers == 2  # vit_config.json says 3: upstream drops the last layer
    assert lm.config.max_latent_size == 64
    ema = load_pretrained(str(ckpt_copy), weights_file="ema.safetensors")
    assert ema.weights_file.endswith("ema.safetensors")


def test_missing_ae(ckpt_copy):
    (ckpt_copy / "ae.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ae.safetensors"):
        load_pretrained(str(ckpt_copy))


def test_missing_config(ckpt_copy):
    (ckpt_copy / "vit_config.json").unlink()
    with pytest.raises(CheckpointError, match="vit_config.json"):
        load_pretrained(str(ckpt_copy))


def test_missing_weights(ckpt_copy):
    (ckpt_copy / "model.safetensors").unlink()
    (ckpt_copy / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(str(ckpt_copy))


def _rewrite(path, fn):
    sd = load_file(str(path))
    fn(sd)
    os.remove(path)
    save_file(sd, str(path))


def test_wrong_shape_names_key(ckpt_copy):
    key = "language_model.model.layers.3.mlp.up_proj.weight"
    _rewrite(ckpt_copy / "model.safetensors", lambda sd: sd.__setitem__(key, torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match=r"layers\.3\.mlp\.up_proj\.weight.*\[3, 3\]"):
        load_pretrained(str(ckpt_copy))


def test_extra_key_names_key(ckpt_copy):
    key = "vit_model.vision_model.encoder.layers.2.mlp.fc1.bias"
    _rewrite(ckpt_copy / "model.safetensors", lambda sd: sd.__setitem__(key, torch.zeros(64)))
    with pytest.raises(CheckpointError, match=r"unexpected.*layers\.2\.mlp\.fc1\.bias"):
        load_pretrained(str(ckpt_copy))


def test_missing_key_names_key(ckpt_copy):
    key = "llm2vae.bias"
    _rewrite(ckpt_copy / "model.safetensors", lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=r"missing.*llm2vae\.bias"):
        load_pretrained(str(ckpt_copy))


def test_corrupt_weights_file(ckpt_copy):
    path = ckpt_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(str(ckpt_copy))


def test_pos_tables_recomputed_when_absent(ckpt_copy, checkpoint_dir):
    """Training checkpoints may omit the fixed sin-cos tables; they are recomputed bit-for-bit."""
    _rewrite(
        ckpt_copy / "model.safetensors",
        lambda sd: (sd.pop("latent_pos_embed.pos_embed"), sd.pop("vit_pos_embed.pos_embed")),
    )
    lm = load_pretrained(str(ckpt_copy))
    ref = load_file(str(checkpoint_dir / "model.safetensors"))
    torch.testing.assert_close(
        lm.model.latent_pos_embed.pos_embed.data, ref["latent_pos_embed.pos_embed"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        lm.model.vit_pos_embed.pos_embed.data, ref["vit_pos_embed.pos_embed"], atol=1e-6, rtol=0
    )


def test_hub_id_uses_snapshot_download(monkeypatch, ckpt_copy):
    calls = {}

    def fake_snapshot_download(repo_id, allow_patterns):
        calls["repo"], calls["patterns"] = repo_id, allow_patterns
        return str(ckpt_copy)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_path("Ryann829/Scone") == str(ckpt_copy)
    assert calls["repo"] == "Ryann829/Scone"
    assert "ae.safetensors" in calls["patterns"] and "model.safetensors" in calls["patterns"]


def test_hub_offline_error_is_clear(monkeypatch):
    import huggingface_hub

    def boom(**_):
        raise OSError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(CheckpointError, match="some-org/some-model"):
        resolve_model_path("some-org/some-model")


def test_nonexistent_local_folder():
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model_path("./does/not/exist")
