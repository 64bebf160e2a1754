"""KV cache and the attention plans the decoder layers call into.

A decoder layer computes q/k/v for the tokens of one packed forward and hands them to a *plan*:

* ``CachedAttention`` (inference): the packed forward holds several query segments, each belonging to
  its own context (a KV cache). Segment i attends to ``cache_i[:kv_len_i]`` plus its own new tokens.
  Used for prefill (with ``update_cache``), text decoding and every denoising step, where the CFG
  branches of all requests go through one batched forward.
* ``MaskedAttention`` (training): per-sample explicit masks, plus Scone's semantic key bias on a range
  of layers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from modeling.attention import cached_sdpa, masked_attention, use_flash, varlen_attention


class KVCache:
    """Per-layer keys/values, head-major ``[kv_heads, capacity, head_dim]`` as SDPA reads them.

    Keys are stored after QK-norm and RoPE, as upstream's ``NaiveCache``. Storage is preallocated and grows
    geometrically, so an append is a copy into the free tail, never a concatenation of the whole cache.
    ``length`` is how many tokens were appended; the tail beyond it is scratch a denoising query may use
    (``CachedAttention(update_cache=False)`` writes its keys there without appending them). Several contexts
    may view one cache as (cache, kv_len) prefixes: a CFG branch that is a snapshot of an earlier state.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def reserve(self, total: int, kv_heads: int, head_dim: int, dtype, device) -> None:
        """Make room for ``total`` tokens in every layer (keeps the first ``length``)."""
        if self.keys[0] is not None and total <= self.capacity and self.keys[0].dtype == dtype:
            return
        # grow by half at least: a text decoding loop then reallocates O(log n) times, not once per token
        cap = max(total, self.capacity + self.capacity // 2, 256)
        for i in range(len(self.keys)):
            for store in (self.keys, self.values):
                new = torch.empty(kv_heads, cap, head_dim, dtype=dtype, device=device)
                if store[i] is not None and self.length:
                    new[:, : self.length] = store[i][:, : self.length]
                store[i] = new

    def get(self, layer: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Views [kv_heads, length, head_dim] of the first ``length`` tokens of ``layer``."""
        if self.keys[layer] is None or length == 0:
            return None, None
        return self.keys[layer][:, :length], self.values[layer][:, :length]

    def prefix(self, length: int, room: int = 0) -> KVCache:
        """A new cache holding copies of the first ``length`` tokens, with space for ``room`` more."""
        out = KVCache(len(self.keys))
        if self.keys[0] is not None and length:
            h, _, d = self.keys[0].shape
            out.reserve(length + room, h, d, self.keys[0].dtype, self.keys[0].device)
            for i in range(len(self.keys)):
                out.keys[i][:, :length] = self.keys[i][:, :length]
                out.values[i][:, :length] = self.values[i][:, :length]
        out.length = length
        return out


@dataclass
class Segment:
    """One query block of a packed inference forward: ``length`` new tokens attending to cache[:kv_len]."""

    length: int
    cache: KVCache | None
    kv_len: int = 0


@dataclass
class CachedAttention:
    """Query segments against their caches. Each segment's new keys/values are written into its cache at
    ``kv_len`` (head-major, in place) and the segment attends to ``cache[:kv_len + length]`` in one SDPA call
    (GQA by ``enable_gqa``, no expanded copies). ``update_cache`` appends them (prefill, text decoding);
    otherwise they only occupy the cache's scratch tail for this forward (denoising), so every segment needs
    a cache whose tail no other context owns (``inference.context.Context.own_tail``).

    On CUDA with flash-attn installed (fp16/bf16) the segments go through flash-attn's varlen kernel instead.
    The plan holds only Python ints and the caches' tensors: the decoder layers see the same guards on every
    layer and step, which is what lets ``torch.compile`` reuse one graph for all of them.
    """

    segments: list[Segment]
    causal: bool = False
    update_cache: bool = False
    compiled: bool = False  # a forward repeated with these shapes (denoising): compiled layers if enabled

    def __post_init__(self) -> None:
        caches = [id(s.cache) for s in self.segments if s.cache is not None]
        if len(set(caches)) != len(caches):
            raise ValueError("CachedAttention: two segments write into the same cache")

    def reserve(self, kv_heads: int, head_dim: int, dtype, device) -> None:
        """Room for every segment's new tokens (called once per forward, before the layers)."""
        for seg in self.segments:
            if seg.cache is not None:
                seg.cache.reserve(seg.kv_len + seg.length, kv_heads, head_dim, dtype, device)

    def commit(self) -> None:
        """After an ``update_cache`` forward: the new tokens are part of their caches."""
        if self.update_cache:
            for seg in self.segments:
                seg.cache.length = seg.kv_len + seg.length

    def layer(self, i: int) -> _CachedLayer:
        """Layer ``i``'s attention: this plan with that layer's cache tensors."""
        return _CachedLayer(
            self,
            [None if s.cache is None else s.cache.keys[i] for s in self.segments],
            [None if s.cache is None else s.cache.values[i] for s in self.segments],
        )


@dataclass
class _CachedLayer:
    plan: CachedAttention
    keys: list[torch.Tensor | None]  # per segment: the cache's [Hkv, capacity, d] storage of this layer
    values: list[torch.Tensor | None]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [N, H, d], k/v [N, Hkv, d] for the new tokens (segments concatenated) -> [N, H, d]."""
        keys, values, start = [], [], 0
        for seg, ck, cv in zip(self.plan.segments, self.keys, self.values):
            end = start + seg.length
            if ck is None:
                kb, vb = k[start:end].transpose(0, 1), v[start:end].transpose(0, 1)
            else:
                ck[:, seg.kv_len : seg.kv_len + seg.length] = k[start:end].transpose(0, 1)
                cv[:, seg.kv_len : seg.kv_len + seg.length] = v[start:end].transpose(0, 1)
                kb, vb = ck[:, : seg.kv_len + seg.length], cv[:, : seg.kv_len + seg.length]
            keys.append(kb)
            values.append(vb)
            start = end
        if use_flash(q):
            return self._flash(q, keys, values)
        out = torch.empty_like(q)
        start = 0
        for seg, kb, vb in zip(self.plan.segments, keys, values):
            end = start + seg.length
            out[start:end] = cached_sdpa(q[start:end], kb, vb, self.plan.causal)
            start = end
        return out

    def _flash(self, q, keys, values):
        # flash-attn's varlen kernel wants token-major packed keys: one copy of each segment's view
        lens_q = [s.length for s in self.plan.segments]
        lens_k = [kb.shape[1] for kb in keys]
        cu_q = torch.tensor([0, *itertools.accumulate(lens_q)], dtype=torch.int32, device=q.device)
        cu_k = torch.tensor([0, *itertools.accumulate(lens_k)], dtype=torch.int32, device=q.device)
        kk = torch.cat([kb.transpose(0, 1) for kb in keys])
        vv = torch.cat([vb.transpose(0, 1) for vb in values])
        return varlen_attention(q, kk, vv, cu_q, cu_k, max(lens_q), max(lens_k), causal=self.plan.causal)


@dataclass
class MaskedAttention:
    """Training attention: ``masks[i]`` bool [L_i, L_i] per packed sample.

    ``key_bias``: optional float [N] additive bias (0 / -inf) applied, in layers ``bias_layers``, to the
    rows listed in ``bias_rows`` (bool [N]) — Scone's semantic mask.
    """

    sample_lens: list[int]
    masks: list[torch.Tensor]
    key_bias: torch.Tensor | None = None
    bias_rows: torch.Tensor | None = None
    bias_layers: tuple[int, int] = (0, -1)
    _float_masks: dict = field(default_factory=dict)

    def _biased_masks(self, dtype) -> list[torch.Tensor]:
        if dtype in self._float_masks:
            return self._float_masks[dtype]
        out, start = [], 0
        for length, m in zip(self.sample_lens, self.masks):
            end = start + length
            base = torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, float("-inf"))
            bias = self.key_bias[start:end].float()[None, :]
            rows = self.bias_rows[start:end][:, None]
            out.append((base + torch.where(rows, bias, torch.zeros_like(bias))).to(dtype))
            start = end
        self._float_masks[dtype] = out
        return out

    def with_key_bias(
        self, key_bias: torch.Tensor, bias_rows: torch.Tensor, layers: tuple[int, int]
    ) -> MaskedAttention:
        """The same masks plus ``key_bias`` on ``bias_rows`` in layers ``layers`` (inclusive range)."""
        return MaskedAttention(self.sample_lens, self.masks, key_bias, bias_rows, tuple(layers))

    def layer(self, i: int) -> _MaskedLayer:
        return _MaskedLayer(self, i)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bias_layers
        if self.key_bias is not None and lo <= layer <= hi:
            masks = self._biased_masks(q.dtype)
        else:
            masks = self.masks
        return masked_attention(q, k, v, self.sample_lens, masks)


@dataclass
class _MaskedLayer:
    plan: MaskedAttention
    index: int

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.plan.attend(self.index, q, k, v)
