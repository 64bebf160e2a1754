"""Generation-side and bridge embeddings (docs/architecture.md).

* ``PositionEmbedding``: fixed 2-D sin-cos table, stored in the checkpoint, never trained.
* ``TimestepEmbedder``: 256 sinusoidal features of t in [0, 1] (cos half first) -> MLP.
* ``MLPconnector``: SigLIP features -> LLM width.
* latent (un)patchify between VAE latents [C, 2h, 2w] and packed tokens [h*w, 4C].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_2d_table(grid_side: int, dim: int) -> torch.Tensor:
    """[grid_side**2, dim] table; row r*G+c = [S(c), S(r)], S(u) = [sin(u w_k), cos(u w_k)], w_k = 1e4^(-k/(dim/4))."""
    if dim % 4:
        raise ValueError(f"sin-cos table width must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    coords = np.arange(grid_side, dtype=np.float64)

    def s(u):  # [G] -> [G, dim/2]
        out = np.einsum("m,d->md", u, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    col = np.tile(s(coords)[None, :, :], (grid_side, 1, 1))  # [r, c, dim/2] depends on c
    row = np.tile(s(coords)[:, None, :], (1, grid_side, 1))  # depends on r
    table = np.concatenate([col, row], axis=-1).reshape(grid_side * grid_side, dim)
    return torch.from_numpy(table).float()


class PositionEmbedding(nn.Module):
    def __init__(self, grid_side: int, hidden_size: int):
        super().__init__()
        self.grid_side = grid_side
        self.hidden_size = hidden_size
        self.pos_embed = nn.Parameter(torch.zeros(grid_side**2, hidden_size), requires_grad=False)

    def reset_table(self) -> None:
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_table(self.grid_side, self.hidden_size).to(self.pos_embed))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
        """t [N] -> [N, dim] = [cos(t f), sin(t f)], f_k = exp(-ln(max_period) k / (dim/2)); fp32."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.timestep_features(t, self.frequency_embedding_size)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class MLPconnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        if act != "gelu_pytorch_tanh":
            raise ValueError(f"connector_act {act!r} is not supported (released: gelu_pytorch_tanh)")
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
