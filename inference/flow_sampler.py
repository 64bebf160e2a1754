"""Rectified-flow sampling as pure functions (docs/architecture.md), separate from the network.

Convention (``modeling/flow.py``): ``x_t = (1 - t) x_0 + t eps``; the model predicts ``v = eps - x_0``;
sampling integrates t from 1 to 0 with ``x <- x - v dt``.
"""

from __future__ import annotations

import torch

from modeling.flow import shift_timesteps

RENORM_TYPES = ("global", "channel", "text_channel")


def timestep_schedule(num_timesteps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted ``linspace(1, 0, N)``. Returns (t [N-1], dt [N-1]): the model is evaluated at t[i] and
    the Euler step uses dt[i] = t'[i] - t'[i+1]."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    t = torch.linspace(1, 0, num_timesteps)
    t = shift_timesteps(t, shift)
    return t[:-1], t[:-1] - t[1:]


def cfg_scales_at(
    t: float, cfg_interval: tuple[float, float], cfg_text_scale: float, cfg_img_scale: float
) -> tuple[float, float]:
    """Guidance is active iff ``interval[0] < t <= interval[1]``; outside, both scales are 1."""
    if cfg_interval[0] < t <= cfg_interval[1]:
        return cfg_text_scale, cfg_img_scale
    return 1.0, 1.0


def branches_needed(cfg_text_scale: float, cfg_img_scale: float) -> tuple[bool, bool]:
    """(no-text branch needed, no-image branch needed). With text scale <= 1 no guidance is applied at
    all, so the image branch is skipped too (upstream computes and discards it)."""
    text = cfg_text_scale > 1.0
    return text, text and cfg_img_scale > 1.0


def cfg_combine(
    v_full: torch.Tensor,
    v_no_text: torch.Tensor | None,
    v_no_image: torch.Tensor | None,
    cfg_text_scale: float,
    cfg_img_scale: float,
    renorm_type: str = "text_channel",
    renorm_min: float = 0.0,
) -> torch.Tensor:
    """Combine branch velocities [tokens, D] of ONE image (docs/architecture.md §6). Renorm only ever shrinks."""
    if renorm_type not in RENORM_TYPES:
        raise ValueError(f"cfg_renorm_type must be one of {RENORM_TYPES}, got {renorm_type!r}")
    if cfg_text_scale <= 1.0:
        return v_full
    u = v_no_text + cfg_text_scale * (v_full - v_no_text)
    use_img = cfg_img_scale > 1.0
    if renorm_type == "text_channel":
        scale = (v_full.norm(dim=-1, keepdim=True) / (u.norm(dim=-1, keepdim=True) + 1e-8)).clamp(
            renorm_min, 1.0
        )
        u = u * scale
        return v_no_image + cfg_img_scale * (u - v_no_image) if use_img else u
    w = v_no_image + cfg_img_scale * (u - v_no_image) if use_img else u
    if renorm_type == "global":
        scale = (torch.norm(v_full) / (torch.norm(w) + 1e-8)).clamp(renorm_min, 1.0)
    else:  # channel
        scale = (v_full.norm(dim=-1, keepdim=True) / (w.norm(dim=-1, keepdim=True) + 1e-8)).clamp(
            renorm_min, 1.0
        )
    return w * scale


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: float | torch.Tensor) -> torch.Tensor:
    return x - v * dt
