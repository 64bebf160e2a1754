"""The training objective in one place: rectified-flow matching on latent tokens plus next-token CE.

For each pack (docs/architecture.md §5):

1. noise level of every noisy image: ``t = shift(sigmoid(z))`` from the data stream's raw draw z ~ N(0, 1)
   (clean images carry ``z = -inf``, so t = 0), with ``shift(t) = s t / (1 + (s - 1) t)``;
2. clean latent tokens x0 (the VAE posterior sample, cropped per image, patchified), noise eps ~ N(0, I),
   the model input ``x_t = (1 - t) x0 + t eps`` and the velocity target ``eps - x0``;
3. one ``Bagel.forward``; per-element squared error on the noisy slots, per-token CE on the text targets;
4. ``pack_loss``: sums over this pack normalised by the token counts of the whole global batch, so that the
   gradient averaged by data parallelism is that of the global per-token mean.

With data parallelism every rank must give every trainable parameter a gradient at every step: FSDP2
reduce-scatters only the gradients that exist, so a rank whose pack has no CE token (no ``lm_head``
gradient), no ViT image or no VAE image would send a buffer of another size than its peers and the job
would die. ``participation_sample`` is a 3-split sample (one ViT patch, a two-token text with CE, one
noisy latent slot) appended to every pack under FSDP; its loss terms enter with weight zero, so each
parameter gets a (zero) gradient through its own expert, head and embedding. That costs about ten tokens
and a one-patch ViT forward per pack, far less than a dummy forward per missing modality; it changes no
number of the real samples (samples never attend to each other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from modeling.bagel import Bagel, BagelOutput
from modeling.flow import noise_levels
from modeling.kv_cache import MaskedAttention
from modeling.sequence import PackedSequence, SequenceBuilder, clean_latent_tokens, concat_sequences


def participation_sample(special, geometry) -> PackedSequence:
    """A tiny sample that routes a token through every trainable part of the model (see the module
    docstring): a 14x14 black ViT image, ``<|im_start|> <|im_end|> <|im_end|>`` with CE (not an
    instruction, so the bridge skips it), and a 1x1 noisy latent grid."""
    b = SequenceBuilder(special, geometry).start_sample()
    b.add_vit_image(torch.zeros(3, geometry.vit_patch_size, geometry.vit_patch_size))
    b.add_text([b.markers.eos_token_id], loss=True, instruction=False)
    b.add_vae_image(grid=(1, 1), noisy=True, timestep=0.0)
    return b.end_sample().build()


@dataclass
class LossTerms:
    mse: torch.Tensor | None  # [M, p*p*C] per-element squared velocity errors on the noisy slots
    ce: torch.Tensor | None  # [C] per-token cross entropy
    output: BagelOutput
    stats: dict = field(default_factory=dict)
    zero: torch.Tensor | None = None  # 0 x the participation sample's losses: gradients without weight


def flow_matching_losses(
    model: Bagel,
    seq: PackedSequence,
    latent: torch.Tensor | None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_semantic_mask: bool = False,
    timestep_shift: float | None = None,
    participation: PackedSequence | None = None,
) -> LossTerms:
    """Loss terms of one pack. ``seq`` on the model's device; ``latent`` [n, C, Hmax, Wmax] the VAE posterior
    sample of ``seq.vae_images`` (None when the pack has no VAE image). ``noise`` [V, p*p*C] replaces the
    draw of eps, else it is drawn on the CPU from ``generator``. ``timestep_shift`` defaults to the model's.
    ``participation``: a ``participation_sample`` appended to the pack (data parallelism)."""
    cfg = model.config
    shift = cfg.timestep_shift if timestep_shift is None else timestep_shift
    dev = model.device
    dim = cfg.patch_latent_dim
    n_mse, n_ce = seq.mse_indexes.numel(), seq.ce_indexes.numel()
    clean = torch.zeros(0, dim, device=dev)
    if seq.vae_indexes.numel():
        clean = clean_latent_tokens(latent, seq.vae_grids, cfg.latent_patch_size)
        if noise is None:
            noise = torch.randn(clean.shape, generator=generator)
    eps = torch.zeros(0, dim) if noise is None else noise.float()
    t = noise_levels(seq.vae_timesteps, shift)
    if participation is not None:  # its slots: x0 = eps = 0 at t = 1/2 (any values do: weight 0)
        seq = concat_sequences(seq, participation.to(dev))
        extra = participation.vae_indexes.numel()
        clean = torch.cat([clean, clean.new_zeros(extra, dim)])
        eps = torch.cat([eps, eps.new_zeros(extra, dim)])
        t = torch.cat([t, t.new_full((extra,), 0.5)])
    target = None
    if seq.vae_indexes.numel():
        eps = eps.to(dev)
        seq = seq.with_latents((1 - t[:, None]) * clean + t[:, None] * eps, t)
        target = (eps - clean)[t > 0]
    plan = MaskedAttention(seq.sample_lens, seq.attention_masks(dev))
    out = model(seq, plan, use_semantic_mask=use_semantic_mask)
    mse = None if out.velocity is None else (out.velocity.float() - target) ** 2
    ce = None if out.logits is None else F.cross_entropy(out.logits.float(), seq.label_ids, reduction="none")
    zero = None
    if participation is not None:
        zero = (mse[n_mse:].sum() + ce[n_ce:].sum()) * 0.0
        mse, ce = mse[:n_mse], ce[:n_ce]
    mse = None if mse is None or mse.shape[0] == 0 else mse
    ce = None if ce is None or ce.shape[0] == 0 else ce
    stats = {}
    if out.semantic is not None:
        stats = {
            "semantic_masked_ratio": out.semantic.masked_ratio,
            # the participation sample has no instruction: skipped by the bridge, and not counted here
            "semantic_skipped_samples": out.semantic.skipped_samples - (participation is not None),
        }
    return LossTerms(mse, ce, out, stats, zero)


def loss_counts(seq: PackedSequence, ce_reweighting: bool) -> tuple[float, float, float]:
    """(MSE tokens, CE weight, tokens) of one pack: what ``pack_loss`` normalises by once summed globally."""
    n_ce = float(seq.ce_weights.sum()) if ce_reweighting else float(seq.ce_indexes.numel())
    return float(seq.mse_indexes.numel()), n_ce, float(seq.length)


@dataclass
class PackLoss:
    loss: torch.Tensor  # the scalar to backpropagate
    mse: float  # this pack's normalised MSE part (before the weight), for logging
    ce: float


def pack_loss(
    terms: LossTerms,
    seq: PackedSequence,
    global_mse_tokens: float,
    global_ce_weight: float,
    world_size: int,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    ce_reweighting: bool = False,
) -> PackLoss:
    """Σ over this pack's tokens / the global count, times ``world_size`` (data parallelism averages the
    gradients over ranks). ``ce_reweighting``: each CE token weighted by its ``seq.ce_weights`` entry."""
    loss = terms.zero
    mse = ce = 0.0
    if terms.mse is not None:
        m = terms.mse.float().mean(-1).sum() * world_size / max(global_mse_tokens, 1.0)
        loss = m * mse_weight if loss is None else loss + m * mse_weight
        mse = float(m.detach())
    if terms.ce is not None:
        c = terms.ce.float()
        if ce_reweighting:
            c = c * seq.ce_weights.to(c.device)
        c = c.sum() * world_size / max(global_ce_weight, 1.0)
        loss = c * ce_weight if loss is None else loss + c * ce_weight
        ce = float(c.detach())
    if terms.mse is None and terms.ce is None:
        raise RuntimeError(f"a pack has neither MSE nor CE targets ({seq.meta.get('data_indexes')})")
    return PackLoss(loss, mse, ce)
