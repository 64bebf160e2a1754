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

from dataclasses import dataclass, field

import torch

from modeling.attention import masked_attention, varlen_attention


class KVCache:
    """Per-layer keys/values [tokens, kv_heads, head_dim], append-only.

    Keys are stored after QK-norm and RoPE, as upstream's ``NaiveCache``. A *prefix view* of a cache is
    simply (cache, length): CFG branches that are snapshots of an earlier state of the same context share
    storage instead of deep-copying it.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[0]

    def get(self, layer: int, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        k, v = self.keys[layer], self.values[layer]
        if k is None or length == 0:
            return None, None
        return k[:length], v[:length]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k.detach().clone(), v.detach().clone()
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k.detach()], dim=0)
            self.values[layer] = torch.cat([self.values[layer], v.detach()], dim=0)

    def prefix(self, length: int, clone: bool = False) -> KVCache:
        """A new cache holding the first ``length`` tokens (views unless ``clone``; appends never write into them)."""
        out = KVCache(len(self.keys))
        for i in range(len(self.keys)):
            k, v = self.get(i, length)
            out.keys[i] = None if k is None else (k.clone() if clone else k)
            out.values[i] = None if v is None else (v.clone() if clone else v)
        return out


@dataclass
class Segment:
    """One query block of a packed inference forward: ``length`` new tokens attending to cache[:kv_len]."""

    length: int
    cache: KVCache | None
    kv_len: int = 0


@dataclass
class CachedAttention:
    segments: list[Segment]
    causal: bool = False
    update_cache: bool = False

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [N, H, d], k/v [N, Hkv, d] for the new tokens (segments concatenated) -> [N, H, d]."""
        ks, vs, cu_q, cu_k = [], [], [0], [0]
        start = 0
        for seg in self.segments:
            end = start + seg.length
            ck, cv = seg.cache.get(layer, seg.kv_len) if seg.cache is not None else (None, None)
            if ck is not None:
                ks += [ck.to(k.dtype), k[start:end]]
                vs += [cv.to(v.dtype), v[start:end]]
            else:
                ks.append(k[start:end])
                vs.append(v[start:end])
            cu_q.append(end)
            cu_k.append(cu_k[-1] + seg.length + (0 if ck is None else ck.shape[0]))
            start = end
        kk = ks[0] if len(ks) == 1 else torch.cat(ks, 0)
        vv = vs[0] if len(vs) == 1 else torch.cat(vs, 0)
        dev = q.device
        cu_q_t = torch.tensor(cu_q, dtype=torch.int32, device=dev)
        cu_k_t = torch.tensor(cu_k, dtype=torch.int32, device=dev)
        max_q = max(s.length for s in self.segments)
        max_k = max(b - a for a, b in zip(cu_k[:-1], cu_k[1:]))
        out = varlen_attention(q, kk, vv, cu_q_t, cu_k_t, max_q, max_k, causal=self.causal)
        if self.update_cache:
            start = 0
            for seg in self.segments:
                end = start + seg.length
                seg.cache.append(layer, k[start:end], v[start:end])
                start = end
        return out


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

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bias_layers
        if self.key_bias is not None and lo <= layer <= hi:
            masks = self._biased_masks(q.dtype)
        else:
            masks = self.masks
        return masked_attention(q, k, v, self.sample_lens, masks)
