"""SigLIP NaViT vision encoder (``vit_model`` of BAGEL / Scone); docs/vision.md.

Images of different sizes are patchified, concatenated along one token axis and described by
``cu_seqlens`` (prefix sums of patches per image); attention never crosses images. Per patch:

    x = patch_embedding(pixels) + position_embedding[row * 70 + col]
    for each layer:  x = x + attn(layer_norm1(x));  x = x + fc2(gelu_tanh(fc1(layer_norm2(x))))
    out = post_layernorm(x)                                        # no pooling head

The patch embedding is a Linear over (patch_row, patch_col, channel)-ordered pixels, the form the
checkpoint stores. There is no rotary embedding (upstream forces ``rope=False``).
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from modeling.attention import varlen_attention
from modeling.sequence import flattened_position_ids, patchify


@dataclass
class SiglipVisionConfig:
    """SigLIP vision geometry. ``num_hidden_layers`` is used as given (the loader applies the -1)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int = 14
    image_size: int = 980
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} not a multiple of patch_size {self.patch_size}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r} (known: {sorted(_ACTIVATIONS)})")

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SiglipVisionConfig:
        """Read ``vit_config.json``; fields this class does not know (model_type, rope, ...) are ignored."""
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(raw))
        if missing:
            raise ValueError(f"{os.fspath(path)}: missing required SigLIP config fields {missing}")
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)}: invalid SigLIP config: {e}") from e


_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


def pack_images(
    images: list[torch.Tensor], patch_size: int = 14, max_per_side: int = 70, interpolate: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pack normalised images [3, H_i, W_i] for ``SiglipVisionModel.forward``.

    Returns (pixels [N, 3p²], position_ids [N], cu_seqlens int32 [n_img + 1], max_seqlen).
    """
    if not images:
        raise ValueError("pack_images needs at least one image")
    pixels, pos, lens = [], [], []
    for img in images:
        _, h, w = img.shape
        pixels.append(patchify(img, patch_size))
        pos.append(flattened_position_ids(h // patch_size, w // patch_size, max_per_side, interpolate))
        lens.append(pixels[-1].shape[0])
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens), 0)
    return torch.cat(pixels), torch.cat(pos), cu, max(lens)


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Linear(cfg.num_channels * cfg.patch_size**2, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_patches_per_side**2, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """[N, 3p²], [N] -> [N, Hv]."""
        return self.patch_embedding(pixels) + self.position_embedding(position_ids)


class SiglipAttention(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """[N, Hv] -> [N, Hv]; bidirectional attention inside each image segment of ``cu_seqlens``."""
        n = x.shape[0]
        q, k, v = (
            p(x).view(n, self.num_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=False)
        return self.out_proj(out.reshape(n, -1))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cu_seqlens, max_seqlen)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class SiglipVisionModel(nn.Module):
    """Packed SigLIP encoder; state-dict keys are ``vision_model.*`` (the checkpoint's ``vit_model.`` stripped)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = SiglipVisionTransformer(config)

    def forward(
        self,
        packed_pixel_values: torch.Tensor,
        packed_flattened_position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
    ) -> torch.Tensor:
        """Patches [N, 3p²] (pixels in [-1, 1]), position ids [N], cu_seqlens int32 [n_img + 1] -> [N, Hv]."""
        vm = self.vision_model
        n = packed_pixel_values.shape[0]
        if packed_flattened_position_ids.shape != (n,) or int(cu_seqlens[-1]) != n or int(cu_seqlens[0]) != 0:
            raise ValueError(
                f"inconsistent packing: {n} patches, position ids {tuple(packed_flattened_position_ids.shape)}, "
                f"cu_seqlens from {int(cu_seqlens[0])} to {int(cu_seqlens[-1])}"
            )
        w = vm.embeddings.patch_embedding.weight
        x = vm.embeddings(
            packed_pixel_values.to(device=w.device, dtype=w.dtype), packed_flattened_position_ids.to(w.device)
        )
        for layer in vm.encoder.layers:
            x = layer(x, cu_seqlens, max_seqlen)
        return vm.post_layernorm(x)
