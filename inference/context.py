"""Building the KV-cache contexts of an interleaved input (spec inference.md §2).

A ``Context`` is (cache, kv_len, rope). Each appended item is one forward pass that writes its keys
and values into the cache: text (und expert, causal, consecutive positions), the ViT view of an image
(und, full attention, one shared position) and the clean VAE view of an image (markers und, latents
gen, t = 0, one shared position). ``StepRecord`` keeps the ids/positions of each step for parity checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modeling.bagel import Bagel
from modeling.embeddings import patchify_latent
from modeling.kv_cache import KVCache, Segment
from modeling.position_ids import flattened_position_ids
from modeling.siglip import patchify_image
from modeling.tokenizer import SpecialTokenIds


@dataclass
class Context:
    cache: KVCache
    kv_len: int = 0
    rope: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> Context:
        return cls(KVCache(num_layers))

    def snapshot(self) -> Context:
        """A view of the current state sharing storage (the cache is append-only)."""
        return Context(self.cache, self.kv_len, self.rope)

    def _writable(self) -> None:
        # A snapshot that falls behind its shared cache must not append in the middle of it.
        if self.kv_len != len(self.cache):
            self.cache = self.cache.prefix(self.kv_len, clone=True)

    def fork(self) -> Context:
        """An independent copy (used by text generation, which must not modify the caller's context).

        The prefix is shared: ``KVCache.append`` concatenates into new tensors, never in place."""
        return Context(self.cache.prefix(self.kv_len), self.kv_len, self.rope)


@dataclass
class StepRecord:
    kind: str
    key_values_len: int
    rope: int
    text_ids: list[int] = field(default_factory=list)
    text_indexes: list[int] = field(default_factory=list)
    position_ids: torch.Tensor | None = None
    token_position_ids: torch.Tensor | None = None  # 2-D ids of ViT / VAE tokens
    seqlen: int = 0


def _forward(
    model: Bagel, ctx: Context, embeds, position_ids, gen_indexes=None, causal=False
) -> torch.Tensor:
    ctx._writable()
    seg = Segment(embeds.shape[0], ctx.cache, ctx.kv_len)
    return model.forward_cached(
        embeds, position_ids, [seg], gen_indexes=gen_indexes, causal=causal, update_cache=True
    )


@torch.no_grad()
def prefill_text(model: Bagel, ctx: Context, ids: list[int], special: SpecialTokenIds) -> StepRecord:
    """Append ``<|im_start|> ids <|im_end|>`` at consecutive positions."""
    tokens = [special.bos_token_id, *ids, special.eos_token_id]
    dev = model.device
    t = torch.tensor(tokens, device=dev)
    pos = torch.arange(ctx.rope, ctx.rope + len(tokens), device=dev)
    # upstream numbers a text step's tokens in the merged (cache + query) layout: kv_len + i
    idx = list(range(ctx.kv_len, ctx.kv_len + len(tokens)))
    rec = StepRecord("text", ctx.kv_len, ctx.rope, tokens, idx, pos.cpu(), seqlen=len(tokens))
    _forward(model, ctx, model.embed_text(t), pos, causal=True)
    ctx.kv_len += len(tokens)
    ctx.rope += len(tokens)
    return rec


def _image_embeds(model: Bagel, inner: torch.Tensor, special: SpecialTokenIds) -> torch.Tensor:
    markers = model.embed_text(
        torch.tensor([special.start_of_image, special.end_of_image], device=model.device)
    )
    return torch.cat([markers[:1], inner.to(markers.dtype), markers[1:]], 0)


@torch.no_grad()
def prefill_vit(model: Bagel, ctx: Context, image: torch.Tensor, special: SpecialTokenIds) -> StepRecord:
    """image [3, H, W] in [-1, 1], H and W multiples of the ViT patch size."""
    cfg = model.config
    p = cfg.vit.patch_size
    h, w = image.shape[1] // p, image.shape[2] // p
    patches = patchify_image(image.to(model.device), p)
    vit_pos = flattened_position_ids(h, w, cfg.vit_max_num_patch_per_side, cfg.interpolate_pos).to(
        model.device
    )
    inner = model.embed_vit(patches, vit_pos, [h * w])
    embeds = _image_embeds(model, inner, special)
    pos = torch.full((embeds.shape[0],), ctx.rope, device=model.device, dtype=torch.long)
    rec = StepRecord(
        "vit",
        ctx.kv_len,
        ctx.rope,
        [special.start_of_image, special.end_of_image],
        [0, embeds.shape[0] - 1],
        pos.cpu(),
        vit_pos.cpu(),
        embeds.shape[0],
    )
    _forward(model, ctx, embeds, pos)
    ctx.kv_len += embeds.shape[0]
    ctx.rope += 1
    return rec


@torch.no_grad()
def prefill_vae(
    model: Bagel,
    vae,
    ctx: Context,
    image: torch.Tensor,
    special: SpecialTokenIds,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepRecord:
    """Encode image [3, H, W] (posterior sampled; ``noise`` replaces the draw) and append its clean latent."""
    cfg = model.config
    p = cfg.latent_patch_size
    vae_param = next(vae.parameters())
    latent = vae.encode(image[None].to(vae_param.device, vae_param.dtype), noise=noise, generator=generator)[
        0
    ]
    tokens = patchify_latent(latent.float(), p).to(model.device)
    h, w = latent.shape[1] // p, latent.shape[2] // p
    lat_pos = flattened_position_ids(h, w, cfg.max_latent_size, cfg.interpolate_pos).to(model.device)
    t0 = torch.zeros(tokens.shape[0], device=model.device)
    embeds = _image_embeds(model, model.embed_latents(tokens, t0, lat_pos), special)
    n = embeds.shape[0]
    pos = torch.full((n,), ctx.rope, device=model.device, dtype=torch.long)
    rec = StepRecord(
        "vae",
        ctx.kv_len,
        ctx.rope,
        [special.start_of_image, special.end_of_image],
        [0, n - 1],
        pos.cpu(),
        lat_pos.cpu(),
        n,
    )
    _forward(model, ctx, embeds, pos, gen_indexes=torch.arange(1, n - 1, device=model.device))
    ctx.kv_len += n
    ctx.rope += 1
    return rec
