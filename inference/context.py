"""Building the KV-cache contexts of an interleaved input (docs/architecture.md §3).

A ``Context`` is (cache, kv_len, rope). Each appended item is one forward pass over a one-item
``PackedSequence`` (made by the same ``SequenceBuilder`` the data pipeline uses, starting at the context's
next position) that writes its keys and values into the cache: text (und expert, causal), the ViT view of
an image (und, full attention, one shared position) and the clean VAE view of an image (markers und,
latents gen, t = 0, one shared position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference import trace
from modeling.bagel import Bagel, BagelOutput
from modeling.kv_cache import CachedAttention, KVCache, Segment
from modeling.sequence import PackedSequence, SequenceBuilder, patchify
from modeling.tokenizer import SpecialTokenIds


@dataclass
class Context:
    cache: KVCache
    kv_len: int = 0
    rope: int = 0
    name: str = "und"  # which context this is ("full", "no_text", "no_image", "und"): for traces only

    @classmethod
    def empty(cls, num_layers: int, name: str = "und") -> Context:
        return cls(KVCache(num_layers), name=name)

    def snapshot(self, name: str | None = None) -> Context:
        """A view of the current state sharing storage (appends go to the cache's tail, never before it)."""
        return Context(self.cache, self.kv_len, self.rope, name or self.name)

    def own_tail(self, room: int = 0) -> None:
        """Make the cache's tail beyond ``kv_len`` this context's to write: a snapshot that fell behind its
        shared cache (another context appended after it) gets its own copy of the prefix, with ``room``."""
        if self.kv_len != len(self.cache):
            self.cache = self.cache.prefix(self.kv_len, room)

    def fork(self) -> Context:
        """A context that may append without changing this one (text generation on the caller's context).

        Storage is shared: the fork appends to the tail, and this context, once behind, copies its prefix
        before its own next append (``own_tail``)."""
        return Context(self.cache, self.kv_len, self.rope, self.name)


def run_cached(model: Bagel, seq: PackedSequence, plan: CachedAttention) -> BagelOutput:
    """One forward of ``seq`` against the plan's caches: room reserved first, appends committed after."""
    llm = model.config.llm
    plan.reserve(llm.num_key_value_heads, llm.head_dim, model.dtype, model.device)
    out = model(seq, plan)
    plan.commit()
    return out


def item_builder(model: Bagel, special: SpecialTokenIds, ctx: Context) -> SequenceBuilder:
    """A builder whose one sample starts at the context's next position."""
    return SequenceBuilder(special, model.config.sequence_geometry()).start_sample(ctx.rope)


def append(model: Bagel, ctx: Context, builder: SequenceBuilder, kind: str, latents=None) -> BagelOutput:
    """Close the builder's sample, run it against ``ctx`` and append its keys/values; advances the context.

    ``latents`` [V, p*p*C]: the clean latent tokens of a VAE item (t = 0)."""
    next_rope = builder.rope
    seq = builder.end_sample().build()
    trace.context_step(ctx.name, kind, ctx.kv_len, ctx.rope, seq)
    out = forward_step(model, ctx, seq, latents)
    ctx.kv_len += seq.length
    ctx.rope = next_rope
    return out


def forward_step(model: Bagel, ctx: Context, seq: PackedSequence, latents=None) -> BagelOutput:
    """One cached forward of a one-sample, one-split ``seq`` after ``ctx`` (cache updated in place).

    The split's mode decides the attention inside the query block: causal for text, full for images."""
    (mode,) = {m for modes in seq.attn_modes for m in modes}
    ctx.own_tail(seq.length)
    seq = seq.to(model.device)
    if latents is not None:
        seq = seq.with_latents(latents.to(model.device), torch.zeros(latents.shape[0], device=model.device))
    plan = CachedAttention(
        [Segment(seq.length, ctx.cache, ctx.kv_len)], causal=mode == "causal", update_cache=True
    )
    return run_cached(model, seq, plan)


@torch.no_grad()
def prefill_text(model: Bagel, ctx: Context, ids: list[int], special: SpecialTokenIds) -> None:
    """Append ``<|im_start|> ids <|im_end|>`` at consecutive positions."""
    b = item_builder(model, special, ctx)
    b.add_text(ids)
    append(model, ctx, b, "text")


@torch.no_grad()
def prefill_vit(model: Bagel, ctx: Context, image: torch.Tensor, special: SpecialTokenIds) -> None:
    """image [3, H, W] in [-1, 1], H and W multiples of the ViT patch size."""
    b = item_builder(model, special, ctx)
    b.add_vit_image(image.to(model.device))
    append(model, ctx, b, "vit")


@torch.no_grad()
def prefill_vae(
    model: Bagel,
    vae,
    ctx: Context,
    image: torch.Tensor,
    special: SpecialTokenIds,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Encode image [3, H, W] (posterior sampled; ``noise`` replaces the draw) and append its clean latent.
    ``posterior``: the image's (mean, logvar) [1, z, h, w] if already encoded (batched, by the pipeline)."""
    p = model.config.latent_patch_size
    if posterior is None:
        vae_param = next(vae.parameters())
        posterior = vae.posterior(image[None].to(vae_param.device, vae_param.dtype))
    latent = vae.sample_posterior(*posterior, noise=noise, generator=generator)[0]
    b = item_builder(model, special, ctx)
    b.add_vae_image(grid=(latent.shape[1] // p, latent.shape[2] // p))
    append(model, ctx, b, "vae", latents=patchify(latent.float(), p))


@dataclass
class Item:
    """One input to append to one context: text ``ids``, a ViT view ``vit`` [3, H, W], or a sampled VAE
    latent ``vae_latent`` [z, h, w] (clean, t = 0)."""

    ctx: Context
    ids: list[int] | None = None
    vit: torch.Tensor | None = None
    vae_latent: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return "text" if self.ids is not None else "vit" if self.vit is not None else "vae"


@torch.no_grad()
def prefill_batch(model: Bagel, special: SpecialTokenIds, items: list[Item]) -> None:
    """Append every item to its own context in ONE forward (one packed sample per item, each attending to
    its context's cache). Items must share an attention mode: all text (causal) or all images (full).
    Same tokens, positions and keys/values as appending them one by one (``prefill_text`` etc.)."""
    if len({it.kind == "text" for it in items}) != 1:
        raise ValueError("prefill_batch: text and image items need separate calls (causal vs full attention)")
    if len({id(it.ctx.cache) for it in items}) != len(items):
        raise ValueError("prefill_batch: one item per context cache")
    p = model.config.latent_patch_size
    b = SequenceBuilder(special, model.config.sequence_geometry())
    latents, next_ropes = [], []
    for it in items:
        b.start_sample(it.ctx.rope)
        if it.kind == "text":
            b.add_text(it.ids)
        elif it.kind == "vit":
            b.add_vit_image(it.vit.to(model.device))
        else:
            b.add_vae_image(grid=(it.vae_latent.shape[1] // p, it.vae_latent.shape[2] // p))
            latents.append(patchify(it.vae_latent.float(), p))
        next_ropes.append(b.rope)
        b.end_sample()
    seq = b.build().to(model.device)
    if latents:
        lat = torch.cat(latents).to(model.device)
        seq = seq.with_latents(lat, torch.zeros(lat.shape[0], device=model.device))
    for n, it in zip(seq.sample_lens, items):
        it.ctx.own_tail(n)
    segments = [Segment(n, it.ctx.cache, it.ctx.kv_len) for n, it in zip(seq.sample_lens, items)]
    run_cached(model, seq, CachedAttention(segments, causal=items[0].kind == "text", update_cache=True))
    for n, it, rope in zip(seq.sample_lens, items, next_ropes):
        it.ctx.kv_len += n
        it.ctx.rope = rope
