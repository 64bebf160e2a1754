"""The Bagel composite: Qwen2 MoT LLM + SigLIP NaViT + connector + latent embeddings and heads.

The VAE is not part of this module (it lives in ``ae.safetensors``); callers encode/decode with
``modeling.autoencoder.AutoEncoder``. This file embeds every modality of a ``PackedSequence`` into the
LLM's width and runs one packed forward (``Bagel.forward``). The training objective lives in
``train/losses.py``, inference orchestration (KV caches, CFG, sampling) in ``inference/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.config import BagelConfig
from modeling.embeddings import MLPconnector, PositionEmbedding, TimestepEmbedder
from modeling.qwen2_mot import Qwen2MoTForCausalLM, Routing
from modeling.semantic_mask import SemanticMaskResult, compute_semantic_mask
from modeling.sequence import PackedSequence
from modeling.siglip import SiglipVisionModel


@dataclass
class BagelOutput:
    hidden: torch.Tensor  # [N, H] final-normed hidden states
    velocity: torch.Tensor | None  # [M, p*p*C] predicted velocity (noise - data) at seq.mse_indexes
    logits: torch.Tensor | None  # [C, V] next-token logits at seq.ce_indexes
    semantic: SemanticMaskResult | None = None  # the bridge's mask, when it ran


class Bagel(nn.Module):
    def __init__(self, config: BagelConfig):
        super().__init__()
        self.config = config
        llm = config.llm
        hidden = llm.hidden_size
        self.hidden_size = hidden
        self.language_model = Qwen2MoTForCausalLM(llm)
        if config.visual_gen:
            self.time_embedder = TimestepEmbedder(hidden)
            self.vae2llm = nn.Linear(config.patch_latent_dim, hidden)
            self.llm2vae = nn.Linear(hidden, config.patch_latent_dim)
            self.latent_pos_embed = PositionEmbedding(config.max_latent_size, hidden)
        if config.visual_und:
            self.vit_model = SiglipVisionModel(config.vit)
            self.connector = MLPconnector(config.vit.hidden_size, hidden, config.connector_act)
            self.vit_pos_embed = PositionEmbedding(config.vit_max_num_patch_per_side, hidden)

    # ------------------------------------------------------------------ init
    def init_weights(self, seed: int | None = None) -> None:
        """Random init for a fresh (non-checkpoint) model, in place on the parameters' device: normal(0, 0.02)
        matrices, unit norm weights, zero biases, the sin-cos tables, zero ``llm2vae`` (upstream's
        ``_init_weights``)."""
        g = None
        if seed is not None:
            g = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("pos_embed"):
                    continue
                if p.ndim == 1:
                    p.fill_(1.0 if "norm" in name else 0.0)
                else:
                    p.normal_(0.0, 0.02, generator=g)
        for m in (getattr(self, "latent_pos_embed", None), getattr(self, "vit_pos_embed", None)):
            if m is not None:
                m.reset_table()
        if self.config.visual_gen:
            nn.init.zeros_(self.llm2vae.weight)
            nn.init.zeros_(self.llm2vae.bias)

    # ------------------------------------------------------------------ embeddings
    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.model.embed_tokens(ids)

    def embed_vit(
        self, pixels: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int] | torch.Tensor
    ) -> torch.Tensor:
        """pixels [N, 3*14*14] (patchified, in [-1, 1]), position_ids [N] -> LLM inputs [N, H]."""
        seqlens = torch.as_tensor(seqlens, dtype=torch.int32, device=pixels.device)
        cu = F.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
        feats = self.vit_model(pixels.to(self.dtype), position_ids, cu, int(seqlens.max()))
        return self.connector(feats) + self.vit_pos_embed(position_ids)

    def embed_latents(
        self, tokens: torch.Tensor, t: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """tokens [N, p*p*C] latent patches, t [N] timesteps in [0, 1], position_ids [N] -> [N, H]."""
        return (
            self.vae2llm(tokens.to(self.dtype)) + self.time_embedder(t) + self.latent_pos_embed(position_ids)
        )

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed gen hidden states [N, H] -> predicted velocity (noise - data) [N, p*p*C]."""
        return self.llm2vae(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    # ------------------------------------------------------------------ forward
    def embed(self, seq: PackedSequence) -> torch.Tensor:
        """The LLM inputs [N, H] of a packed sequence: text embeddings, ViT features through the connector,
        latent tokens (``seq.latents`` at noise levels ``seq.latent_t``) through ``vae2llm``."""
        x = torch.zeros(seq.length, self.hidden_size, dtype=self.dtype, device=self.device)
        x = x.index_copy(0, seq.text_indexes, self.embed_text(seq.text_ids))
        if seq.vit_indexes.numel():
            vit = self.embed_vit(seq.vit_pixels, seq.vit_position_ids, seq.vit_seqlens)
            x = x.index_copy(0, seq.vit_indexes, vit.to(x.dtype))
        if seq.vae_indexes.numel():
            if seq.latents is None or seq.latent_t is None:
                raise ValueError("the sequence has VAE slots but no latents: use seq.with_latents(tokens, t)")
            lat = self.embed_latents(seq.latents, seq.latent_t, seq.vae_position_ids)
            x = x.index_copy(0, seq.vae_indexes, lat.to(x.dtype))
        return x

    def forward(self, seq: PackedSequence, plan, use_semantic_mask: bool = False) -> BagelOutput:
        """One packed forward over ``seq`` (on the model's device).

        ``plan`` is the attention: ``MaskedAttention`` (training: per-sample masks) or ``CachedAttention``
        (inference: query segments against KV caches). Latent slots go to the generation expert, every other
        token to the understanding expert. ``use_semantic_mask`` runs Scone's bridge (training): the layers up
        to ``semantic_layer``, the mask from their output, then the remaining layers with the mask as a key
        bias on the noisy target rows (docs/architecture.md §4). Returns the final-normed hidden states, the
        velocity at ``seq.mse_indexes`` and the logits at ``seq.ce_indexes`` (None where there are none).
        """
        lm = self.language_model
        x = self.embed(seq)
        is_und = torch.ones(seq.length, dtype=torch.bool, device=x.device)
        is_und[seq.vae_indexes] = False
        route = Routing(is_und.nonzero().flatten(), seq.vae_indexes if seq.vae_indexes.numel() else None)
        rope = lm.rope(seq.position_ids, x.dtype)
        semantic = None
        if use_semantic_mask:
            cfg = self.config
            x = lm.run_layers(x, rope, route, plan, 0, cfg.semantic_layer + 1)
            with torch.no_grad():
                semantic = compute_semantic_mask(
                    x.detach(),
                    seq.sample_lens,
                    seq.instruction_indexes,
                    seq.vit_indexes,
                    seq.vae_indexes,
                    seq.vit_grids,
                    seq.vae_grids,
                    seq.mse_indexes,
                    cfg.semantic_threshold,
                )
            plan = plan.with_key_bias(semantic.mask, semantic.target_rows, cfg.semantic_mask_layers)
            x = lm.run_layers(x, rope, route, plan, cfg.semantic_layer + 1)
        else:
            x = lm.run_layers(x, rope, route, plan)
        hidden = lm.final_norm(x, route)
        velocity = self.velocity(hidden[seq.mse_indexes]) if seq.mse_indexes.numel() else None
        logits = self.logits(hidden[seq.ce_indexes]) if seq.ce_indexes.numel() else None
        return BagelOutput(hidden, velocity, logits, semantic)
