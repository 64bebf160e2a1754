"""Scone's understanding bridge: the semantic mask (docs/architecture.md). Training only.

After decoder layer ``semantic_layer`` (8), every reference image's ViT tokens are compared with the
sample's instruction tokens (mean cosine similarity of the hidden states). The similarity map is
resized to the reference's VAE latent grid; reference tokens (ViT and VAE) below ``threshold`` are then
hidden from the noisy target tokens in layers ``semantic_mask_layers`` (9..16). No other row changes.

Upstream defects fixed here: shapes are looked up per image run, so a skipped sample
cannot shift later samples; a batch without MSE rows is fine; no torch.distributed needed; the pairing
works for any layout where a reference's clean VAE image precedes its ViT image; skipped samples are
counted and returned, not printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def split_runs(positions: torch.Tensor) -> list[torch.Tensor]:
    """Split sorted positions [n] into maximal runs of consecutive integers (one run per image)."""
    if positions.numel() == 0:
        return []
    breaks = torch.nonzero(positions[1:] - positions[:-1] != 1).flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


@dataclass
class SemanticMaskResult:
    mask: torch.Tensor  # bf16 [N]: 0 keep / -inf hidden (as upstream builds it)
    target_rows: torch.Tensor  # bool [N]: rows that receive the bias (noisy target tokens)
    sim_vit: list[torch.Tensor] = field(default_factory=list)  # per reference: [h*w] ViT similarities
    sim_vae: list[torch.Tensor] = field(default_factory=list)  # per reference: [1, 1, H, W] resized map
    skipped_samples: int = 0

    @property
    def masked_ratio(self) -> float:
        return float(torch.isinf(self.mask.float()).float().mean())


def compute_semantic_mask(
    hidden: torch.Tensor,
    sample_lens: list[int],
    instruc_indexes: torch.Tensor,
    vit_indexes: torch.Tensor,
    vae_indexes: torch.Tensor,
    vit_shapes: list[tuple[int, int]],
    vae_shapes: list[tuple[int, int]],
    mse_indexes: torch.Tensor | None,
    threshold: float = 0.88,
) -> SemanticMaskResult:
    """hidden [N, H] = output of the similarity layer; index tensors are packed sequence positions.

    ``vit_shapes`` / ``vae_shapes`` list the (h, w) token grid of every ViT / VAE image in pack order.
    """
    n = hidden.shape[0]
    dev = hidden.device
    # The buffer is bf16 and the threshold test runs in bf16, exactly as upstream (0.88 -> 0.87890625).
    buf = torch.ones(n, dtype=torch.bfloat16, device=dev)
    target = torch.zeros(n, dtype=torch.bool, device=dev)
    if mse_indexes is not None and mse_indexes.numel():
        target[mse_indexes.to(dev)] = True
    vit_runs = split_runs(vit_indexes.to(dev))
    vae_runs = split_runs(vae_indexes.to(dev))
    if len(vit_runs) != len(vit_shapes) or len(vae_runs) != len(vae_shapes):
        raise ValueError(
            f"image runs do not match the recorded shapes: {len(vit_runs)} ViT runs vs {len(vit_shapes)} shapes, "
            f"{len(vae_runs)} VAE runs vs {len(vae_shapes)} shapes"
        )
    result = SemanticMaskResult(mask=buf, target_rows=target)
    text_pos = instruc_indexes.to(dev)
    start = 0
    for length in sample_lens:
        end = start + length

        def inside(p, s=start, e=end):
            return (p >= s) & (p < e)

        t_pos = text_pos[inside(text_pos)]
        s_vit = [(i, r) for i, r in enumerate(vit_runs) if start <= int(r[0]) < end]
        s_vae = [(i, r) for i, r in enumerate(vae_runs) if start <= int(r[0]) < end]
        if t_pos.numel() == 0 or not s_vit or not s_vae:
            result.skipped_samples += 1
            start = end
            continue
        t = hidden[t_pos]
        t = t / t.norm(dim=-1, keepdim=True)
        for vi, vrun in s_vit:
            v = hidden[vrun]
            v = v / v.norm(dim=-1, keepdim=True)
            sim = (v @ t.T).mean(dim=1)  # [Nv]
            buf[vrun] = sim.to(buf.dtype)
            result.sim_vit.append(sim.detach())
            # the reference's clean VAE image is the last clean VAE run before this ViT run
            partner = None
            for ai, arun in s_vae:
                if int(arun[0]) < int(vrun[0]) and not bool(target[arun].any()):
                    partner = (ai, arun)
            if partner is None:
                continue
            ai, arun = partner
            hv, wv = vit_shapes[vi]
            ha, wa = vae_shapes[ai]
            grid = sim.reshape(1, 1, hv, wv).float()
            resized = F.interpolate(grid, size=(ha, wa), mode="bilinear", align_corners=False)
            buf[arun] = resized.flatten().to(buf.dtype)
            result.sim_vae.append(resized.detach())
        start = end
    keep = buf >= torch.tensor(threshold, dtype=torch.bfloat16, device=dev)
    result.mask = torch.where(keep, 0.0, float("-inf")).to(torch.bfloat16)
    return result
