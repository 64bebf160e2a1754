"""Translation between our ``PackedSequence`` and upstream's packed-batch dict (the fixture's format).

Only tests need upstream's key names: the golden fixture was recorded from upstream's data pipeline and
training forward, so parity is checked by translating here, not in the model.
"""

from __future__ import annotations

import torch

from modeling.sequence import PackedSequence

# upstream key -> PackedSequence field, for the tensors that are the same on both sides
SAME = {
    "packed_text_ids": "text_ids",
    "packed_text_indexes": "text_indexes",
    "packed_position_ids": "position_ids",
    "packed_instruc_indexes": "instruction_indexes",
    "packed_vae_token_indexes": "vae_indexes",
    "packed_vit_token_indexes": "vit_indexes",
    "packed_latent_position_ids": "vae_position_ids",
    "packed_vit_position_ids": "vit_position_ids",
    "mse_loss_indexes": "mse_indexes",
    "ce_loss_indexes": "ce_indexes",
    "packed_label_ids": "label_ids",
    "ce_loss_weights": "ce_weights",
    "packed_timesteps": "vae_timesteps",
}


def upstream_batch(seq: PackedSequence) -> dict:
    """The upstream-named view of a sequence (the keys the fixture stores)."""
    out = {k: getattr(seq, f) for k, f in SAME.items()}
    out.update(
        sequence_length=seq.length,
        sample_lens=list(seq.sample_lens),
        split_lens=seq.split_lens,
        attn_modes=seq.attn_modes,
        nested_attention_masks=seq.attention_masks(),
        patchified_vae_latent_shapes=list(seq.vae_grids),
        patchified_vit_token_shapes=list(seq.vit_grids),
        vit_token_seqlens=torch.tensor(seq.vit_seqlens, dtype=torch.long),
        packed_vit_tokens=seq.vit_pixels,
        padded_images=seq.vae_images,
        batch_data_indexes=seq.meta.get("data_indexes", []),
    )
    return out


def sequence_from_fixture(cases: dict, cases_json: dict) -> PackedSequence:
    """The fixture's recorded training batch (``train.batch.*``) as a PackedSequence."""
    b = {k[len("train.batch.") :]: v for k, v in cases.items() if k.startswith("train.batch.")}
    plans = cases_json["train"]["samples_sequence_plan_and_splits"]
    fields = {f: b[k] for k, f in SAME.items()}
    return PackedSequence(
        sample_lens=b["sample_lens"].tolist(),
        split_lens=[p["split_lens"] for p in plans],
        attn_modes=[p["attn_modes"] for p in plans],
        vit_pixels=(b["packed_vit_tokens_u8"].float() / 255.0 - 0.5) / 0.5,
        vit_grids=[tuple(s) for s in b["patchified_vit_token_shapes"].tolist()],
        vae_images=(b["padded_images_u8"].float() / 255.0 - 0.5) / 0.5,
        vae_grids=[tuple(s) for s in b["patchified_vae_latent_shapes"].tolist()],
        **fields,
    )
