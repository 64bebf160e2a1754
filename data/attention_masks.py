"""Per-sample training attention masks (spec model.md §6.1).

A packed sample is a list of *splits* (consecutive token ranges), each with a mode:

* ``causal`` (text): lower-triangular inside the split, plus every earlier token of the sample.
* ``full`` (ViT image, clean VAE image): the whole split, plus every earlier token of the sample.
* ``noise`` (noisy VAE target): like ``full``, but afterwards its *columns* are hidden from every
  other row of the sample, so nothing (earlier or later) can look at noisy tokens; the split still
  sees itself and everything before it.

Samples never attend to each other, so the trainer runs one [len, len] mask per sample.
"""

from __future__ import annotations

import torch

ATTN_MODES = ("causal", "full", "noise")


def build_sample_mask(
    split_lens: list[int], attn_modes: list[str], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Boolean attention mask of one sample.

    Returns a bool tensor [L, L] with L = sum(split_lens); ``mask[q, k]`` is True when query token q may
    attend to key token k.
    """
    if len(split_lens) != len(attn_modes):
        raise ValueError(
            f"split_lens ({len(split_lens)}) and attn_modes ({len(attn_modes)}) differ in length"
        )
    for mode in attn_modes:
        if mode not in ATTN_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTN_MODES}")
    total = int(sum(split_lens))
    mask = torch.zeros((total, total), dtype=torch.bool, device=device)

    start = 0
    for length, mode in zip(split_lens, attn_modes):
        end = start + length
        mask[start:end, :start] = True  # every split sees all earlier tokens of the sample
        if mode == "causal":
            mask[start:end, start:end] = torch.ones((length, length), dtype=torch.bool, device=device).tril()
        else:
            mask[start:end, start:end] = True
        start = end

    # Second pass: hide noisy tokens from everybody but themselves (done after the first pass so that
    # later splits, which saw them through "all earlier tokens", lose them again).
    start = 0
    for length, mode in zip(split_lens, attn_modes):
        end = start + length
        if mode == "noise":
            mask[:, start:end] = False
            mask[start:end, start:end] = True
        start = end
    return mask


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bool mask -> additive float mask (0 where allowed, -inf where blocked), as SDPA expects."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
