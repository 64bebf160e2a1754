"""train/vae_cache.py: cached posteriors sample the same latents as the VAE, within a memory bound."""

from __future__ import annotations

import pytest
import torch

from modeling.autoencoder import AutoEncoder, AutoEncoderParams
from train.vae_cache import PosteriorCache, vae_fingerprint


@pytest.fixture(scope="module")
def vae() -> AutoEncoder:
    torch.manual_seed(0)
    params = AutoEncoderParams(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=4)
    return AutoEncoder(params).eval()


def test_cached_encode_matches_vae_encode(vae):
    imgs = torch.rand(3, 3, 32, 32) * 2 - 1
    batch = torch.stack([imgs[0], imgs[1], imgs[0], imgs[2]])  # a repeated image in one batch
    cache = PosteriorCache(10**6)
    for seed in (1, 2):  # first call fills the cache, the second reads it
        want = vae.encode(batch, generator=torch.Generator().manual_seed(seed))
        got = cache.encode(vae, batch, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(cache) == 3 and cache.misses == 4 and cache.hits == 4


def test_cache_keys_on_content_and_padding(vae):
    a = torch.zeros(3, 32, 32)
    b = a.clone()
    b[0, 0, 0] = 1e-3
    assert PosteriorCache.key(a) == PosteriorCache.key(a.clone())
    assert PosteriorCache.key(a) != PosteriorCache.key(b)
    assert PosteriorCache.key(a) != PosteriorCache.key(torch.zeros(3, 32, 48))  # another canvas


def test_cache_stays_within_its_bound(vae):
    cache = PosteriorCache(10**9)
    cache.encode(vae, torch.rand(1, 3, 32, 32), None)
    entry = cache.bytes
    small = PosteriorCache(2 * entry)
    imgs = torch.rand(5, 3, 32, 32)
    for i in range(5):
        small.encode(vae, imgs[i : i + 1], None)
    assert len(small) == 2 and small.bytes == 2 * entry
    small.encode(vae, imgs[4:5], None)  # the most recent one is still there
    assert small.hits == 1
    with pytest.raises(ValueError):
        PosteriorCache(0)


def test_saved_cache_reloads_only_for_its_own_vae(vae, tmp_path, caplog):
    imgs = torch.rand(3, 3, 32, 32)
    cache = PosteriorCache(10**6)
    cache.encode(vae, imgs, None)
    path = str(tmp_path / "cache.safetensors")
    fp = vae_fingerprint(vae)
    cache.save(path, fp)

    warm = PosteriorCache(10**6)
    assert warm.load(path, fp) == 3
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(
        warm.encode(vae, imgs, g), vae.encode(imgs, generator=torch.Generator().manual_seed(7))
    )
    assert (warm.hits, warm.misses) == (3, 0)

    other = AutoEncoder(vae.params).eval()  # fresh random weights: another VAE
    assert vae_fingerprint(other) != fp
    assert PosteriorCache(10**6).load(path, vae_fingerprint(other)) == 0
    assert "another VAE" in caplog.text

    with open(path, "wb") as f:
        f.write(b"not a safetensors file")
    assert PosteriorCache(10**6).load(path, fp) == 0
    assert "unreadable" in caplog.text
    assert PosteriorCache(10**6).load(str(tmp_path / "missing.safetensors"), fp) == 0
