"""Pack samples into one token sequence and build the model's batch tensors
(spec training.md §4.1, model.md §5 and §6.1).

Token layout of one sample (``curr`` = global index in the pack)::

    text       [bos] ids [eos]                       causal split, one RoPE position per token
    vit_image  [soi] (h/14)(w/14) ViT tokens [eoi]   full split, one shared RoPE position, then +1
    vae_image  [soi] (H/16)(W/16) latent slots [eoi] full split (clean, +1) or noise split (target, +0)

Condition dropout (``enable_cfg == 1`` items only): a dropped text consumes nothing; a dropped image
still advances the RoPE counter by one. Random draws follow upstream's order exactly: one
``py_rng.random()`` per droppable item, one ``np_rng.randn()`` per target image (its raw timestep;
clean images get ``-inf``), so seeding ``random.Random(s)`` / ``np.random.RandomState(s)`` reproduces
upstream runs seeded with ``random.seed(s)`` / ``np.random.seed(s)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from data.attention_masks import build_sample_mask


@dataclass
class PackingConfig:
    """Token ids and geometry used while packing (upstream's DataConfig + special tokens)."""

    bos_token_id: int
    eos_token_id: int
    start_of_image: int
    end_of_image: int
    text_cond_dropout_prob: float = 0.1
    vit_cond_dropout_prob: float = 0.3
    vae_cond_dropout_prob: float = 0.3
    vit_patch_size: int = 14
    max_num_patch_per_side: int = 70
    vae_image_downsample: int = 16
    max_latent_size: int = 32  # Scone's scripts pass 64
    interpolate_pos: bool = False

    @classmethod
    def from_special_ids(cls, special_ids, **kwargs) -> PackingConfig:
        """``special_ids``: modeling.tokenizer.SpecialTokenIds or a dict with the four ids."""
        ids = special_ids if isinstance(special_ids, dict) else special_ids.as_dict()
        return cls(**ids, **kwargs)


def sample_length(sample: dict) -> int:
    """Tokens a sample occupies in a pack: its content plus 2 per plan item (markers / bos+eos)."""
    return sample["num_tokens"] + 2 * len(sample["sequence_plan"])


def patchify(image: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[3, H, W] -> ([(H/p)(W/p), p*p*3] in (patch_row, patch_col, channel) order, (H/p, W/p))."""
    c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
    patches = image.reshape(c, h // p, p, w // p, p).permute(1, 3, 2, 4, 0)
    return patches.reshape(-1, p * p * c), (h // p, w // p)


def flattened_position_ids(height: int, width: int, patch: int, side: int, interpolate: bool) -> torch.Tensor:
    """2-D position ids (row * side + col) of an image's patches, row-major (model.md §5.4). Shape [h*w]."""
    nh, nw = height // patch, width // patch
    if not interpolate:
        return (torch.arange(nh)[:, None] * side + torch.arange(nw)).flatten()
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    rows = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / nh), boundaries, right=True)
    cols = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / nw), boundaries, right=True)
    return (rows[:, None] * side + cols).flatten()


def len2weight(n: int) -> float:
    """CE weight of a text segment of n tokens (upstream's 'square' reduction): 1/sqrt(n)."""
    return 0.0 if n == 0 else 1.0 / (n**0.5)


def new_pack_state() -> dict:
    keys = [
        "sample_lens", "packed_position_ids", "split_lens", "attn_modes", "nested_attention_masks",
        "packed_text_ids", "packed_text_indexes", "packed_label_ids", "ce_loss_indexes", "ce_loss_weights",
        "vae_image_tensors", "packed_latent_position_ids", "vae_latent_shapes", "packed_vae_token_indexes",
        "packed_timesteps", "mse_loss_indexes", "packed_vit_tokens", "vit_token_seqlens",
        "packed_vit_position_ids", "packed_vit_token_indexes", "packed_instruc_indexes",
        "patchified_vit_token_shapes", "batch_data_indexes",
    ]  # fmt: skip
    state: dict = {k: [] for k in keys}
    state["curr"] = 0
    return state


