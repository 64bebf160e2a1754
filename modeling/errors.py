"""Exceptions shared by the model loaders, and the checks that raise them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the model it should fill.

    The message always names the file and, where relevant, the offending keys.
    """


def check_state_keys(
    what: str,
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, Sequence[int]],
    may_be_missing: Iterable[str] = (),
) -> None:
    """Strict loading: raise ``CheckpointError`` naming ``what`` (the file and what it should fill) and the
    missing keys, the unexpected keys and the shape mismatches (first ten of each), if there are any.
    ``expected`` / ``found``: key -> shape of the model and of the file."""
    missing = sorted(set(expected) - set(found) - set(may_be_missing))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k} (file {list(found[k])}, model {list(expected[k])})"
        for k in sorted(set(found) & set(expected))
        if list(found[k]) != list(expected[k])
    ]
    parts = [
        f"{len(keys)} {label}: {first_keys(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts))


def first_keys(keys: list[str], limit: int = 10) -> str:
    """The first ``limit`` keys, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_finite(name: str, t: torch.Tensor, path: str) -> None:
    """A NaN or infinite value in a stored tensor is a broken checkpoint: say which tensor and refuse it
    (loaded, it would only show up later as a black image)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN/inf value(s) of {t.numel()}")
