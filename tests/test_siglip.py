"""SigLIP NaViT encoder and 2-D position ids: parity with the bagel-tiny golden fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from modeling.sequence import flattened_position_ids, patchify
from modeling.siglip import SiglipVisionConfig, SiglipVisionModel, pack_images

FIXTURE = Path(__file__).parent / "fixtures" / "bagel-tiny"
CKPT = FIXTURE / "checkpoint"


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "cases.safetensors"))


@pytest.fixture(scope="module")
def vit() -> SiglipVisionModel:
    cfg = SiglipVisionConfig.from_json(CKPT / "vit_config.json")
    cfg.num_hidden_layers -= 1  # the loaders' "-1 layer" rule: the file says 3, 2 are stored
    prefix = "vit_model."
    sd = {
        k[len(prefix) :]: v
        for k, v in load_file(str(CKPT / "model.safetensors")).items()
        if k.startswith(prefix)
    }
    model = SiglipVisionModel(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _pixels(path: Path) -> torch.Tensor:
    u8 = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    return (u8.float() / 255 - 0.5) / 0.5


def test_config_from_json(tmp_path: Path) -> None:
    cfg = SiglipVisionConfig.from_json(CKPT / "vit_config.json")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        32,
        64,
        3,
        4,
    )
    assert (cfg.patch_size, cfg.image_size, cfg.layer_norm_eps, cfg.hidden_act) == (
        14,
        980,
        1e-6,
        "gelu_pytorch_tanh",
    )
    bad = tmp_path / "vit_config.json"
    bad.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="intermediate_size") as e:
        SiglipVisionConfig.from_json(bad)
    assert str(bad) in str(e.value)


def test_state_dict_keys_match_checkpoint(vit: SiglipVisionModel) -> None:
    keys = json.loads((FIXTURE / "keys.json").read_text())["model.safetensors"]
    stored = {k[len("vit_model.") :]: v["shape"] for k, v in keys.items() if k.startswith("vit_model.")}
    assert {k: list(v.shape) for k, v in vit.state_dict().items()} == stored


def test_position_ids_extrapolate(cases: dict) -> None:
    ids = flattened_position_ids(37, 49, 70)  # 518 x 686 pixels
    assert torch.equal(ids, cases["gen.ctx1.packed_vit_position_ids"])
    shapes = cases["train.batch.patchified_vit_token_shapes"].tolist()
    packed = torch.cat([flattened_position_ids(h, w, 70) for h, w in shapes])
    assert torch.equal(packed, cases["train.batch.packed_vit_position_ids"])
    lat = cases["train.batch.patchified_vae_latent_shapes"].tolist()
    packed = torch.cat([flattened_position_ids(h, w, 64) for h, w in lat])
    assert torch.equal(packed, cases["train.batch.packed_latent_position_ids"])
    with pytest.raises(ValueError, match="exceeds"):
        flattened_position_ids(71, 3, 70)


def test_position_ids_interpolate() -> None:
    # A grid the size of the table maps onto itself.
    assert torch.equal(
        flattened_position_ids(70, 70, 70, interpolate=True), flattened_position_ids(70, 70, 70)
    )
    # A grid twice the table side: consecutive pairs of rows/cols share one bucket.
    ids = flattened_position_ids(8, 8, 4, interpolate=True).view(8, 8)
    assert ids[:, 0].tolist() == [0, 0, 4, 4, 8, 8, 12, 12]
    assert ids[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # A small grid spreads over the table: rows at fractions 0, 1/3, 2/3 -> buckets 0, 23, 46 of 70.
    ids = flattened_position_ids(3, 2, 70, interpolate=True).view(3, 2)
    assert ids[:, 0].tolist() == [0, 23 * 70, 46 * 70]
    assert ids[0].tolist() == [0, 35]


def test_patchify_matches_conv() -> None:
    """A Linear over patchified pixels equals the Conv2d whose kernel is permuted to (row, col, channel)."""
    g = torch.Generator().manual_seed(0)
    p, hid = 14, 8
    img = torch.randn(3, 28, 42, generator=g)
    conv_w = torch.randn(hid, 3, p, p, generator=g)
    patches = patchify(img, p)
    assert patches.shape == (6, 588)
    lin = patches @ conv_w.permute(0, 2, 3, 1).reshape(hid, -1).T
    ref = F.conv2d(img[None], conv_w, stride=p)[0].flatten(1).T  # [h*w, hid], row-major
    torch.testing.assert_close(lin, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.zeros(3, 20, 28), p)


def test_vit_parity(vit: SiglipVisionModel, cases: dict) -> None:
    img = _pixels(FIXTURE / "images" / "gen_ref0_vit_resized.png")
    assert img.shape == (3, 518, 686)
    pixels, pos, cu, max_len = pack_images([img])
    assert pixels.shape == (1813, 588) and cu.tolist() == [0, 1813] and max_len == 1813
    assert torch.equal(pos, cases["gen.ctx1.packed_vit_position_ids"])
    with torch.no_grad():
        out = vit(pixels, pos, cu, max_len)
    torch.testing.assert_close(out, cases["gen.ref0.vit_last_hidden"], atol=1e-4, rtol=1e-4)


def test_packed_equals_separate(vit: SiglipVisionModel) -> None:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 14 * h, 14 * w, generator=g) * 2 - 1 for h, w in [(5, 7), (3, 2), (6, 4)]]
    with torch.no_grad():
        packed = vit(*pack_images(images))
        alone = torch.cat([vit(*pack_images([im])) for im in images])
        # Sanity check that the segments matter: one segment over everything gives different numbers.
        pixels, pos, _, _ = pack_images(images)
        n = pixels.shape[0]
        merged = vit(pixels, pos, torch.tensor([0, n], dtype=torch.int32), n)
    assert packed.shape == (35 + 6 + 24, 32)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, alone, atol=1e-3)


def test_inconsistent_packing_rejected(vit: SiglipVisionModel) -> None:
    pixels, pos, cu, m = pack_images([torch.zeros(3, 28, 28)])
    with pytest.raises(ValueError, match="inconsistent"):
        vit(pixels, pos[:-1], cu, m)
    with pytest.raises(ValueError, match="inconsistent"):
        vit(pixels, pos, torch.tensor([0, 3], dtype=torch.int32), m)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16(vit: SiglipVisionModel, cases: dict) -> None:
    import copy

    gpu = copy.deepcopy(vit).to("cuda", torch.bfloat16)
    img = _pixels(FIXTURE / "images" / "gen_ref0_vit_resized.png")
    pixels, pos, cu, m = pack_images([img, img[:, :140, :280]])
    with torch.no_grad():
        out = gpu(pixels.cuda(), pos.cuda(), cu.cuda(), m)
    assert out.dtype == torch.bfloat16 and out.shape == (1813 + 200, 32)
    torch.testing.assert_close(
        out[:1813].float().cpu(), cases["gen.ref0.vit_last_hidden"], atol=0.15, rtol=0.05
    )