def pack_sample(
    sample: dict, state: dict, cfg: PackingConfig, py_rng: random.Random, np_rng: np.random.RandomState
) -> dict:
    """Append one sample to the pack ``state`` (in place; the sample itself is not modified)."""
    texts = iter(sample["text_ids_list"])
    images = iter(sample["image_tensor_list"])
    split_lens: list[int] = []
    attn_modes: list[str] = []
    curr = state["curr"]
    rope = 0
    sample_len = 0
    split_len = 0
    timestep = float("-inf")

    def add_marker(token: int, item: dict) -> None:
        nonlocal curr, split_len
        state["packed_text_ids"].append(token)
        state["packed_text_indexes"].append(curr)
        if item["special_token_loss"] == 1:
            state["ce_loss_indexes"].append(curr)
            state["ce_loss_weights"].append(1.0)
            state["packed_label_ids"].append(item["special_token_label"])
        curr += 1
        split_len += 1

    for item in sample["sequence_plan"]:
        split_start = item.get("split_start", True)
        if split_start:
            split_len = 0
        kind = item["type"]

        if kind == "text":
            ids = next(texts)
            if item["enable_cfg"] == 1 and py_rng.random() < cfg.text_cond_dropout_prob:
                continue  # a dropped text takes no position
            shifted = [cfg.bos_token_id, *ids]
            span = range(curr, curr + len(shifted))
            state["packed_text_ids"].extend(shifted)
            state["packed_text_indexes"].extend(span)
            state["packed_instruc_indexes"].extend(span)  # Scone: all text incl. bos/eos
            if item["loss"] == 1:
                state["ce_loss_indexes"].extend(span)
                state["ce_loss_weights"].extend([len2weight(len(shifted))] * len(shifted))
                state["packed_label_ids"].extend([*ids, cfg.eos_token_id])
            curr += len(shifted)
            split_len += len(shifted)
            state["packed_instruc_indexes"].append(curr)
            add_marker(cfg.eos_token_id, item)
            attn_modes.append("causal")
            state["packed_position_ids"].extend(range(rope, rope + split_len))
            rope += split_len

        elif kind == "vit_image":
            image = next(images)
            if item["enable_cfg"] == 1 and py_rng.random() < cfg.vit_cond_dropout_prob:
                rope += 1  # a dropped image keeps its position
                continue
            add_marker(cfg.start_of_image, {"special_token_loss": 0})
            tokens, shape = patchify(image, cfg.vit_patch_size)
            n = tokens.shape[0]
            state["patchified_vit_token_shapes"].append(shape)
            state["packed_vit_token_indexes"].extend(range(curr, curr + n))
            state["packed_vit_tokens"].append(tokens)
            state["vit_token_seqlens"].append(n)
            state["packed_vit_position_ids"].append(
                flattened_position_ids(
                    image.shape[1],
                    image.shape[2],
                    cfg.vit_patch_size,
                    cfg.max_num_patch_per_side,
                    cfg.interpolate_pos,
                )
            )
            curr += n
            split_len += n
            add_marker(cfg.end_of_image, item)
            attn_modes.append("full")
            state["packed_position_ids"].extend([rope] * split_len)
            rope += 1

        elif kind == "vae_image":
            image = next(images)
            if item["enable_cfg"] == 1 and py_rng.random() < cfg.vae_cond_dropout_prob:
                rope += 1
                continue
            add_marker(cfg.start_of_image, {"special_token_loss": 0})
            state["vae_image_tensors"].append(image)
            down = cfg.vae_image_downsample
            state["packed_latent_position_ids"].append(
                flattened_position_ids(
                    image.shape[1], image.shape[2], down, cfg.max_latent_size, cfg.interpolate_pos
                )
            )
            h, w = image.shape[1] // down, image.shape[2] // down
            state["vae_latent_shapes"].append((h, w))
            n = h * w
            state["packed_vae_token_indexes"].extend(range(curr, curr + n))
            if item["loss"] == 1:
                state["mse_loss_indexes"].extend(range(curr, curr + n))
                if split_start:  # all frames of one split share a timestep (video); one draw per image
                    timestep = float(np_rng.randn())
            else:
                timestep = float("-inf")
            state["packed_timesteps"].extend([timestep] * n)
            curr += n
            split_len += n
            add_marker(cfg.end_of_image, item)
            if split_start:
                noisy = item["loss"] == 1 and "frame_delta" not in item
                attn_modes.append("noise" if noisy else "full")
            state["packed_position_ids"].extend([rope] * (n + 2))
            if "frame_delta" in item:
                rope += item["frame_delta"]
            elif item["loss"] == 0:
                rope += 1
        else:
            raise ValueError(f"unknown sequence plan item type {kind!r}")

        if item.get("split_end", True):
            split_lens.append(split_len)
            sample_len += split_len

    state["curr"] = curr
    state["sample_lens"].append(sample_len)
    state["split_lens"].append(split_lens)
    state["attn_modes"].append(attn_modes)
    state["nested_attention_masks"].append(build_sample_mask(split_lens, attn_modes))
    if "data_indexes" in sample:
        state["batch_data_indexes"].append(sample["data_indexes"])
    return state


