"""The sequence layout: builder rules, and training and inference building the same sequence."""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data.data_config import build_groups
from data.parquet_io import make_parquet_info
from data.sequence_packing import PackingConfig, pack_samples
from inference import trace
from inference.pipeline import SconePipeline
from modeling.sequence import (
    PackedSequence,
    SequenceBuilder,
    SequenceGeometry,
    flattened_position_ids,
    patchify,
    sample_attention_mask,
    unpatchify,
)

SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "start_of_image": 3, "end_of_image": 4}


def test_builder_layout_of_one_sample():
    b = SequenceBuilder(SPECIAL, SequenceGeometry(max_latent_size=8))
    b.start_sample(rope=5)
    b.add_vae_image(torch.zeros(3, 32, 16))  # 2x1 latent grid
    b.skip_image()  # a dropped ViT view keeps its position
    b.add_text([7, 8], loss=True)
    b.add_vae_image(grid=(1, 2), noisy=True, timestep=0.5)
    seq = b.end_sample({"id": 0}).build()
    assert seq.length == 4 + 4 + 4 and seq.split_lens == [[4, 4, 4]]
    assert seq.attn_modes == [["full", "causal", "noise"]]
    assert seq.position_ids.tolist() == [5] * 4 + [7, 8, 9, 10] + [11] * 4
    assert seq.text_ids.tolist() == [3, 4, 1, 7, 8, 2, 3, 4]
    assert seq.vae_indexes.tolist() == [1, 2, 9, 10] and seq.mse_indexes.tolist() == [9, 10]
    assert seq.vae_position_ids.tolist() == [0, 8, 0, 1]
    assert seq.ce_indexes.tolist() == [4, 5, 6] and seq.label_ids.tolist() == [7, 8, 2]
    assert torch.isinf(seq.vae_timesteps[:2]).all() and seq.vae_timesteps[2:].tolist() == [0.5, 0.5]
    assert seq.vae_images.shape == (1, 3, 32, 16) and seq.meta["data_indexes"] == [{"id": 0}]


def test_model_refuses_vae_slots_without_latents(pipe):
    b = SequenceBuilder(pipe.special, pipe.config.sequence_geometry()).start_sample()
    b.add_vae_image(grid=(2, 2))
    with pytest.raises(ValueError, match="no latents"):
        pipe.model.embed(b.end_sample().build())


def test_builder_misuse_is_a_clear_error():
    b = SequenceBuilder(SPECIAL, SequenceGeometry())
    with pytest.raises(RuntimeError, match="start_sample"):
        b.add_text([1])
    b.start_sample()
    with pytest.raises(RuntimeError, match="not ended"):
        b.start_sample()
    with pytest.raises(RuntimeError, match="not ended"):
        b.build()
    with pytest.raises(ValueError, match="image or its latent grid"):
        b.add_vae_image()


