"""Attention backends for packed (variable-length) sequences.

Two shapes of problem occur in this model:

* **varlen**: several independent sequences packed along one token axis, each query block attending
  to its own key block (inference with KV caches, SigLIP over several images). Uses flash-attn's
  ``flash_attn_varlen_func`` when installed, on CUDA, in fp16/bf16; otherwise PyTorch SDPA per block.
* **masked**: one explicit [Lq, Lk] mask per packed sample (training: causal text, full images,
  hidden noisy targets, Scone's semantic bias). Always SDPA per sample.

Tensors are token-major: q [Nq, heads, d], k/v [Nk, kv_heads, d]; GQA is handled by repeating kv heads.
``cached_sdpa`` is the inference kernel against a KV cache, which is stored head-major ([kv_heads, Nk, d],
the layout SDPA reads fastest) and shared between query heads by ``enable_gqa`` instead of copies.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

try:  # optional GPU speed-up
    from flash_attn import flash_attn_varlen_func as _flash_varlen  # type: ignore

    HAS_FLASH_ATTN = True
except Exception:  # ImportError, or a broken CUDA build
    _flash_varlen = None
    HAS_FLASH_ATTN = False

_FORCE_SDPA = False


def set_force_sdpa(flag: bool) -> None:
    """Disable flash-attn even where available (for A/B comparisons and tests)."""
    global _FORCE_SDPA
    _FORCE_SDPA = flag


def use_flash(q: torch.Tensor) -> bool:
    """Whether flash-attn serves this query (installed, CUDA, fp16/bf16, not disabled)."""
    return HAS_FLASH_ATTN and not _FORCE_SDPA and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[N, kv_heads, d] -> [N, kv_heads * n_rep, d] with kv head g serving query heads g*n_rep..g*n_rep+n_rep-1."""
    if n_rep == 1:
        return x
    n, h, d = x.shape
    return x[:, :, None, :].expand(n, h, n_rep, d).reshape(n, h * n_rep, d)


def _sdpa(q, k, v, mask=None, is_causal=False, scale=None):
    """q [Lq, H, d], k/v [Lk, H, d] -> [Lq, H, d]."""
    # 4-D inputs: with 3-D tensors PyTorch falls back to the slow math kernel (10x slower on GPU).
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=None if mask is None else mask[None, None],
        is_causal=is_causal,
        scale=scale,
    )
    return out[0].transpose(0, 1)


def cached_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """One query block against its keys: q [Lq, H, d] (token-major), k/v [Hkv, Lk, d] (head-major, e.g.
    a view of a KV cache) -> [Lq, H, d]. ``causal`` is aligned bottom-right (the block is the end of Lk)."""
    lq, lk = q.shape[0], k.shape[1]
    mask, is_causal = None, False
    if causal and lq > 1:
        if lq == lk:
            is_causal = True
        else:
            mask = bottom_right_causal_mask(lq, lk, q.device)[None, None]
    kb, vb, gqa = k.to(q.dtype), v.to(q.dtype), True
    if mask is not None:  # text prefill only: expanded heads keep every backend's masked kernel available
        n_rep = q.shape[1] // k.shape[0]
        kb, vb, gqa = kb.repeat_interleave(n_rep, 0), vb.repeat_interleave(n_rep, 0), False
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], kb[None], vb[None], attn_mask=mask, is_causal=is_causal, enable_gqa=gqa
    )
    return out[0].transpose(0, 1)


def bottom_right_causal_mask(lq: int, lk: int, device) -> torch.Tensor:
    """Bool [lq, lk]: query i sees keys 0 .. (lk - lq) + i (flash-attn's causal alignment)."""
    qi = torch.arange(lq, device=device)[:, None]
    kj = torch.arange(lk, device=device)[None, :]
    return kj <= qi + (lk - lq)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-diagonal attention: query block i attends to key block i only.

    q [Nq, H, d]; k, v [Nk, Hkv, d]; cu_seqlens_* int32 [B+1] prefix sums. ``causal`` is aligned
    bottom-right (a query block shorter than its key block sees the whole prefix). Returns [Nq, H, d].
    """
    if use_flash(q):
        return _flash_varlen(
            q,
            k.to(q.dtype),
            v.to(q.dtype),
            cu_seqlens_q.to(torch.int32),
            cu_seqlens_k.to(torch.int32),
            max_seqlen_q,
            max_seqlen_k,
            causal=causal,
            softmax_scale=scale,
        )
    n_rep = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs, qe, ks, ke = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if qe == qs:
            continue
        kb, vb = _repeat_kv(k[ks:ke], n_rep), _repeat_kv(v[ks:ke], n_rep)
        mask = None
        is_causal = False
        if causal:
            if qe - qs == ke - ks:
                is_causal = True
            else:
                mask = bottom_right_causal_mask(qe - qs, ke - ks, q.device)
        out[qs:qe] = _sdpa(q[qs:qe], kb.to(q.dtype), vb.to(q.dtype), mask, is_causal, scale)
    return out


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sample_lens: list[int],
    masks: list[torch.Tensor],
    scale: float | None = None,
) -> torch.Tensor:
    """Per-sample attention with explicit masks (training).

    q [N, H, d], k/v [N, Hkv, d]; ``masks[i]`` is bool [L_i, L_i] (True = may attend) or an additive float
    mask (0 / -inf). Samples never attend to each other. Returns [N, H, d].
    """
    n_rep = q.shape[1] // k.shape[1]
    outs = []
    start = 0
    for length, mask in zip(sample_lens, masks):
        end = start + length
        kb, vb = _repeat_kv(k[start:end], n_rep), _repeat_kv(v[start:end], n_rep)
        m = mask.to(q.device)
        if m.dtype != torch.bool:
            m = m.to(q.dtype)
        outs.append(_sdpa(q[start:end], kb, vb, m, False, scale))
        start = end
    return torch.cat(outs, dim=0)
