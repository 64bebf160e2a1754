"""2-D position ids of the tokens of one image (spec model.md §5.4).

An image of ``h x w`` tokens (ViT patches of 14 px, or latent tokens of 16 px) is scanned row-major.
Each token gets one id into a table of side ``G`` (``max_per_side``: 70 for the ViT, ``max_latent_size``
for latents); the same ids index SigLIP's learned position embedding and the LLM-side sin-cos tables.
"""

from __future__ import annotations

import torch


def flattened_position_ids(h: int, w: int, max_per_side: int, interpolate: bool = False) -> torch.Tensor:
    """Position ids of an ``h x w`` token grid, row-major. Returns LongTensor [h*w].

    ``interpolate=False`` (the released setting, "extrapolate"): id = row * G + col, which needs
    ``h, w <= G``. ``interpolate=True``: fractional coordinates ``arange(0, 1 - 1e-6, 1/h)`` are bucketed
    against the boundaries ``arange(1/G, 1, 1/G)`` (``torch.bucketize(..., right=True)``), so any grid
    size is squeezed onto the G x G table.
    """
    if h <= 0 or w <= 0 or max_per_side <= 0:
        raise ValueError(f"grid sizes must be positive, got h={h}, w={w}, max_per_side={max_per_side}")
    if interpolate:
        # float32 aranges exactly as upstream computes them: the bucket edges depend on rounding.
        boundaries = torch.arange(1 / max_per_side, 1.0, 1 / max_per_side, dtype=torch.float32)
        frac_h = torch.arange(0, 1 - 1e-6, 1 / h, dtype=torch.float32)
        frac_w = torch.arange(0, 1 - 1e-6, 1 / w, dtype=torch.float32)
        rows = torch.bucketize(frac_h, boundaries, right=True)
        cols = torch.bucketize(frac_w, boundaries, right=True)
    else:
        if h > max_per_side or w > max_per_side:
            raise ValueError(
                f"grid {h}x{w} exceeds the position table side {max_per_side} (interpolate=False "
                "cannot extrapolate past the table; resize the image or use interpolate=True)"
            )
        rows = torch.arange(h)
        cols = torch.arange(w)
    return (rows[:, None] * max_per_side + cols[None, :]).flatten().long()