def test_mask_rules():
    m = sample_attention_mask([3, 2, 2, 2], ["causal", "full", "noise", "causal"])
    assert torch.equal(m[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    assert m[5:7, :7].all() and not m[:5, 5:7].any() and not m[7:, 5:7].any()


def test_patchify_round_trip_and_position_ids():
    x = torch.randn(16, 6, 4)
    tokens = patchify(x, 2)
    assert tokens.shape == (6, 64)
    assert torch.equal(unpatchify(tokens, 3, 2, 2, 16), x)
    assert flattened_position_ids(2, 3, 10).tolist() == [0, 1, 2, 10, 11, 12]


def _png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _inference_view(steps, query: PackedSequence, kv_len: int, n: int) -> dict:
    """Token ids, positions, 2-D ids and visibility of the full context + its denoising query, as one
    sequence: each cached step sees everything before it (and itself, causally for text)."""
    ids = torch.full((n,), -1, dtype=torch.long)
    pos = torch.full((n,), -1, dtype=torch.long)
    visible = torch.zeros(n, n, dtype=torch.bool)
    vit_pos, vae_pos, vae_idx = [], [], []
    blocks = [(s.kv_len, s.seq) for s in steps] + [(kv_len, query)]
    for start, seq in blocks:
        end = start + seq.length
        ids[seq.text_indexes + start] = seq.text_ids
        pos[start:end] = seq.position_ids
        visible[start:end] = torch.nn.functional.pad(seq.attention_masks()[0], (start, n - end))
        visible[start:end, :start] = True
        vit_pos.append(seq.vit_position_ids)
        vae_pos.append(seq.vae_position_ids)
        vae_idx.append(seq.vae_indexes + start)
    return dict(ids=ids, pos=pos, visible=visible, vit_pos=torch.cat(vit_pos), vae_pos=torch.cat(vae_pos),
                vae_idx=torch.cat(vae_idx))  # fmt: skip


def test_training_and_inference_build_the_same_sequence(pipe, tmp_path):
    """An s2i sample with two clean references, built by the data pipeline and by the inference contexts
    (prefill steps of the "full" context, then the denoising query)."""
    tok, special = pipe.tokenizer, pipe.special
    instruction = "Put the cat from image 1 on the sofa from image 2."
    refs, target = [_png(0), _png(1)], _png(2)
    root = tmp_path / "data"
    (root / "parquet").mkdir(parents=True)
    path = str(root / "parquet" / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist([{"image": [*refs, target], "instruction": instruction}]), path)
    (root / "info.json").write_text(json.dumps(make_parquet_info([path])))
    config = {
        "s2i": {
            "dataset_names": ["t"],
            "num_used_data": [1],
            "image_transform_args": {"image_stride": 16, "max_image_size": 64, "min_image_size": 32},
            "vit_image_transform_args": {"image_stride": 14, "max_image_size": 56, "min_image_size": 28},
            "weight": 1,
            "dataset_info": {"t": {"data_dir": str(root / "parquet"), "parquet_info_path": str(root / "info.json")}},
        }
    }  # fmt: skip
    (group,) = build_groups(config, tok, rank=0, world_size=1, data_seed=0, data_root=None)
    sample = next(group.dataset.iterate(0, 0, None, Counter()))
    cfg = pipe.config
    packing = PackingConfig.from_special_ids(
        special,
        text_cond_dropout_prob=0.0,
        vit_cond_dropout_prob=0.0,
        vae_cond_dropout_prob=0.0,
        vit_patch_size=cfg.vit.patch_size,
        max_num_patch_per_side=cfg.vit_max_num_patch_per_side,
        vae_image_downsample=cfg.latent_downsample,
        max_latent_size=cfg.max_latent_size,
        interpolate_pos=cfg.interpolate_pos,
    )
    train_seq = pack_samples([sample], packing, random.Random(0), np.random.RandomState(0))

    small = SconePipeline(pipe.loaded, vae_transform=(64, 32, 16), vit_transform=(56, 28, 14))
    images = [Image.open(io.BytesIO(r)) for r in refs]
    with trace.recording() as rec:
        # text scale 1: no CFG branch, so the query holds the "full" job alone
        small.generate(
            images=images,
            prompt=instruction,
            seed=0,
            num_timesteps=2,
            height=64,
            width=64,
            cfg_text_scale=1.0,
        )
    steps = [s for name, s in rec.context_steps if name == "full"]
    assert [s.kind for s in steps] == ["vae", "vit", "vae", "vit", "text"]
    kv_len, rope = rec.query["full"]
    first = rec.query_seq
    assert len(first.sample_lens) == 1
    n = train_seq.length
    view = _inference_view(steps, first, kv_len, n)
    assert kv_len + first.length == n and first.position_ids[0] == rope
    full_ids = torch.full((n,), -1, dtype=torch.long)
    full_ids[train_seq.text_indexes] = train_seq.text_ids
    assert torch.equal(view["ids"], full_ids)
    assert torch.equal(view["pos"], train_seq.position_ids)
    assert torch.equal(view["visible"], train_seq.attention_masks()[0])
    assert torch.equal(view["vit_pos"], train_seq.vit_position_ids)
    assert torch.equal(view["vae_pos"][: len(train_seq.vae_position_ids)], train_seq.vae_position_ids)
    assert torch.equal(view["vae_idx"], train_seq.vae_indexes)
    assert torch.equal(first.mse_indexes + kv_len, train_seq.mse_indexes)
