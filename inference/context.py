"""Building the KV-cache contexts of an interleaved input (docs/architecture.md §3).

A ``Context`` is (cache, kv_len, rope). ``prefill`` appends one item to each of several contexts in one
forward: a ``PackedSequence`` with one sample per item (made by the same ``SequenceBuilder`` the data
pipeline uses, each sample starting at its context's next position) whose keys and values go into the
caches: text (und expert, causal), the ViT view of an image (und, full attention, one shared position) or
the clean VAE view of an image (markers und, latents gen, t = 0, one shared position). Appending to one
context is a batch of one: the same tokens, positions and keys/values either way.
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


def item_builder(model: Bagel, special: SpecialTokenIds, ctx: Context) -> SequenceBuilder:
    """A builder whose one sample starts at the context's next position."""
    return SequenceBuilder(special, model.config.sequence_geometry()).start_sample(ctx.rope)


def run_cached(model: Bagel, seq: PackedSequence, plan: CachedAttention) -> BagelOutput:
    """One forward of ``seq`` against the plan's caches: room reserved first, appends committed after."""
    llm = model.config.llm
    plan.reserve(llm.num_key_value_heads, llm.head_dim, model.dtype, model.device)
    out = model(seq, plan)
    plan.commit()
    return out


@dataclass
class Item:
    """One input to append to one context: text ``ids`` (wrapped in ``<|im_start|>`` .. ``<|im_end|>``), a ViT
    view ``vit`` [3, H, W] in [-1, 1], or a sampled VAE latent ``vae_latent`` [z, h, w] (clean, t = 0).
    ``request``: which request of a batch it belongs to (traces record request 0's items)."""

    ctx: Context
    ids: list[int] | None = None
    vit: torch.Tensor | None = None
    vae_latent: torch.Tensor | None = None
    request: int = 0

    @property
    def kind(self) -> str:
        return "text" if self.ids is not None else "vit" if self.vit is not None else "vae"

    def add_to(self, builder: SequenceBuilder, patch: int, device) -> None:
        """Append this item's tokens to the builder's open sample."""
        if self.kind == "text":
            builder.add_text(self.ids)
        elif self.kind == "vit":
            builder.add_vit_image(self.vit.to(device))
        else:
            builder.add_vae_image(grid=(self.vae_latent.shape[1] // patch, self.vae_latent.shape[2] // patch))


@torch.no_grad()
def prefill(model: Bagel, special: SpecialTokenIds, items: list[Item]) -> None:
    """Append every item to its own context in ONE forward (one packed sample per item, each attending to
    its context's cache) and advance the contexts. Items must share an attention mode: all text (causal)
    or all images (full). A single context's append is a batch of one."""
    if not items:
        return
    if len({it.kind == "text" for it in items}) != 1:
        raise ValueError("prefill: text and image items need separate calls (causal vs full attention)")
    if len({id(it.ctx) for it in items}) != len(items):
        raise ValueError("prefill: one item per context")
    p, dev = model.config.latent_patch_size, model.device
    b = SequenceBuilder(special, model.config.sequence_geometry())
    next_ropes = []
    for it in items:
        b.start_sample(it.ctx.rope)
        it.add_to(b, p, dev)
        next_ropes.append(b.rope)
        b.end_sample()
        if it.request == 0 and trace.active() is not None:  # the one-item forward upstream would run
            one = item_builder(model, special, it.ctx)
            it.add_to(one, p, dev)
            trace.context_step(it.ctx.name, it.kind, it.ctx.kv_len, it.ctx.rope, one.end_sample().build())
    seq = b.build().to(dev)
    latents = [patchify(it.vae_latent.float(), p) for it in items if it.kind == "vae"]
    if latents:
        lat = torch.cat(latents).to(dev)
        seq = seq.with_latents(lat, torch.zeros(lat.shape[0], device=dev))
    for n, it in zip(seq.sample_lens, items):
        it.ctx.own_tail(n)
    segments = [Segment(n, it.ctx.cache, it.ctx.kv_len) for n, it in zip(seq.sample_lens, items)]
    run_cached(model, seq, CachedAttention(segments, causal=items[0].kind == "text", update_cache=True))
    for n, it, rope in zip(seq.sample_lens, items, next_ropes):
        it.ctx.kv_len += n
        it.ctx.rope = rope
