"""Synthetic packed sequences in the data pipeline's format (for tests, benchmarks and smoke runs).

Each sample is s2i-shaped: for every reference a clean VAE image then a ViT image, then the instruction,
then the noisy target. Optionally the instruction carries a CE loss (like a VLM answer) so both losses are
exercised. Content is random but a pure function of ``(seed, index)``: ``num_distinct`` > 0 repeats a
handful of samples (for overfitting checks). The layout comes from ``modeling.sequence.SequenceBuilder``,
the same builder the data pipeline and inference use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeling.sequence import PackedSequence, SequenceBuilder, SequenceGeometry


@dataclass
class SyntheticSpec:
    samples_per_pack: int = 2
    num_refs: int = 1
    image_size: int = 64  # VAE side (pixels, multiple of 16)
    vit_size: int = 56  # ViT side (pixels, multiple of 14)
    text_len: int = 12  # instruction ids without bos/eos
    text_loss: bool = False  # CE on the instruction
    num_distinct: int = 0  # 0 = every sample new; N = cycle over N samples
    vocab: int = 256  # ids are drawn from [0, vocab)
    max_latent_size: int = 64
    vit_max_patch_per_side: int = 70
    # mixed packs: pack g holds one kind of sample, g % 4 = text only with CE (a VLM answer without image) /
    # no ViT view (VAE references only) / the normal sample with CE / the normal sample without CE, so that
    # ranks see different modalities in the same step (what real mixes with dropout and VLM data do)
    mixed: bool = False


def pack_kind(spec: SyntheticSpec, ids) -> str:
    """ "normal" (the s2i sample), or with ``spec.mixed`` one of "text" / "no_vit" / "ce" / "normal" by the
    pack's index (``ids`` are consecutive sample ids of one pack)."""
    if not spec.mixed:
        return "normal"
    first = min(ids)
    return ("text", "no_vit", "ce", "normal")[(first // spec.samples_per_pack) % 4]


def make_pack(spec: SyntheticSpec, ids, seed: int, special: dict) -> PackedSequence:
    """One packed sequence of the samples ``ids`` (content = function of ``(seed, id)``).

    ``special`` holds ``bos_token_id``, ``eos_token_id``, ``start_of_image``, ``end_of_image``.
    """
    geometry = SequenceGeometry(
        vit_max_patch_per_side=spec.vit_max_patch_per_side, max_latent_size=spec.max_latent_size
    )
    builder = SequenceBuilder(special, geometry)

    def image(side: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(3, side, side, generator=g) * 2 - 1

    kind = pack_kind(spec, ids)
    for sid in ids:
        key = sid % spec.num_distinct if spec.num_distinct > 0 else sid
        g = torch.Generator().manual_seed(seed * 1_000_003 + key)
        builder.start_sample()
        for _ in range(spec.num_refs if kind != "text" else 0):
            builder.add_vae_image(image(spec.image_size, g))
            vit = image(spec.vit_size, g)
            if kind != "no_vit":
                builder.add_vit_image(vit)
        words = torch.randint(0, spec.vocab, (spec.text_len,), generator=g).tolist()
        builder.add_text(words, spec.text_loss if kind == "normal" else kind in ("text", "ce"))
        target = image(spec.image_size, g)
        timestep = float(torch.randn((), generator=g))
        if kind != "text":
            builder.add_vae_image(target, noisy=True, timestep=timestep)
        builder.end_sample({"synthetic": int(sid)})
    return builder.build()


class SyntheticSource:
    """Endless packs for one rank. Micro-batch ``a`` of step ``s`` on rank ``r`` is global pack
    ``s·W·A + r·A + a`` (W ranks, A accumulation steps), so a run with W ranks sees the same global
    batches as a 1-rank run with ``W·A`` accumulation steps. State = number of consumed packs.
    """

    def __init__(
        self, spec: SyntheticSpec, seed: int, rank: int, world_size: int, special: dict, accum: int = 1
    ):
        self.spec, self.seed, self.rank, self.world, self.accum = spec, seed, rank, world_size, accum
        self.special = special
        self.consumed = 0

    def pack(self, global_index: int) -> PackedSequence:
        n = self.spec.samples_per_pack
        return make_pack(self.spec, range(global_index * n, (global_index + 1) * n), self.seed, self.special)

    def next_batch(self) -> PackedSequence:
        step, a = divmod(self.consumed, self.accum)
        b = self.pack(step * self.world * self.accum + self.rank * self.accum + a)
        self.consumed += 1
        return b

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "synthetic":
            raise ValueError(f"data status {state!r} is not from a synthetic source")
        self.consumed = int(state["consumed"])
