"""Opt-in recording of what inference computed, for parity tests and debugging.

Nothing is recorded (and no tensor is copied) unless a caller opens a trace::

    with trace.recording() as rec:
        pipe.generate(...)
    rec.context_steps   # [(context name, ContextStep), ...] of the first request
    rec.denoise_steps   # [{"t", "x_t", "v_cond", "v_cfg_text", "v_cfg_img", "v_t"}, ...]
    rec.query           # {"full" | "no_text" | "no_image": (kv_len, rope)} of the denoising query
    rec.query_seq       # the first denoising forward's query: one sample per (request, branch) job

The inference code calls ``active()`` before building anything to record, so the hook costs one check.
Only the first request of a batch is recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from modeling.sequence import PackedSequence


@dataclass
class ContextStep:
    """One prefill forward: ``seq`` (on the CPU) appended at cache length ``kv_len`` and position ``rope``."""

    kind: str  # "text" | "vit" | "vae"
    kv_len: int
    rope: int
    seq: PackedSequence

    @property
    def text_ids(self) -> list[int]:
        return self.seq.text_ids.tolist()

    @property
    def position_ids(self) -> torch.Tensor:
        return self.seq.position_ids

    @property
    def token_position_ids(self) -> torch.Tensor:
        """2-D ids of the step's image tokens (ViT patches or latent slots)."""
        return self.seq.vit_position_ids if self.kind == "vit" else self.seq.vae_position_ids


@dataclass
class Recording:
    context_steps: list[tuple[str, ContextStep]] = field(default_factory=list)
    denoise_steps: list[dict] = field(default_factory=list)
    query: dict[str, tuple[int, int]] = field(default_factory=dict)
    query_seq: PackedSequence | None = None
    request: int = 0  # index of the request being built; only request 0 is recorded


_open: list[Recording] = []


def active() -> Recording | None:
    """The open recording when it should receive events (request 0), else None."""
    if _open and _open[-1].request == 0:
        return _open[-1]
    return None


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    rec = Recording()
    _open.append(rec)
    try:
        yield rec
    finally:
        _open.remove(rec)


@contextlib.contextmanager
def request(index: int) -> Iterator[None]:
    """Marks the request being built, so that only request 0 is recorded."""
    if not _open:
        yield
        return
    rec = _open[-1]
    old, rec.request = rec.request, index
    try:
        yield
    finally:
        rec.request = old


def context_step(context: str, kind: str, kv_len: int, rope: int, seq: PackedSequence) -> None:
    """A prefill forward of the context named ``context`` (e.g. "full", "no_image", "und")."""
    rec = active()
    if rec is not None:
        step = ContextStep(kind, kv_len, rope, seq.to("cpu", non_blocking=False))
        rec.context_steps.append((context, step))


def denoise_contexts(query: dict[str, tuple[int, int]]) -> None:
    """Request 0's (kv_len, rope) per CFG branch as the denoising loop starts."""
    rec = active()
    if rec is not None:
        rec.query = dict(query)


def denoise_query(seq: PackedSequence) -> None:
    """The first packed query the denoising loop built."""
    rec = active()
    if rec is not None and rec.query_seq is None:
        rec.query_seq = seq.to("cpu", non_blocking=False)


def denoise_step(request: int, t: float, x_t, v_cond, v_cfg_text, v_cfg_img, v_t) -> None:
    """One Euler step of request ``request``: its x_t, branch velocities (None when not run) and v_t."""
    rec = active()
    if rec is None or request != 0:
        return
    vel = {"v_cond": v_cond, "v_cfg_text": v_cfg_text, "v_cfg_img": v_cfg_img, "v_t": v_t}
    rec.denoise_steps.append(
        {"t": t, "x_t": x_t.clone(), **{k: None if v is None else v.cpu() for k, v in vel.items()}}
    )
