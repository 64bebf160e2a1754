"""FLUX autoencoder: geometry inference, strict loading and parity with the bagel-tiny golden fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from modeling.autoencoder import AutoEncoder, AutoEncoderParams, infer_ae_params, load_autoencoder
from modeling.errors import CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "bagel-tiny"
AE_PATH = FIXTURE / "checkpoint" / "ae.safetensors"


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "cases.safetensors"))


@pytest.fixture(scope="module")
def ae() -> AutoEncoder:
    return load_autoencoder(str(AE_PATH))


def _pixels(path: Path) -> torch.Tensor:
    """PNG -> [1, 3, H, W] in [-1, 1], the way ToTensor + Normalize(0.5, 0.5) produce it."""
    u8 = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    return ((u8.float() / 255 - 0.5) / 0.5)[None]


def test_infer_params_fixture() -> None:
    p = infer_ae_params(load_file(str(AE_PATH)))
    assert (p.ch, p.ch_mult, p.num_res_blocks, p.z_channels) == (32, (1, 1, 1, 2), 1, 16)
    assert (p.in_channels, p.out_ch, p.downsample) == (3, 3, 8)
    assert (p.scale_factor, p.shift_factor) == (0.3611, 0.1159)


@pytest.mark.parametrize(
    "params",
    [
        AutoEncoderParams(),  # released FLUX geometry (built on meta: no memory, no init)
        AutoEncoderParams(ch=32, ch_mult=(1, 2), num_res_blocks=3, z_channels=4, downsample=2),
    ],
)
def test_infer_params_roundtrip(params: AutoEncoderParams) -> None:
    with torch.device("meta"):
        model = AutoEncoder(params)
    assert infer_ae_params(model.state_dict()) == params


def test_released_geometry_keys_match_spec() -> None:
    with torch.device("meta"):
        sd = AutoEncoder(AutoEncoderParams()).state_dict()
    assert sd["encoder.conv_out.weight"].shape == (32, 512, 3, 3)
    assert sd["decoder.conv_in.weight"].shape == (512, 16, 3, 3)
    assert "encoder.down.1.block.0.nin_shortcut.weight" in sd
    assert "encoder.down.3.downsample.conv.weight" not in sd
    assert sd["decoder.up.1.block.0.nin_shortcut.weight"].shape == (256, 512, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in sd
    assert "decoder.up.3.block.2.conv2.weight" in sd


def test_keys_match_fixture(ae: AutoEncoder) -> None:
    keys = json.loads((FIXTURE / "keys.json").read_text())["ae.safetensors"]
    sd = ae.state_dict()
    assert set(sd) == set(keys)
    for k, v in sd.items():
        assert list(v.shape) == keys[k]["shape"], k


@pytest.mark.parametrize("i", [0, 1])
def test_encode_reference_parity(ae: AutoEncoder, cases: dict, i: int) -> None:
    x = _pixels(FIXTURE / "images" / f"gen_ref{i}_vae_resized.png")
    assert x.shape == ((1, 3, 512, 688) if i == 0 else (1, 3, 688, 512))
    with torch.no_grad():
        z = ae.encode(x, noise=cases[f"gen.ref{i}.vae_posterior_noise"])
    torch.testing.assert_close(z, cases[f"gen.ref{i}.vae_latent"], atol=1e-4, rtol=1e-4)


def test_decode_parity(ae: AutoEncoder, cases: dict) -> None:
    with torch.no_grad():
        x = ae.decode(cases["gen.vae_decoder_input"])
    torch.testing.assert_close(x, cases["gen.vae_decoded"], atol=1e-4, rtol=1e-4)
    # Pixel conversion of docs/architecture.md §6: truncation, not rounding.
    u8 = (torch.clamp(x * 0.5 + 0.5, 0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0)
    diff = (u8.int() - cases["gen.image_uint8"].int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() < 0.01  # off-by-one only where the value sits on an integer


def test_attention_block_uses_the_fused_kernel() -> None:
    # strided q/k/v send SDPA to its math kernel, which materialises [H*W, H*W] scores (1 GiB per fp32
    # image at 1024²); the block hands it contiguous tensors and gets the fused kernel
    from modeling.autoencoder import AttnBlock

    block = AttnBlock(64).eval()
    x = torch.randn(2, 64, 16, 12)
    with torch.no_grad(), torch.profiler.profile() as prof:
        out = block(x)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert not {"aten::bmm", "aten::baddbmm", "aten::_softmax"} & ops
    with torch.no_grad():  # the same result as attention written out
        hn = block.norm(x)
        q, k, v = (p(hn).flatten(2).transpose(1, 2) for p in (block.q, block.k, block.v))
        att = torch.softmax(q @ k.transpose(1, 2) / 64**0.5, dim=-1) @ v
        ref = x + block.proj_out(att.transpose(1, 2).reshape(x.shape))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_encode_padded_train_batch(ae: AutoEncoder, cases: dict) -> None:
    u8 = cases["train.batch.padded_images_u8"]
    x = torch.zeros(u8.shape)
    for k, (h, w) in enumerate(cases["train.batch.patchified_vae_latent_shapes"].tolist()):
        x[k, :, : h * 16, : w * 16] = (u8[k, :, : h * 16, : w * 16].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        z = ae.encode(x, noise=cases["train.vae_posterior_noise"])
    torch.testing.assert_close(z, cases["train.padded_latent"], atol=1e-4, rtol=1e-4)


def test_encode_sampling_semantics(ae: AutoEncoder) -> None:
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean = ae.encode_mean(x)
        assert mean.shape == (2, 16, 4, 6)
        torch.testing.assert_close(ae.encode(x, noise=torch.zeros(mean.shape)), mean)
        # The generator path draws randn(mean.shape) on the CPU in float32.
        z_gen = ae.encode(x, generator=torch.Generator().manual_seed(5))
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(z_gen, ae.encode(x, noise=eps))
        assert not torch.allclose(z_gen, mean)
        # Without a generator the global CPU generator is used (upstream's randn_like on the CPU).
        torch.manual_seed(11)
        z1 = ae.encode(x)
        torch.manual_seed(11)
        torch.testing.assert_close(ae.encode(x), z1)
        with pytest.raises(ValueError, match="noise"):
            ae.encode(x, noise=torch.zeros(1, 16, 4, 6))


def test_bf16_load_runs(cases: dict) -> None:
    ae16 = load_autoencoder(str(AE_PATH), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ae16.parameters())
    with torch.no_grad():
        x = ae16.decode(cases["gen.vae_decoder_input"])
    assert x.dtype == torch.bfloat16
    torch.testing.assert_close(x.float(), cases["gen.vae_decoded"], atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------- loader errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "ae.safetensors"
    with pytest.raises(CheckpointError, match="not found.*ae.safetensors"):
        load_autoencoder(str(path))


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "ae.safetensors"
    data = AE_PATH.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read") as e:
        load_autoencoder(str(path))
    assert str(path) in str(e.value)


def _write_modified(tmp_path: Path, edit) -> Path:
    sd = load_file(str(AE_PATH))
    edit(sd)
    path = tmp_path / "ae_modified.safetensors"
    save_file(sd, str(path))
    return path


def test_wrong_shape(tmp_path: Path) -> None:
    key = "decoder.mid.attn_1.q.weight"
    path = _write_modified(tmp_path, lambda sd: sd.__setitem__(key, torch.zeros(64, 64, 3, 3)))
    with pytest.raises(CheckpointError, match="shape mismatches") as e:
        load_autoencoder(str(path))
    assert key in str(e.value) and str(path) in str(e.value)


def test_extra_key(tmp_path: Path) -> None:
    path = _write_modified(tmp_path, lambda sd: sd.__setitem__("encoder.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match="unexpected keys: encoder.extra.weight") as e:
        load_autoencoder(str(path))
    assert str(path) in str(e.value)


def test_missing_key(tmp_path: Path) -> None:
    path = _write_modified(tmp_path, lambda sd: sd.pop("decoder.norm_out.bias"))
    with pytest.raises(CheckpointError, match="missing keys: decoder.norm_out.bias"):
        load_autoencoder(str(path))


def test_missing_geometry_key(tmp_path: Path) -> None:
    path = _write_modified(tmp_path, lambda sd: sd.pop("encoder.conv_in.weight"))
    with pytest.raises(CheckpointError, match="encoder.conv_in.weight") as e:
        load_autoencoder(str(path))
    assert str(path) in str(e.value)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b).norm() / b.norm())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu(cases: dict) -> None:
    gpu = load_autoencoder(str(AE_PATH), device="cuda", dtype=torch.bfloat16)
    x = _pixels(FIXTURE / "images" / "gen_ref0_vae_resized.png")
    with torch.no_grad():
        z = gpu.encode(x.cuda(), noise=cases["gen.ref0.vae_posterior_noise"])
        assert z.is_cuda and z.dtype == torch.bfloat16
        # bf16 through ~20 random conv layers drifts by ~2% (single elements by up to 0.25 of a
        # range of +-7.6), so compare relative norms; a wrong layer would be off by ~100%.
        assert _rel_err(z, cases["gen.ref0.vae_latent"]) < 5e-2
        d = gpu.decode(cases["gen.vae_decoder_input"].cuda())
        assert _rel_err(d, cases["gen.vae_decoded"]) < 3e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_without_tf32_matches_cpu(cases: dict) -> None:
    gpu = load_autoencoder(str(AE_PATH), device="cuda")
    x = _pixels(FIXTURE / "images" / "gen_ref0_vae_resized.png")
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # cuDNN convs default to TF32 (~1e-3 relative error)
    try:
        with torch.no_grad():
            z = gpu.encode(x.cuda(), noise=cases["gen.ref0.vae_posterior_noise"])
            d = gpu.decode(cases["gen.vae_decoder_input"].cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = old
    torch.testing.assert_close(z.cpu(), cases["gen.ref0.vae_latent"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(d.cpu(), cases["gen.vae_decoded"], atol=1e-3, rtol=1e-3)
