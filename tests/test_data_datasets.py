"""Dataset kinds (t2i, unified_edit, vlm_sft, s2i), condition-dropout position rules and mask rules."""

from __future__ import annotations

import itertools
import json
import os
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data.data_config import build_groups
from data.parquet_io import make_parquet_info
from data.sequence_packing import PackingConfig, pack_samples
from data.tiny_data import draw_image, png_bytes, s2i_row
from data.vlm_dataset import conversation_elements
from modeling.sequence import sample_attention_mask
from modeling.tokenizer import encode, load_tokenizer
from tests.packed_adapters import upstream_batch

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bagel-tiny")
VAE_T = {"image_stride": 16, "max_image_size": 64, "min_image_size": 32}
VIT_T = {"image_stride": 14, "max_image_size": 56, "min_image_size": 28}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(os.path.join(FIXTURE, "checkpoint"))


def _img(seed: int) -> bytes:
    return png_bytes(draw_image(random.Random(seed), [("circle", "red")], (48, 40)))


def _parquet(tmp_path, rows, name="part-00000.parquet", rows_per_group=2):
    d = tmp_path / "pq"
    d.mkdir(exist_ok=True)
    path = str(d / name)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=rows_per_group)
    info = tmp_path / "info.json"
    info.write_text(json.dumps(make_parquet_info([path])))
    return str(d), str(info)


def test_s2i_plan_and_token_count(tok, tmp_path):
    tokenizer, _, _ = tok
    row = s2i_row(random.Random(3), multi_candidate=True)
    row["image"] = row["image"][:1] + row["image"][:1] + row["image"][-1:]  # force 2 references
    data_dir, info = _parquet(tmp_path, [row])
    config = {"s2i": {"dataset_names": ["x"], "num_used_data": [1], "weight": 1, "image_transform_args": VAE_T,
                      "vit_image_transform_args": VIT_T,
                      "dataset_info": {"x": {"data_dir": data_dir, "parquet_info_path": info}}}}  # fmt: skip
    ds = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)[0].dataset
    sample = next(ds.iterate(0, 0, None, Counter()))
    kinds = [(p["type"], p["loss"], p["enable_cfg"]) for p in sample["sequence_plan"]]
    assert kinds == [("vae_image", 0, 1), ("vit_image", 0, 1)] * 2 + [("text", 0, 1), ("vae_image", 1, 0)]
    ids = encode(tokenizer, row["instruction"])
    assert sample["text_ids_list"] == [ids]
    expected = len(ids)
    for t, p in zip(sample["image_tensor_list"], [p for p in sample["sequence_plan"] if p["type"] != "text"]):
        stride = 14 if p["type"] == "vit_image" else 16
        expected += t.shape[1] * t.shape[2] // stride**2
    assert sample["num_tokens"] == expected


def test_t2i_dataset(tok, tmp_path):
    tokenizer, _, _ = tok
    rows = [
        {"image": _img(i), "captions": json.dumps({"a": f"caption {i} a", "b": f"caption {i} b"})}
        for i in range(5)
    ]
    rows[3]["captions"] = json.dumps({})
    data_dir, _ = _parquet(tmp_path, rows)
    config = {"t2i_pretrain": {"dataset_names": ["t"], "num_used_data": [1], "weight": 1, "image_transform_args": VAE_T,
                               "dataset_info": {"t": {"data_dir": data_dir}}}}  # fmt: skip
    ds = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)[0].dataset
    stats = Counter()
    samples = list(itertools.islice(ds.iterate(0, 0, None, stats), 5))
    assert [s["data_indexes"]["data_indexes"] for s in samples] == [
        [0, 0, 0],
        [0, 0, 1],
        [0, 1, 0],
        [0, 1, 1],
        [0, 2, 0],
    ]
    for i, s in enumerate(samples):
        assert [(p["type"], p["loss"], p["enable_cfg"]) for p in s["sequence_plan"]] == [
            ("text", 0, 1),
            ("vae_image", 1, 0),
        ]
        text = tokenizer.decode(s["text_ids_list"][0])
        assert text == " " if i == 3 else text in (f"caption {i} a", f"caption {i} b")
    assert stats["empty_captions"] == 1
    # resume after [0, 1, 0] continues with [0, 1, 1]; random caption choice is reproducible
    again = next(ds.iterate(0, 0, {"epoch": 0, "last": [0, 1, 0]}, Counter()))
    assert again["data_indexes"]["data_indexes"] == [0, 1, 1]
    assert again["text_ids_list"] == samples[3]["text_ids_list"]


def test_unified_edit_dataset(tok, tmp_path):
    tokenizer, _, _ = tok
    rows = [{"image_list": [_img(10 * r + i) for i in range(4)],
             "instruction_list": [[f"step {i} v1", f"step {i} v2"] for i in range(3)]} for r in range(6)]  # fmt: skip
    data_dir, info = _parquet(tmp_path, rows, rows_per_group=3)
    config = {"unified_edit": {"dataset_names": ["e"], "num_used_data": [1], "weight": 1, "image_transform_args": VAE_T,
                               "vit_image_transform_args": VIT_T,
                               "dataset_info": {"e": {"data_dir": data_dir, "parquet_info_path": info}}}}  # fmt: skip
    ds = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)[0].dataset
    stats = Counter()
    samples = list(itertools.islice(ds.iterate(0, 0, None, stats), 6))
    assert not stats
    for s in samples:
        plan = s["sequence_plan"]
        assert (plan[0]["type"], plan[0]["loss"]) == ("vae_image", 0) and plan[1]["type"] == "vit_image"
        assert (plan[-1]["type"], plan[-1]["loss"]) == ("vae_image", 1)
        assert len(s["image_tensor_list"]) == sum(p["type"] != "text" for p in plan)
        assert len(s["text_ids_list"]) == sum(p["type"] == "text" for p in plan) >= 1


