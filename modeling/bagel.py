"""The Bagel composite: Qwen2 MoT LLM + SigLIP NaViT + connector + latent bridges (spec model.md §2–3, §10).

The VAE is not part of this module (it lives in ``ae.safetensors``); callers encode/decode with
``modeling.autoencoder.AutoEncoder``. This file holds the embedding of every modality into the LLM's
width and the packed training forward with its losses. Inference orchestration (KV caches, CFG,
sampling) lives in ``inference/``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.config import BagelConfig
from modeling.embeddings import MLPconnector, PositionEmbedding, TimestepEmbedder, patchify_latent
from modeling.kv_cache import CachedAttention, MaskedAttention, Segment
from modeling.qwen2_mot import Qwen2MoTForCausalLM, Routing
from modeling.semantic_mask import compute_semantic_mask
from modeling.siglip import SiglipVisionModel


def shifted_timestep(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Rectified-flow timestep shift ``s t / (1 + (s - 1) t)`` (identity for s = 1)."""
    return shift * t / (1 + (shift - 1) * t)


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

    # ------------------------------------------------------------------ inference forward
    def forward_cached(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        segments: list[Segment],
        gen_indexes: torch.Tensor | None = None,
        und_indexes: torch.Tensor | None = None,
        causal: bool = False,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """One packed inference forward over query segments, each against its own KV cache.

        embeds [N, H]; position_ids [N]; ``gen_indexes`` rows go to the generation expert (VAE latent
        tokens), all other rows to the understanding expert. Returns final-normed hidden [N, H].
        """
        if gen_indexes is not None and und_indexes is None:
            is_und = torch.ones(embeds.shape[0], dtype=torch.bool, device=embeds.device)
            is_und[gen_indexes] = False
            und_indexes = is_und.nonzero().flatten()
        route = Routing(und_indexes, gen_indexes)
        plan = CachedAttention(segments, causal=causal, update_cache=update_cache)
        return self.language_model(embeds, position_ids, route, plan)

    # ------------------------------------------------------------------ training forward
    def training_losses(
        self,
        batch: dict,
        flow_noise: torch.Tensor | None = None,
        use_semantic_mask: bool = False,
        timestep_shift: float | None = None,
    ) -> dict:
        """Packed training forward (spec training.md §5) on one pack of samples.

        ``batch`` holds upstream's packed keys (``packed_text_ids``, ``packed_text_indexes``,
        ``packed_position_ids``, ``sample_lens``, ViT/VAE token indexes and ids, ``packed_timesteps`` raw
        (``-inf`` for clean references), ``mse_loss_indexes``, optional CE keys) and ``padded_latent``
        [B, C, h, w] (the VAE posterior sample of ``padded_images``). Attention masks come from
        ``nested_attention_masks`` (bool or 0/-inf float, per sample), ``attention_allowed{i}`` (the fixture
        layout) or ``split_lens`` + ``attn_modes``. ``flow_noise`` [N_vae, p*p*C] replaces the draw of eps.

        Returns ``mse`` [N_mse, p*p*C] per-element squared errors (or None), ``ce`` [N_ce] per-token cross
        entropy (or None), ``mse_pred``, ``ce_logits``, ``semantic_mask`` (bf16 [N] or None), ``stats``.
        """
        cfg = self.config
        shift = cfg.timestep_shift if timestep_shift is None else timestep_shift
        dev, dtype = self.device, self.dtype
        b = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
        sample_lens = [int(x) for x in torch.as_tensor(b["sample_lens"]).tolist()]
        seq_len = int(b.get("sequence_length", sum(sample_lens)))
        x = torch.zeros(seq_len, self.hidden_size, dtype=dtype, device=dev)
        text_idx = b["packed_text_indexes"]
        x = x.index_copy(0, text_idx, self.embed_text(b["packed_text_ids"]))
        und_parts = [text_idx]

        vit_idx = b.get("packed_vit_token_indexes")
        if vit_idx is not None and vit_idx.numel():
            pixels = b.get("packed_vit_tokens")
            if pixels is None:
                pixels = (b["packed_vit_tokens_u8"].float() / 255.0 - 0.5) / 0.5
            vit_emb = self.embed_vit(pixels, b["packed_vit_position_ids"], b["vit_token_seqlens"])
            x = x.index_copy(0, vit_idx, vit_emb.to(dtype))
            und_parts.append(vit_idx)

        vae_idx = b.get("packed_vae_token_indexes")
        mse = mse_pred = None
        p = cfg.latent_patch_size
        if vae_idx is not None and vae_idx.numel():
            latent = b["padded_latent"]
            shapes = [
                tuple(int(v) for v in s) for s in torch.as_tensor(b["patchified_vae_latent_shapes"]).tolist()
            ]
            # each image's latent is cropped out of the zero-padded batch before patchifying
            clean = torch.cat(
                [patchify_latent(latent[i, :, : h * p, : w * p], p) for i, (h, w) in enumerate(shapes)]
            )
            clean = clean.float()
            t = torch.sigmoid(b["packed_timesteps"].float())
            t = shifted_timestep(t, shift)
            eps = torch.randn_like(clean) if flow_noise is None else flow_noise.to(dev).float()
            x_t = (1 - t[:, None]) * clean + t[:, None] * eps
            lat_emb = self.embed_latents(x_t, t, b["packed_latent_position_ids"])
            x = x.index_copy(0, vae_idx, lat_emb.to(dtype))
            target = eps - clean
            has_mse = t > 0
        und_idx = torch.cat(und_parts).sort().values
        route = Routing(und_idx, vae_idx if vae_idx is not None and vae_idx.numel() else None)
        plan = MaskedAttention(sample_lens, self._sample_masks(b, sample_lens, dev))

        sem = {}
        after_layer = None
        if use_semantic_mask:
            lo, hi = cfg.semantic_mask_layers

            def after_layer(i, hidden):
                if i != cfg.semantic_layer:
                    return
                with torch.no_grad():
                    res = compute_semantic_mask(
                        hidden.detach(),
                        sample_lens,
                        b["packed_instruc_indexes"],
                        vit_idx if vit_idx is not None else text_idx[:0],
                        vae_idx if vae_idx is not None else text_idx[:0],
                        [tuple(s) for s in torch.as_tensor(b["patchified_vit_token_shapes"]).tolist()]
                        if vit_idx is not None and vit_idx.numel()
                        else [],
                        [tuple(s) for s in torch.as_tensor(b["patchified_vae_latent_shapes"]).tolist()]
                        if vae_idx is not None and vae_idx.numel()
                        else [],
                        b.get("mse_loss_indexes"),
                        cfg.semantic_threshold,
                    )
                sem["result"] = res
                plan.key_bias = res.mask
                plan.bias_rows = res.target_rows
                plan.bias_layers = (lo, hi)

        hidden = self.language_model(x, b["packed_position_ids"], route, plan, after_layer)

        mse_idx = b.get("mse_loss_indexes")
        if mse_idx is not None and mse_idx.numel():
            mse_pred = self.velocity(hidden[mse_idx])
            mse = (mse_pred.float() - target[has_mse]) ** 2
        ce = ce_logits = None
        ce_idx = b.get("ce_loss_indexes")
        if ce_idx is not None and ce_idx.numel():
            ce_logits = self.logits(hidden[ce_idx])
            ce = F.cross_entropy(ce_logits.float(), b["packed_label_ids"], reduction="none")
        res = sem.get("result")
        stats = {}
        if res is not None:
            stats = {
                "semantic_masked_ratio": res.masked_ratio,
                "semantic_skipped_samples": res.skipped_samples,
            }
        return {
            "mse": mse,
            "ce": ce,
            "mse_pred": mse_pred,
            "ce_logits": ce_logits,
            "semantic_mask": None if res is None else res.mask,
            "semantic": res,
            "stats": stats,
        }

    @staticmethod
    def _sample_masks(b: dict, sample_lens: list[int], device=None) -> list[torch.Tensor]:
        masks = b.get("nested_attention_masks")
        if masks is None and "attention_allowed0" in b:
            masks = [b[f"attention_allowed{i}"] for i in range(len(sample_lens))]
        if masks is None and "split_lens" in b:
            from data.attention_masks import build_sample_mask

            masks = [build_sample_mask(sl, am) for sl, am in zip(b["split_lens"], b["attn_modes"])]
        if masks is None:
            raise KeyError(
                "batch has no attention masks (nested_attention_masks / attention_allowed{i} / split_lens)"
            )
        out = []
        for m in masks:
            m = torch.as_tensor(m)
            out.append((m if m.dtype == torch.bool else m == 0).to(device))
        return out
