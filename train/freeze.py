"""Freeze flags with exactly upstream's parameter sets (docs/training.md).

The rules work on clean state-dict names (``language_model.model.layers.0.mlp.up_proj.weight`` …), so
they can be checked on a key list without building a model (``frozen_reasons``) and applied to a live
module (``apply_freeze``). The two fixed sin-cos tables are never trainable, whatever the flags say.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, fields

import torch.nn as nn

logger = logging.getLogger(__name__)

# Fixed 2-D sin-cos tables (docs/architecture.md): buffers in spirit, parameters in the checkpoint.
POS_EMBED_KEYS = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")
LLM_BODY = "language_model.model."


@dataclass(frozen=True)
class FreezeFlags:
    """The Bagel-side freeze flags (``freeze_vae`` is handled by the caller: the VAE is not in Bagel)."""

    freeze_vit: bool = False
    freeze_llm: bool = False
    freeze_llm_und: bool = False
    freeze_llm_gen: bool = False
    freeze_mlp_und: bool = False
    freeze_mlp_gen: bool = False

    @classmethod
    def from_section(cls, section) -> FreezeFlags:
        """From the training configuration's ``FreezeSection`` (any object with these attributes)."""
        return cls(**{f.name: bool(getattr(section, f.name)) for f in fields(cls)})


def frozen_reason(name: str, flags: FreezeFlags) -> str | None:
    """Why parameter ``name`` (clean key) is frozen, or None if it stays trainable.

    Order mirrors upstream: ``freeze_llm`` replaces the two expert flags (they are then not evaluated),
    the MLP-bridge flags are always evaluated.
    """
    if name in POS_EMBED_KEYS:
        return "pos_embed"
    if flags.freeze_vit and name.startswith("vit_model."):
        return "freeze_vit"
    if flags.freeze_llm:
        if name.startswith("language_model."):
            return "freeze_llm"
    elif name.startswith(LLM_BODY):
        # Only language_model.model.* is covered: embed_tokens is excluded by name, lm_head by prefix.
        is_gen = "moe_gen" in name
        if flags.freeze_llm_und and not is_gen and "embed_tokens" not in name:
            return "freeze_llm_und"
        if flags.freeze_llm_gen and is_gen:
            return "freeze_llm_gen"
    if flags.freeze_mlp_und and "connector" in name:
        return "freeze_mlp_und"
    if flags.freeze_mlp_gen and ("vae2llm" in name or "llm2vae" in name):
        return "freeze_mlp_gen"
    return None


def frozen_reasons(names, flags: FreezeFlags) -> dict[str, str]:
    """``{name: reason}`` for every frozen name of ``names``."""
    out = {}
    for n in names:
        r = frozen_reason(n, flags)
        if r is not None:
            out[n] = r
    return out


@dataclass
class FreezeSummary:
    """Per top-level prefix: ``{prefix: [trainable_tensors, trainable_elems, frozen_tensors, frozen_elems]}``."""

    per_prefix: dict[str, list[int]]
    reasons: dict[str, int]  # reason -> number of tensors frozen for it

    @property
    def trainable_params(self) -> int:
        return sum(v[1] for v in self.per_prefix.values())

    @property
    def frozen_params(self) -> int:
        return sum(v[3] for v in self.per_prefix.values())

    def table(self) -> str:
        lines = [f"{'prefix':<20} {'trainable':>14} {'frozen':>14}  (tensors trainable/frozen)"]
        for p, (tt, te, ft, fe) in sorted(self.per_prefix.items()):
            lines.append(f"{p:<20} {te:>14,} {fe:>14,}  ({tt}/{ft})")
        lines.append(f"{'total':<20} {self.trainable_params:>14,} {self.frozen_params:>14,}")
        if self.reasons:
            lines.append("frozen by: " + ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())))
        return "\n".join(lines)


def _summarise(named_params, prefix_of=lambda n: n.split(".")[0]) -> dict[str, list[int]]:
    per = defaultdict(lambda: [0, 0, 0, 0])
    for n, p in named_params:
        row = per[prefix_of(n)]
        if p.requires_grad:
            row[0] += 1
            row[1] += p.numel()
        else:
            row[2] += 1
            row[3] += p.numel()
    return dict(per)


def apply_freeze(model: nn.Module, flags: FreezeFlags, vae: nn.Module | None = None, freeze_vae: bool = True):
    """Set ``requires_grad`` on ``model`` (a Bagel, clean names) and ``vae`` per the flags.

    Must run before FSDP wrapping (names are read from ``named_parameters``). Modules frozen as a whole
    (ViT with ``freeze_vit``, LLM with ``freeze_llm``, the VAE) are also put in eval mode; call
    ``keep_frozen_in_eval`` after every ``model.train()``. Returns a ``FreezeSummary`` (VAE listed as
    ``vae``).
    """
    reasons: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        r = frozen_reason(name, flags)
        p.requires_grad_(r is None)
        if r is not None:
            reasons[r] += 1
    per = _summarise(model.named_parameters())
    if vae is not None:
        for p in vae.parameters():
            p.requires_grad_(not freeze_vae)
        if freeze_vae:
            reasons["freeze_vae"] += sum(1 for _ in vae.parameters())
        per.update(_summarise((("vae." + n), p) for n, p in vae.named_parameters()))
    keep_frozen_in_eval(model, flags, vae, freeze_vae)
    return FreezeSummary(per_prefix=per, reasons=dict(reasons))


def keep_frozen_in_eval(
    model: nn.Module, flags: FreezeFlags, vae: nn.Module | None = None, freeze_vae: bool = True
):
    """Upstream puts whole frozen towers in eval mode (matters only for dropout / norm statistics)."""
    if flags.freeze_vit and hasattr(model, "vit_model"):
        model.vit_model.eval()
    if flags.freeze_llm and hasattr(model, "language_model"):
        model.language_model.eval()
    if vae is not None and freeze_vae:
        vae.eval()
