"""The head-major KV cache and the cached attention plan: appends in place, prefixes and snapshots, the
scratch tail of a denoising query, and attention equal to a naive softmax over cache + new tokens."""

from __future__ import annotations

import pytest
import torch

from inference.context import Context
from modeling.kv_cache import CachedAttention, KVCache, Segment

H, HKV, D = 4, 2, 8


def _kv(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, HKV, D, generator=g), torch.randn(n, HKV, D, generator=g)


def _forward(cache, kv_len, q, k, v, update, causal=False):
    plan = CachedAttention([Segment(q.shape[0], cache, kv_len)], causal=causal, update_cache=update)
    plan.reserve(HKV, D, torch.float32, torch.device("cpu"))
    out = plan.layer(0).attend(q, k, v)
    plan.commit()
    return out


def _naive(q, k, v, causal=False):
    k, v = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) / D**0.5
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        s = s.masked_fill(
            ~(torch.arange(lk)[None] <= torch.arange(lq)[:, None] + lk - lq)[None], float("-inf")
        )
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("causal", [False, True])
def test_appends_grow_in_place_and_attention_sees_cache_plus_new_tokens(causal):
    cache = KVCache(1)
    ks, vs = [], []
    for step, n in enumerate([5, 300, 1, 3]):  # 300 forces a reallocation past the first 256 slots
        k, v = _kv(n, step)
        q = torch.randn(n, H, D, generator=torch.Generator().manual_seed(10 + step))
        out = _forward(cache, len(cache), q, k, v, update=True, causal=causal)
        ks.append(k)
        vs.append(v)
        torch.testing.assert_close(out, _naive(q, torch.cat(ks), torch.cat(vs), causal), atol=1e-5, rtol=1e-5)
    assert len(cache) == 309 and cache.capacity >= 309
    got_k, got_v = cache.get(0, 309)
    assert torch.equal(got_k, torch.cat(ks).transpose(0, 1)) and torch.equal(
        got_v, torch.cat(vs).transpose(0, 1)
    )


def test_a_denoising_query_uses_the_tail_without_appending():
    cache = KVCache(1)
    k, v = _kv(6, 0)
    _forward(cache, 0, torch.randn(6, H, D), k, v, update=True)
    kq, vq = _kv(4, 1)
    q = torch.randn(4, H, D)
    for _ in range(2):  # the same step twice: the scratch tail is overwritten, the prefix untouched
        out = _forward(cache, 6, q, kq, vq, update=False)
        torch.testing.assert_close(
            out, _naive(q, torch.cat([k, kq]), torch.cat([v, vq])), atol=1e-5, rtol=1e-5
        )
    assert len(cache) == 6
    assert torch.equal(cache.get(0, 6)[0], k.transpose(0, 1))


def test_a_snapshot_behind_its_shared_cache_copies_its_prefix_before_writing():
    full = Context.empty(1, "full")
    k, v = _kv(5, 0)
    _forward(full.cache, 0, torch.randn(5, H, D), k, v, update=True)
    full.kv_len = 5
    no_text = full.snapshot("no_text")
    _forward(full.cache, 5, torch.randn(3, H, D), *_kv(3, 1), update=True)  # the instruction, in `full` only
    full.kv_len = 8
    no_text.own_tail(room=4)
    assert no_text.cache is not full.cache and len(no_text.cache) == 5
    assert torch.equal(no_text.cache.get(0, 5)[0], full.cache.get(0, 5)[0])
    before = full.cache.get(0, 8)[0].clone()
    _forward(no_text.cache, 5, torch.randn(4, H, D), *_kv(4, 2), update=False)
    assert torch.equal(full.cache.get(0, 8)[0], before)  # the shared cache was never written
    full.own_tail()
    assert full.cache.keys[0] is not None and len(full.cache) == 8  # already the owner: no copy


def test_two_segments_may_not_write_one_cache():
    cache = KVCache(1)
    with pytest.raises(ValueError, match="same cache"):
        CachedAttention([Segment(2, cache, 0), Segment(2, cache, 0)])