def test_vlm_dataset_and_elements(tok, tmp_path):
    tokenizer, _, _ = tok
    images = tmp_path / "images"
    images.mkdir()
    draw_image(random.Random(0), [("square", "blue")], (40, 56)).save(images / "a.png")
    lines = [
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                             {"from": "gpt", "value": "A blue square."}]},
        {"image": "a.png", "conversations": [{"from": "human", "value": "no placeholder"},
                                             {"from": "gpt", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "only a question"}]},
        {"image": "missing.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "y"}]},
    ]  # fmt: skip
    jsonl = tmp_path / "v.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    config = {"vlm_sft": {"dataset_names": ["v"], "num_used_data": [4], "weight": 1,
                          "image_transform_args": {"image_stride": 14, "max_image_size": 112, "min_image_size": 56},
                          "dataset_info": {"v": {"data_dir": str(images), "jsonl_path": str(jsonl)}}}}  # fmt: skip
    ds = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)[0].dataset
    stats = Counter()
    it = ds.iterate(0, 0, None, stats)
    first = next(it)
    second = next(it)  # the same good line again in the next epoch: all 3 bad lines were passed once
    assert first["data_indexes"]["data_indexes"] == second["data_indexes"]["data_indexes"]
    assert (
        stats["corrupt_rows"] >= 2 and stats["skipped_rows"] >= 1
    )  # placeholder mismatch + missing file; no loss
    assert stats["corrupt_rows"] == stats["corrupt_rows/vlm_sft"]
    plan = [(p["type"], p["loss"], p["enable_cfg"]) for p in first["sequence_plan"]]
    assert plan == [("vit_image", 0, 0), ("text", 0, 0), ("text", 1, 0)]
    assert first["text_ids_list"] == [encode(tokenizer, "What is it?"), encode(tokenizer, "A blue square.")]
    elems = conversation_elements([{"from": "human", "value": "a<image>b<image>"}], 1)
    assert [e["type"] for e in elems] == ["text", "image", "text"]


def _two_ref_sample(tok):
    tokenizer, _, _ = tok
    ids = encode(tokenizer, "put them together")
    img = torch.zeros(3, 32, 48)
    vit = torch.zeros(3, 28, 42)
    plan = []
    for _ in range(2):
        plan += [
            {
                "type": "vae_image",
                "enable_cfg": 1,
                "loss": 0,
                "special_token_loss": 0,
                "special_token_label": None,
            },
            {
                "type": "vit_image",
                "enable_cfg": 1,
                "loss": 0,
                "special_token_loss": 0,
                "special_token_label": None,
            },
        ]
    plan += [
        {"type": "text", "enable_cfg": 1, "loss": 0, "special_token_loss": 0, "special_token_label": None},
        {
            "type": "vae_image",
            "enable_cfg": 0,
            "loss": 1,
            "special_token_loss": 0,
            "special_token_label": None,
        },
    ]
    return {"sequence_plan": plan, "text_ids_list": [ids], "image_tensor_list": [img, vit, img, vit, img],
            "num_tokens": 0}, len(ids)  # fmt: skip


@pytest.mark.parametrize("drop", ["none", "text", "vae", "vit"])
def test_condition_dropout_position_rules(tok, drop):
    _, special, _ = tok
    probs = {"text_cond_dropout_prob": 0.0, "vae_cond_dropout_prob": 0.0, "vit_cond_dropout_prob": 0.0}
    if drop != "none":
        probs[f"{drop}_cond_dropout_prob"] = 1.0
    cfg = PackingConfig.from_special_ids(special, **probs)
    sample, n = _two_ref_sample(tok)
    batch = upstream_batch(pack_samples([sample], cfg, random.Random(0), np.random.RandomState(0)))
    pos = batch["packed_position_ids"]
    target_pos = pos[batch["mse_loss_indexes"]].unique().tolist()
    # docs/architecture.md: ref1-VAE 0, ref1-ViT 1, ref2-VAE 2, ref2-ViT 3, text 4..4+n+1, target 4+n+2
    if drop == "text":
        assert target_pos == [4]  # dropped text consumes nothing
        assert "packed_instruc_indexes" in batch and batch["packed_instruc_indexes"].numel() == 0
    else:
        assert target_pos == [4 + n + 2]
        assert batch["packed_instruc_indexes"].numel() == n + 2
    vae_tokens = 6 * (2 if drop != "vae" else 0) + 6  # 2x3 latent grid per image, target kept
    assert batch["packed_vae_token_indexes"].numel() == vae_tokens
    assert (batch["packed_vit_tokens"].shape[0] > 0) == (drop != "vit")
    assert batch["split_lens"][0] and sum(batch["split_lens"][0]) == batch["sequence_length"]


def test_mask_rules_small():
    # text(3, causal) | clean image(2, full) | noisy target(2, noise) | trailing text(2, causal)
    m = sample_attention_mask([3, 2, 2, 2], ["causal", "full", "noise", "causal"])
    assert m.shape == (9, 9) and m.dtype == torch.bool
    assert torch.equal(m[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    assert m[3:5, :5].all() and not m[3:5, 5:].any()
    assert m[5:7, :7].all() and not m[5:7, 7:].any()  # noise sees everything before + itself
    assert not m[7:, 5:7].any()  # nobody else sees noisy tokens
    assert m[7:, :5].all() and torch.equal(m[7:, 7:], torch.ones(2, 2, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="unknown attention mode"):
        sample_attention_mask([1], ["bidirectional"])
