"""The rectified-flow convention that training (``train/losses.py``) and sampling
(``inference/flow_sampler.py``) share: ``x_t = (1 - t) x_0 + t eps``, the model predicts ``v = eps - x_0``,
and both shift their timesteps with the same formula."""

from __future__ import annotations

import torch


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``s t / (1 + (s - 1) t)`` elementwise (identity for s = 1): s > 1 spends more of the schedule (or of
    the training draws) at high noise, where large images need it."""
    return shift * t / (1 + (shift - 1) * t)


def noise_levels(raw_timesteps: torch.Tensor, shift: float) -> torch.Tensor:
    """Raw draws [V] (``-inf`` for clean slots) -> noise levels t [V] in [0, 1]."""
    return shift_timesteps(torch.sigmoid(raw_timesteps.float()), shift)
