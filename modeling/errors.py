"""Exceptions shared by the model loaders, and the checks that raise them."""

from __future__ import annotations

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the model it should fill.

    The message always names the file and, where relevant, the offending keys.
    """


def check_finite(name: str, t: torch.Tensor, path: str) -> None:
    """A NaN or infinite value in a stored tensor is a broken checkpoint: say which tensor and refuse it
    (loaded, it would only show up later as a black image)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN/inf value(s) of {t.numel()}")
