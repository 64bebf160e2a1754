"""Parity of the training data pipeline with upstream's packed batch (fixture case c, ``train.batch.*``).

The fixture's PNGs and texts are written into a temporary parquet file + jsonl, read back through the
s2i / vlm_sft datasets built from ``cases.json["train"]["grouped_datasets"]``, packed in the listed
order with python/numpy RNGs seeded as recorded, and compared with the stored tensors.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from data.data_config import build_groups
from data.parquet_io import make_parquet_info
from data.sequence_packing import PackingConfig, pack_samples
from modeling.sequence import sample_attention_mask, to_additive_mask
from modeling.tokenizer import load_tokenizer
from tests.packed_adapters import upstream_batch

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bagel-tiny")

EXACT_KEYS = [
    "packed_text_ids", "packed_text_indexes", "packed_position_ids", "packed_instruc_indexes",
    "packed_vae_token_indexes", "packed_vit_token_indexes", "packed_latent_position_ids",
    "packed_vit_position_ids", "vit_token_seqlens", "mse_loss_indexes", "ce_loss_indexes",
    "packed_label_ids", "ce_loss_weights", "packed_timesteps",
]  # fmt: skip


def _png(name: str) -> bytes:
    with open(os.path.join(FIXTURE, "images", name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def fixture_case():
    with open(os.path.join(FIXTURE, "cases.json")) as f:
        train = json.load(f)["train"]
    return train, load_file(os.path.join(FIXTURE, "cases.safetensors"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(os.path.join(FIXTURE, "checkpoint"))


@pytest.fixture(scope="module")
def batch(fixture_case, tokenizer, tmp_path_factory):
    train, _ = fixture_case
    tok, special_ids, _ = tokenizer
    root = str(tmp_path_factory.mktemp("fixture_data"))
    s = train["samples"]
    rows = [
        {"image": [_png("train_s0_ref0.png"), _png("train_s0_ref1.png"), _png("train_s0_target.png")],
         "instruction": s[0]["instruction"]},
        {"image": [_png("train_s1_ref0.png"), _png("train_s1_target.png")], "instruction": s[1]["instruction"]},
    ]  # fmt: skip
    os.makedirs(f"{root}/parquet")
    parquet_path = f"{root}/parquet/part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)
    with open(f"{root}/info.json", "w") as f:
        json.dump(make_parquet_info([parquet_path]), f)
    os.makedirs(f"{root}/images")
    with open(f"{root}/images/vlm.png", "wb") as f:
        f.write(_png("train_vlm_image.png"))
    line = {
        "image": "vlm.png",
        "conversations": [
            {"from": "human", "value": "<image>\n" + s[2]["question"]},
            {"from": "gpt", "value": s[2]["answer"]},
        ],
    }
    with open(f"{root}/vlm.jsonl", "w") as f:
        f.write(json.dumps(line) + "\n")

    config = json.loads(json.dumps(train["grouped_datasets"]))
    config["s2i"]["dataset_info"] = {
        "fixture_s2i": {"data_dir": f"{root}/parquet", "parquet_info_path": f"{root}/info.json"}
    }
    config["vlm_sft"]["dataset_info"] = {
        "fixture_vlm": {"data_dir": f"{root}/images", "jsonl_path": f"{root}/vlm.jsonl"}
    }
    groups = build_groups(config, tok, rank=0, world_size=1, data_seed=42, data_root=None)
    assert [g.name for g in groups] == ["s2i", "vlm_sft"]
    stats = Counter()
    s2i = groups[0].dataset.iterate(0, 0, None, stats)
    vlm = groups[1].dataset.iterate(0, 0, None, stats)
    samples = [next(s2i), next(s2i), next(vlm)]
    assert not stats, stats

    overrides = train["data_config_overrides"]
    cfg = PackingConfig.from_special_ids(
        special_ids,
        text_cond_dropout_prob=overrides["text_cond_dropout_prob"],
        vit_cond_dropout_prob=overrides["vit_cond_dropout_prob"],
        vae_cond_dropout_prob=overrides["vae_cond_dropout_prob"],
        vit_patch_size=overrides["vit_patch_size"],
        max_num_patch_per_side=overrides["max_num_patch_per_side"],
        vae_image_downsample=overrides["vae_image_downsample"],
        max_latent_size=overrides["max_latent_size"],
        interpolate_pos=overrides["interpolate_pos"],
    )
    seeds = train["seeds"]
    seq = pack_samples(
        samples, cfg, random.Random(seeds["python_random"]), np.random.RandomState(seeds["numpy"])
    )
    return upstream_batch(seq)


@pytest.mark.parametrize("key", EXACT_KEYS)
def test_exact_tensors(batch, fixture_case, key):
    _, tensors = fixture_case
    expected = tensors[f"train.batch.{key}"]
    got = batch[key]
    assert got.shape == expected.shape, (key, got.shape, expected.shape)
    assert got.dtype == expected.dtype, (key, got.dtype, expected.dtype)
    assert torch.equal(got, expected), key


def test_lengths_and_shapes(batch, fixture_case):
    train, tensors = fixture_case
    assert batch["sequence_length"] == train["sequence_length"] == 450
    assert batch["sample_lens"] == tensors["train.batch.sample_lens"].tolist() == train["sample_lens"]
    assert [list(s) for s in batch["patchified_vae_latent_shapes"]] == tensors[
        "train.batch.patchified_vae_latent_shapes"
    ].tolist()
    assert [list(s) for s in batch["patchified_vit_token_shapes"]] == tensors[
        "train.batch.patchified_vit_token_shapes"
    ].tolist()
    plans = train["samples_sequence_plan_and_splits"]
    assert batch["split_lens"] == [p["split_lens"] for p in plans]
    assert batch["attn_modes"] == [p["attn_modes"] for p in plans]
    assert len(batch["batch_data_indexes"]) == 3


def test_attention_masks(batch, fixture_case):
    _, tensors = fixture_case
    assert len(batch["nested_attention_masks"]) == 3
    for i, mask in enumerate(batch["nested_attention_masks"]):
        expected = tensors[f"train.batch.attention_allowed{i}"]
        assert mask.dtype == torch.bool
        assert torch.equal(mask, expected), f"sample {i}"
        # the module the model side uses gives the same masks from split_lens / attn_modes
        rebuilt = sample_attention_mask(batch["split_lens"][i], batch["attn_modes"][i])
        assert torch.equal(rebuilt, expected)
        additive = to_additive_mask(rebuilt)
        assert torch.equal(additive == 0, expected) and torch.isinf(additive[~expected]).all()


def test_padded_images(batch, fixture_case):
    _, tensors = fixture_case
    u8 = tensors["train.batch.padded_images_u8"].float()
    expected = torch.zeros_like(u8)
    for i, (h, w) in enumerate(batch["patchified_vae_latent_shapes"]):
        region = u8[i, :, : h * 16, : w * 16]
        expected[i, :, : h * 16, : w * 16] = (region / 255 - 0.5) / 0.5
    got = batch["padded_images"]
    assert got.shape == expected.shape == (5, 3, 128, 128)
    assert (got - expected).abs().max().item() <= 1e-6
    # padding is exactly zero
    h, w = batch["patchified_vae_latent_shapes"][2]
    assert (
        torch.count_nonzero(got[2, :, h * 16 :, :]) == 0 and torch.count_nonzero(got[2, :, :, w * 16 :]) == 0
    )


def test_vit_tokens(batch, fixture_case):
    _, tensors = fixture_case
    expected = (tensors["train.batch.packed_vit_tokens_u8"].float() / 255 - 0.5) / 0.5
    got = batch["packed_vit_tokens"]
    assert got.shape == expected.shape == (88, 588) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-6


def test_timesteps_come_from_numpy_seed(batch, fixture_case):
    train, _ = fixture_case
    rng = np.random.RandomState(train["seeds"]["numpy"])
    draws = [rng.randn(), rng.randn()]  # one per target image, in packing order
    ts = batch["packed_timesteps"]
    mse = batch["mse_loss_indexes"]
    vae_idx = batch["packed_vae_token_indexes"]
    is_target = torch.isin(vae_idx, mse)
    assert torch.isinf(ts[~is_target]).all() and (ts[~is_target] < 0).all()
    assert sorted(set(ts[is_target].tolist())) == sorted(np.float32(d).item() for d in draws)
