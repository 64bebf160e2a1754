"""Bad input to the API, conversions, seeds and batching (small transforms keep these fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference.pipeline import GenerationRequest, SconePipeline

FAST = dict(height=32, width=32, num_timesteps=3)


@pytest.fixture(scope="module")
def small(pipe):
    # Same weights, small image transforms: references become 32..64 px instead of >= 512 px.
    return SconePipeline(pipe.loaded, vae_transform=(64, 32, 16), vit_transform=(56, 28, 14))


def _img(mode="RGB", size=(40, 30), color=(200, 30, 30)):
    im = Image.new("RGB", size, color)
    for x in range(10, 20):
        for y in range(5, 15):
            im.putpixel((x, y), (10, 200, 10))
    return im.convert(mode) if mode != "RGB" else im


def test_seed_reproducible_and_distinct(small):
    a = small.generate(images=[_img()], prompt="a red box", seed=7, **FAST)
    b = small.generate(images=[_img()], prompt="a red box", seed=7, **FAST)
    c = small.generate(images=[_img()], prompt="a red box", seed=8, **FAST)
    assert torch.equal(a.latent, b.latent)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(a.latent, c.latent)


def test_batch_equals_single_requests(small):
    reqs = [
        GenerationRequest([_img()], "a red box", seed=1),
        GenerationRequest([_img(size=(30, 40))], "two", seed=2),
    ]
    batched = small.generate_batch(reqs, **FAST)
    for req, out in zip(reqs, batched):
        single = small.generate(images=req.images, prompt=req.prompt, seed=req.seed, **FAST)
        torch.testing.assert_close(out.latent, single.latent, atol=1e-4, rtol=1e-4)


def test_batched_cfg_equals_serial(small):
    a = small.generate(images=[_img()], prompt="x", seed=3, batch_cfg=True, **FAST)
    b = small.generate(images=[_img()], prompt="x", seed=3, batch_cfg=False, **FAST)
    torch.testing.assert_close(a.latent, b.latent, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "LA"])
def test_image_modes_are_converted(small, mode, tmp_path):
    im = _img(mode)
    path = tmp_path / f"im.{'jpg' if mode == 'CMYK' else 'png'}"
    im.save(path)
    out = small.generate(images=[str(path)], prompt="convert me", seed=0, **FAST)
    assert out.image.mode == "RGB" and out.image.size == (32, 32)


def test_rgba_composited_on_white():
    from data.transforms import pil_img2rgb

    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert pil_img2rgb(im).getpixel((0, 0)) == (255, 255, 255)


def test_missing_image_path(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        small.generate(images=[str(tmp_path / "nope.png")], prompt="x", **FAST)


def test_unreadable_image(small, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="bad.png"):
        small.generate(images=[str(bad)], prompt="x", **FAST)


@pytest.mark.parametrize("prompt", ["", "   ", None])
def test_empty_prompt(small, prompt):
    with pytest.raises(ValueError, match="prompt"):
        small.generate(images=[_img()], prompt=prompt, **FAST)


@pytest.mark.parametrize("hw", [(30, 32), (32, 40), (0, 32)])
def test_size_not_multiple_of_16(small, hw):
    with pytest.raises(ValueError, match="multiples of 16"):
        small.generate(images=[_img()], prompt="x", height=hw[0], width=hw[1], num_timesteps=2)


def test_size_above_max(small):
    with pytest.raises(ValueError, match="maximum"):
        small.generate(images=[_img()], prompt="x", height=1040, width=32, num_timesteps=2)


def test_bad_renorm_type(small):
    with pytest.raises(ValueError, match="cfg_renorm_type"):
        small.generate(images=[_img()], prompt="x", cfg_renorm_type="bogus", **FAST)


def test_text_only_generation_and_no_cfg(small):
    out = small.generate(images=[], prompt="just text", seed=1, cfg_text_scale=1.0, **FAST)
    assert out.image.size == (32, 32)


def test_understand_sampling_seeded(small):
    a = small.understand(
        images=[_img()], prompt="what?", max_new_tokens=5, do_sample=True, temperature=1.0, seed=3
    )
    b = small.understand(
        images=[_img()], prompt="what?", max_new_tokens=5, do_sample=True, temperature=1.0, seed=3
    )
    assert a.token_ids == b.token_ids and a.token_ids[0] == small.special.bos_token_id


def test_think_mode_generates_thought_then_image(small):
    out = small.generate(
        images=[_img()], prompt="think first", seed=2, think=True, max_think_tokens=4, **FAST
    )
    assert isinstance(out.thought, str)
    assert out.image.size == (32, 32)