def to_tensor(state: dict) -> dict:
    """Pack state -> batch dict with upstream's key names (training.md §4.1).

    Shapes (N = tokens in the pack): packed_text_ids/indexes [T], packed_position_ids [N],
    padded_images [n_vae, 3, Hmax, Wmax] (zero padded), packed_vae_token_indexes / packed_timesteps /
    packed_latent_position_ids [V], packed_vit_tokens [P, 14*14*3], packed_vit_* [P],
    nested_attention_masks: list of bool [len_i, len_i]. Optional groups appear only when present.
    """
    data = {
        "sequence_length": int(sum(state["sample_lens"])),
        "sample_lens": list(state["sample_lens"]),
        "packed_text_ids": torch.tensor(state["packed_text_ids"], dtype=torch.long),
        "packed_text_indexes": torch.tensor(state["packed_text_indexes"], dtype=torch.long),
        "packed_position_ids": torch.tensor(state["packed_position_ids"], dtype=torch.long),
        "packed_instruc_indexes": torch.tensor(state["packed_instruc_indexes"], dtype=torch.long),
        "split_lens": [list(s) for s in state["split_lens"]],
        "attn_modes": [list(m) for m in state["attn_modes"]],
        "nested_attention_masks": list(state["nested_attention_masks"]),
        "batch_data_indexes": list(state["batch_data_indexes"]),
    }
    if state["vae_image_tensors"]:
        images = state["vae_image_tensors"]
        max_h = max(t.shape[1] for t in images)
        max_w = max(t.shape[2] for t in images)
        padded = torch.zeros((len(images), images[0].shape[0], max_h, max_w), dtype=images[0].dtype)
        for i, t in enumerate(images):
            padded[i, :, : t.shape[1], : t.shape[2]] = t
        data["padded_images"] = padded
        data["patchified_vae_latent_shapes"] = list(state["vae_latent_shapes"])
        data["packed_latent_position_ids"] = torch.cat(state["packed_latent_position_ids"], dim=0)
        data["packed_vae_token_indexes"] = torch.tensor(state["packed_vae_token_indexes"], dtype=torch.long)
    if state["packed_vit_tokens"]:
        data["packed_vit_tokens"] = torch.cat(state["packed_vit_tokens"], dim=0)
        data["packed_vit_position_ids"] = torch.cat(state["packed_vit_position_ids"], dim=0)
        data["packed_vit_token_indexes"] = torch.tensor(state["packed_vit_token_indexes"], dtype=torch.long)
        data["vit_token_seqlens"] = torch.tensor(state["vit_token_seqlens"], dtype=torch.long)
        data["patchified_vit_token_shapes"] = list(state["patchified_vit_token_shapes"])
    if state["packed_timesteps"]:
        data["packed_timesteps"] = torch.tensor(state["packed_timesteps"], dtype=torch.float32)
        data["mse_loss_indexes"] = torch.tensor(state["mse_loss_indexes"], dtype=torch.long)
    if state["packed_label_ids"]:
        data["packed_label_ids"] = torch.tensor(state["packed_label_ids"], dtype=torch.long)
        data["ce_loss_indexes"] = torch.tensor(state["ce_loss_indexes"], dtype=torch.long)
        data["ce_loss_weights"] = torch.tensor(state["ce_loss_weights"], dtype=torch.float32)
    return data


def pack_samples(
    samples: list[dict],
    cfg: PackingConfig,
    py_rng: random.Random | None = None,
    np_rng: np.random.RandomState | None = None,
) -> dict:
    """Pack the given samples in the listed order into one batch (deterministic, no budget logic)."""
    py_rng = py_rng if py_rng is not None else random.Random(0)
    np_rng = np_rng if np_rng is not None else np.random.RandomState(0)
    state = new_pack_state()
    for sample in samples:
        pack_sample(sample, state, cfg, py_rng, np_rng)
    return to_tensor(state)


def flex_split_lens(batch: dict, max_num_tokens: int) -> tuple[list[int], list[str], list[int]]:
    """Flattened ``(split_lens, attn_modes, sample_lens)`` padded to ``max_num_tokens`` with a causal pad
    split, as upstream's ``use_flex`` path expects."""
    pad = max_num_tokens - batch["sequence_length"]
    if pad < 0:
        raise ValueError(f"pack of {batch['sequence_length']} tokens exceeds max_num_tokens {max_num_tokens}")
    split_lens = [n for s in batch["split_lens"] for n in s] + [pad]
    attn_modes = [m for s in batch["attn_modes"] for m in s] + ["causal"]
    return split_lens, attn_modes, [*batch["sample_lens"], pad]
