"""Attention backends agree with a naive reference (fp32, CPU); flash-attn vs SDPA on CUDA when present."""

from __future__ import annotations

import pytest
import torch

from modeling.attention import HAS_FLASH_ATTN, masked_attention, set_force_sdpa, varlen_attention


def naive(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, 1)
    v = v.repeat_interleave(rep, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    s = s.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_naive(causal):
    g = torch.Generator().manual_seed(0)
    lq, lk = [3, 5, 1], [7, 5, 4]
    q = torch.randn(sum(lq), 4, 8, generator=g)
    k = torch.randn(sum(lk), 2, 8, generator=g)
    v = torch.randn(sum(lk), 2, 8, generator=g)
    cq = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
    ck = torch.tensor([0, 7, 12, 16], dtype=torch.int32)
    out = varlen_attention(q, k, v, cq, ck, max(lq), max(lk), causal=causal)
    for i in range(3):
        qs, qe, ks, ke = int(cq[i]), int(cq[i + 1]), int(ck[i]), int(ck[i + 1])
        m = torch.ones(qe - qs, ke - ks, dtype=torch.bool)
        if causal:  # bottom-right aligned
            m = torch.arange(ke - ks)[None] <= torch.arange(qe - qs)[:, None] + (ke - ks) - (qe - qs)
        torch.testing.assert_close(out[qs:qe], naive(q[qs:qe], k[ks:ke], v[ks:ke], m), atol=1e-5, rtol=1e-5)


def test_masked_matches_naive():
    g = torch.Generator().manual_seed(1)
    lens = [4, 6]
    q = torch.randn(10, 4, 8, generator=g)
    k = torch.randn(10, 2, 8, generator=g)
    v = torch.randn(10, 2, 8, generator=g)
    masks = [torch.tril(torch.ones(4, 4, dtype=torch.bool)), torch.rand(6, 6, generator=g) > 0.3]
    masks[1] |= torch.eye(6, dtype=torch.bool)
    out = masked_attention(q, k, v, lens, masks)
    torch.testing.assert_close(out[:4], naive(q[:4], k[:4], v[:4], masks[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[4:], naive(q[4:], k[4:], v[4:], masks[1]), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_FLASH_ATTN), reason="needs CUDA and flash-attn")
def test_flash_matches_sdpa_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(300, 8, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(500, 2, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(500, 2, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    cq = torch.tensor([0, 100, 300], dtype=torch.int32, device="cuda")
    ck = torch.tensor([0, 250, 500], dtype=torch.int32, device="cuda")
    a = varlen_attention(q, k, v, cq, ck, 200, 250, causal=True)
    set_force_sdpa(True)
    try:
        b = varlen_attention(q, k, v, cq, ck, 200, 250, causal=True)
    finally:
        set_force_sdpa(False)
    torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
