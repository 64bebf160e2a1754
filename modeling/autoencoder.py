"""FLUX autoencoder (the VAE of BAGEL / Scone), checkpoint-compatible with ``ae.safetensors``.

Docs: docs/vision.md. Pixels [B, 3, H, W] in [-1, 1] <-> latents [B, z_channels, H/8, W/8] (for the released
4-level geometry). The encoder outputs 2*z_channels channels = (mean, logvar) of a diagonal Gaussian; like
upstream, ``encode`` SAMPLES that posterior (also at inference), then applies ``scale * (z - shift)``.

Layout (state-dict key prefixes in brackets):

    encoder: conv_in -> levels i=0..L-1 [down.{i}]: num_res_blocks ResnetBlocks [block.{j}],
             then a stride-2 conv [downsample.conv] except on the last level
             -> mid [mid.block_1, mid.attn_1, mid.block_2] -> norm_out -> swish -> conv_out
    decoder: conv_in -> mid -> levels i=L-1..0 [up.{i}]: num_res_blocks+1 ResnetBlocks [block.{j}],
             then nearest-x2 + conv [upsample.conv] except on level 0 -> norm_out -> swish -> conv_out

All norms are GroupNorm(32, eps=1e-6). ``torch.no_grad`` is the caller's job.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from modeling.errors import CheckpointError, check_finite, check_state_keys, first_keys

logger = logging.getLogger(__name__)


@dataclass
class AutoEncoderParams:
    """Geometry of the autoencoder. Defaults are the released FLUX values (hard-coded upstream)."""

    resolution: int = 256  # unused by the network; kept because upstream carries it
    in_channels: int = 3
    downsample: int = 8
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    # x is always a fresh norm output here, so without autograd we can overwrite it and save a
    # full-resolution activation (128 ch x 1024^2 fp32 = 512 MiB per copy for the real VAE).
    return F.silu(x, inplace=not torch.is_grad_enabled())


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus a (1x1 ``nin_shortcut`` if needed) residual."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, 1x1-conv projections, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, H*W, C]; SDPA's default scale is 1/sqrt(C) as in the spec. Contiguous:
        # with a strided last dimension SDPA falls back to its math kernel, which materialises the
        # [H*W, H*W] scores (1 GiB per fp32 image at 1024²) and takes 1.4x the fused kernel's time on a CPU.
        q, k, v = (
            p(hn).flatten(2).transpose(1, 2).contiguous().unsqueeze(1) for p in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one pixel, then a 3x3 stride-2 conv (halves H and W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, 2*z_channels, H/2^(L-1), W/2^(L-1)] (mean and logvar stacked)."""

    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        self.conv_in = nn.Conv2d(p.in_channels, p.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = p.ch
        for i, mult in enumerate(p.ch_mult):
            level = nn.Module()
            block_out = p.ch * mult
            level.block = nn.ModuleList()
            for _ in range(p.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            if i != len(p.ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = MidBlock(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * p.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, out_ch, h*2^(L-1), w*2^(L-1)]."""

    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        block_in = p.ch * p.ch_mult[-1]
        self.conv_in = nn.Conv2d(p.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in)
        # Built from the highest level down (that is the order in which channels flow), but stored so
        # that up[i] is level i, matching the checkpoint keys.
        levels: list[nn.Module] = []
        for i in reversed(range(len(p.ch_mult))):
            level = nn.Module()
            block_out = p.ch * p.ch_mult[i]
            level.block = nn.ModuleList()
            for _ in range(p.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, p.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """FLUX VAE with a sampled posterior. Submodules ``encoder`` / ``decoder`` match ``ae.safetensors``."""

    def __init__(self, params: AutoEncoderParams):
        super().__init__()
        self.params = params
        self.scale_factor = params.scale_factor
        self.shift_factor = params.shift_factor
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, H, W] in [-1, 1] -> unscaled posterior (mean, logvar), each [B, z, H/8, W/8]."""
        w = self.encoder.conv_in.weight
        mean, logvar = torch.chunk(self.encoder(x.to(device=w.device, dtype=w.dtype)), 2, dim=1)
        return mean, logvar

    def encode(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> sampled, scaled latent [B, z, H/8, W/8].

        z = scale * (mean + exp(0.5 * logvar) * eps - shift). ``eps`` is ``noise`` if given (same shape as
        the latent), else ``torch.randn`` drawn on the CPU in float32 with ``generator`` (the global
        default CPU generator when None) and then moved to the latent's device. Drawing on the CPU is what
        upstream does (its VAE lives on the CPU), so a seeded run consumes the same random stream whatever
        device this module is on. The posterior arithmetic is done in float32; the result has the
        module's dtype.
        """
        mean, logvar = self.posterior(x)
        return self.sample_posterior(mean, logvar, noise, generator)

    def sample_posterior(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The second half of ``encode``: a scaled sample of the posterior (mean, logvar) [B, z, h, w].

        Split out so a frozen VAE's posteriors can be cached (train/vae_cache.py) and sampled afresh.
        """
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device="cpu")
        elif noise.shape != mean.shape:
            raise ValueError(f"posterior noise has shape {tuple(noise.shape)}, expected {tuple(mean.shape)}")
        noise = noise.to(device=mean.device, dtype=torch.float32)
        z = mean.float() + torch.exp(0.5 * logvar.float()) * noise
        return (self.scale_factor * (z - self.shift_factor)).to(mean.dtype)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic variant of ``encode``: the posterior mean, scaled. [B, 3, H, W] -> [B, z, H/8, W/8]."""
        mean, _ = self.posterior(x)
        return self.scale_factor * (mean - self.shift_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, z, h, w] -> pixels [B, 3, 8h, 8w], roughly in [-1, 1] (not clamped)."""
        w = self.decoder.conv_in.weight
        z = z.to(device=w.device, dtype=w.dtype)
        return self.decoder(z / self.scale_factor + self.shift_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the sampled posterior: decode(encode(x))."""
        return self.decode(self.encode(x))


_LEVEL_KEY = re.compile(r"^encoder\.down\.(\d+)\.")
_BLOCK_KEY = re.compile(r"^encoder\.down\.0\.block\.(\d+)\.")


def infer_ae_params(state_dict: dict[str, torch.Tensor]) -> AutoEncoderParams:
    """Derive the geometry (ch, ch_mult, num_res_blocks, z/in/out channels) from ``ae.safetensors`` tensors.

    Scale and shift are not stored anywhere; they stay FLUX's. Raises KeyError naming a missing key.
    """

    def shape(key: str) -> torch.Size:
        if key not in state_dict:
            raise KeyError(f"cannot infer autoencoder geometry: key '{key}' is missing")
        return state_dict[key].shape

    ch, in_channels = shape("encoder.conv_in.weight")[:2]
    levels = sorted({int(m.group(1)) for k in state_dict if (m := _LEVEL_KEY.match(k))})
    if not levels or levels != list(range(len(levels))):
        raise KeyError(f"cannot infer autoencoder geometry: encoder.down levels are {levels}")
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise KeyError(f"cannot infer autoencoder geometry: encoder.down.0 blocks are {blocks}")
    ch_mult = []
    for i in levels:
        out = shape(f"encoder.down.{i}.block.{len(blocks) - 1}.conv2.weight")[0]
        if out % ch:
            raise KeyError(f"encoder.down.{i} has {out} channels, not a multiple of ch={ch}")
        ch_mult.append(out // ch)
    return AutoEncoderParams(
        in_channels=int(in_channels),
        downsample=2 ** (len(levels) - 1),
        ch=int(ch),
        out_ch=int(shape("decoder.conv_out.weight")[0]),
        ch_mult=tuple(ch_mult),
        num_res_blocks=len(blocks),
        z_channels=int(shape("encoder.conv_out.weight")[0]) // 2,
    )


def load_autoencoder(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AutoEncoder:
    """Read ``ae.safetensors`` (no pickle), infer its geometry, and return the AutoEncoder in eval mode.

    The module is built on the meta device and the file's tensors are assigned directly (no random init,
    no second copy). Strict: any missing / unexpected key or shape mismatch, a missing file or an
    unreadable safetensors file raises CheckpointError naming the file (and keys). Upstream runs the VAE
    in float32 on the CPU; other devices/dtypes are allowed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"autoencoder checkpoint not found: {path}")
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read autoencoder checkpoint {path}: {e}") from e
    for name, t in state.items():
        check_finite(name, t, path)
    try:
        params = infer_ae_params(state)
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]}") from e

    with torch.device("meta"):
        model = AutoEncoder(params)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = {k: v.shape for k, v in state.items()}
    check_state_keys(f"autoencoder checkpoint {path} does not match the inferred {params}", expected, found)
    bad_dtype = sorted(k for k, v in state.items() if not v.is_floating_point())
    if bad_dtype:
        raise CheckpointError(f"autoencoder checkpoint {path}: non-floating tensors {first_keys(bad_dtype)}")

    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    logger.info("loaded autoencoder %s: %s, %s on %s", path, params, dtype, device)
    return model.eval()
