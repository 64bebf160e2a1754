"""Synthetic packed batches in the data pipeline's format (for tests, benchmarks and smoke runs).

Each sample is s2i-shaped (spec training.md §1.3): for every reference a clean VAE image then a ViT
image, then the instruction ``[bos] ids [eos]``, then the noisy target. Optionally the instruction carries
a CE loss (like a VLM answer) so both losses are exercised. Content is random but a pure function of
``(seed, index)``: ``num_distinct`` > 0 repeats a handful of samples (for overfitting checks).

The layout rules (positions, splits, markers) follow model.md §5–6 exactly; tensors use upstream's key
names so ``Bagel.training_losses`` consumes them like real packs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from data.attention_masks import build_sample_mask

VIT_PATCH = 14
LATENT_STRIDE = 16


@dataclass
class SyntheticSpec:
    samples_per_pack: int = 2
    num_refs: int = 1
    image_size: int = 64  # VAE side (pixels, multiple of 16)
    vit_size: int = 56  # ViT side (pixels, multiple of 14)
    text_len: int = 12  # instruction ids without bos/eos
    text_loss: bool = False  # CE on the instruction
    num_distinct: int = 0  # 0 = every sample new; N = cycle over N samples
    vocab: int = 256  # ids are drawn from [0, vocab)
    max_latent_size: int = 64
    vit_max_patch_per_side: int = 70


def _grid_ids(h: int, w: int, side: int) -> torch.Tensor:
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return rows * side + cols


def _patchify_vit(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] -> [(H/14)(W/14), 14*14*3] in (patch_row, patch_col, channel) order."""
    c, h, w = img.shape
    p = VIT_PATCH
    x = img.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
    return x.reshape((h // p) * (w // p), p * p * c)


class _Pack:
    """Accumulates the token-level lists of one pack in sequence order."""

    def __init__(self, spec: SyntheticSpec, special: dict):
        self.spec = spec
        self.soi, self.eoi = special["start_of_image"], special["end_of_image"]
        self.curr = 0
        self.text_ids, self.text_idx, self.pos, self.instruc = [], [], [], []
        self.vae_idx, self.lat_pos, self.timesteps, self.mse_idx, self.vae_shapes, self.images = (
            [],
            [],
            [],
            [],
            [],
            [],
        )
        self.vit_idx, self.vit_pos, self.vit_tokens, self.vit_lens, self.vit_shapes = [], [], [], [], []
        self.labels, self.ce_idx, self.ce_w = [], [], []
        self.split_lens, self.attn_modes, self.sample_lens = [], [], []

    def token(self, tok: int, position: int) -> None:
        self.text_ids.append(tok)
        self.text_idx.append(self.curr)
        self.pos.append(position)
        self.curr += 1

    def vae_image(self, img: torch.Tensor, r: int, raw_t: float | None, splits: list, modes: list) -> None:
        """Clean condition (``raw_t`` None → -inf) or noisy target; all tokens at RoPE position r."""
        h, w = img.shape[1] // LATENT_STRIDE, img.shape[2] // LATENT_STRIDE
        n = h * w
        self.token(self.soi, r)
        self.vae_idx.extend(range(self.curr, self.curr + n))
        self.pos.extend([r] * n)
        self.lat_pos.append(_grid_ids(h, w, self.spec.max_latent_size))
        self.timesteps.extend([-math.inf if raw_t is None else raw_t] * n)
        if raw_t is not None:
            self.mse_idx.extend(range(self.curr, self.curr + n))
        self.curr += n
        self.token(self.eoi, r)
        self.vae_shapes.append((h, w))
        self.images.append(img)
        splits.append(n + 2)
        modes.append("full" if raw_t is None else "noise")

    def vit_image(self, img: torch.Tensor, r: int, splits: list, modes: list) -> None:
        hv, wv = img.shape[1] // VIT_PATCH, img.shape[2] // VIT_PATCH
        self.token(self.soi, r)
        self.vit_idx.extend(range(self.curr, self.curr + hv * wv))
        self.pos.extend([r] * (hv * wv))
        self.vit_pos.append(_grid_ids(hv, wv, self.spec.vit_max_patch_per_side))
        self.vit_tokens.append(_patchify_vit(img))
        self.vit_lens.append(hv * wv)
        self.vit_shapes.append((hv, wv))
        self.curr += hv * wv
        self.token(self.eoi, r)
        splits.append(hv * wv + 2)
        modes.append("full")


def make_pack(spec: SyntheticSpec, ids, seed: int, special: dict) -> dict:
    """One packed batch of the samples ``ids`` (content = function of ``(seed, id)``).

    ``special`` holds ``bos_token_id``, ``eos_token_id``, ``start_of_image``, ``end_of_image``.
    """
    bos, eos = special["bos_token_id"], special["eos_token_id"]
    pk = _Pack(spec, special)
    for sid in ids:
        key = sid % spec.num_distinct if spec.num_distinct > 0 else sid
        g = torch.Generator().manual_seed(seed * 1_000_003 + key)
        splits, modes, start, r = [], [], pk.curr, 0
        for _ in range(spec.num_refs):
            pk.vae_image(
                torch.rand(3, spec.image_size, spec.image_size, generator=g) * 2 - 1, r, None, splits, modes
            )
            r += 1
            pk.vit_image(torch.rand(3, spec.vit_size, spec.vit_size, generator=g) * 2 - 1, r, splits, modes)
            r += 1
        words = torch.randint(0, spec.vocab, (spec.text_len,), generator=g).tolist()
        seq = [bos, *words, eos]
        t0 = pk.curr
        for j, tok in enumerate(seq):
            pk.token(tok, r + j)
        pk.instruc.extend(range(t0, pk.curr))
        if spec.text_loss:  # labels = next tokens on the positions of [bos] + ids
            pk.labels.extend(words + [eos])
            pk.ce_idx.extend(range(t0, t0 + len(words) + 1))
            pk.ce_w.extend([1.0 / math.sqrt(len(words) + 1)] * (len(words) + 1))
        r += len(seq)
        splits.append(len(seq))
        modes.append("causal")
        target = torch.rand(3, spec.image_size, spec.image_size, generator=g) * 2 - 1
        pk.vae_image(target, r, float(torch.randn((), generator=g)), splits, modes)
        pk.split_lens.append(splits)
        pk.attn_modes.append(modes)
        pk.sample_lens.append(pk.curr - start)
    return _to_batch(pk, ids)


def _to_batch(pk: _Pack, ids) -> dict:
    hmax = max(i.shape[1] for i in pk.images)
    wmax = max(i.shape[2] for i in pk.images)
    padded = torch.zeros(len(pk.images), 3, hmax, wmax)
    for k, img in enumerate(pk.images):
        padded[k, :, : img.shape[1], : img.shape[2]] = img
    batch = {
        "sequence_length": pk.curr,
        "sample_lens": torch.tensor(pk.sample_lens),
        "packed_text_ids": torch.tensor(pk.text_ids),
        "packed_text_indexes": torch.tensor(pk.text_idx),
        "packed_position_ids": _positions(pk.curr, pk.text_idx, pk.vae_idx, pk.vit_idx, pk.pos),
        "packed_instruc_indexes": torch.tensor(pk.instruc, dtype=torch.long),
        "split_lens": pk.split_lens,
        "nested_attention_masks": [build_sample_mask(sl, am) for sl, am in zip(pk.split_lens, pk.attn_modes)],
        "attn_modes": pk.attn_modes,
        "padded_images": padded,
        "patchified_vae_latent_shapes": torch.tensor(pk.vae_shapes),
        "packed_latent_position_ids": torch.cat(pk.lat_pos),
        "packed_vae_token_indexes": torch.tensor(pk.vae_idx),
        "packed_timesteps": torch.tensor(pk.timesteps),
        "mse_loss_indexes": torch.tensor(pk.mse_idx),
        "batch_data_indexes": [{"synthetic": int(i)} for i in ids],
    }
    if pk.vit_idx:
        batch.update(
            packed_vit_tokens=torch.cat(pk.vit_tokens),
            packed_vit_position_ids=torch.cat(pk.vit_pos),
            packed_vit_token_indexes=torch.tensor(pk.vit_idx),
            vit_token_seqlens=torch.tensor(pk.vit_lens),
            patchified_vit_token_shapes=torch.tensor(pk.vit_shapes),
        )
    if pk.ce_idx:
        batch.update(
            packed_label_ids=torch.tensor(pk.labels),
            ce_loss_indexes=torch.tensor(pk.ce_idx),
            ce_loss_weights=torch.tensor(pk.ce_w),
        )
    return batch


def _positions(total: int, text_idx, vae_idx, vit_idx, pos_in_append_order) -> torch.Tensor:
    """Positions were appended token by token in sequence order; check and return them as a tensor."""
    if len(pos_in_append_order) != total or len(text_idx) + len(vae_idx) + len(vit_idx) != total:
        raise AssertionError("synthetic pack bookkeeping is inconsistent")
    return torch.tensor(pos_in_append_order, dtype=torch.long)


class SyntheticSource:
    """Endless packs for one rank. Micro-batch ``a`` of step ``s`` on rank ``r`` is global pack
    ``s·W·A + r·A + a`` (W ranks, A accumulation steps), so a run with W ranks sees the same global
    batches as a 1-rank run with ``W·A`` accumulation steps. State = number of consumed packs.
    """

    def __init__(
        self, spec: SyntheticSpec, seed: int, rank: int, world_size: int, special: dict, accum: int = 1
    ):
        self.spec, self.seed, self.rank, self.world, self.accum = spec, seed, rank, world_size, accum
        self.special = special
        self.consumed = 0

    def pack(self, global_index: int) -> dict:
        n = self.spec.samples_per_pack
        return make_pack(self.spec, range(global_index * n, (global_index + 1) * n), self.seed, self.special)

    def next_batch(self) -> dict:
        step, a = divmod(self.consumed, self.accum)
        b = self.pack(step * self.world * self.accum + self.rank * self.accum + a)
        self.consumed += 1
        return b

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "synthetic":
            raise ValueError(f"data status {state!r} is not from a synthetic source")
        self.consumed = int(state["consumed"])
