"""Pack training samples into one ``PackedSequence`` (layout rules: ``modeling.sequence``).

A sample (data/sample_builder.py) is a *sequence plan*: text, ViT-image and VAE-image items, each with
``enable_cfg`` (droppable) and ``loss`` flags. This module only decides what goes in: condition dropout
(``enable_cfg == 1`` items only: a dropped text takes nothing, a dropped image still advances the RoPE
counter by one) and the raw timestep of each target image. Random draws follow upstream's order exactly:
one ``py_rng.random()`` per droppable item, one ``np_rng.randn()`` per target image (``-inf`` for clean
ones), so seeding ``random.Random(s)`` / ``np.random.RandomState(s)`` reproduces upstream runs seeded with
``random.seed(s)`` / ``np.random.seed(s)``. The draw stays here, in the data stream, because a resumed
stream must replay it; ``train/losses.py`` turns it into the noise level t.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from modeling.sequence import PackedSequence, SequenceBuilder, SequenceGeometry
from modeling.tokenizer import SpecialTokenIds


@dataclass
class PackingConfig:
    """Token ids and geometry used while packing (upstream's DataConfig + special tokens)."""

    bos_token_id: int
    eos_token_id: int
    start_of_image: int
    end_of_image: int
    text_cond_dropout_prob: float = 0.1
    vit_cond_dropout_prob: float = 0.3
    vae_cond_dropout_prob: float = 0.3
    vit_patch_size: int = 14
    max_num_patch_per_side: int = 70
    vae_image_downsample: int = 16
    max_latent_size: int = 32  # Scone's scripts pass 64
    interpolate_pos: bool = False

    @classmethod
    def from_special_ids(cls, special_ids, **kwargs) -> PackingConfig:
        """``special_ids``: modeling.tokenizer.SpecialTokenIds or a dict with the four ids."""
        ids = special_ids if isinstance(special_ids, dict) else special_ids.as_dict()
        return cls(**ids, **kwargs)

    def geometry(self) -> SequenceGeometry:
        return SequenceGeometry(
            vit_patch_size=self.vit_patch_size,
            vit_max_patch_per_side=self.max_num_patch_per_side,
            latent_downsample=self.vae_image_downsample,
            max_latent_size=self.max_latent_size,
            interpolate_pos=self.interpolate_pos,
        )

    def new_builder(self) -> SequenceBuilder:
        markers = SpecialTokenIds(
            self.bos_token_id, self.eos_token_id, self.start_of_image, self.end_of_image
        )
        return SequenceBuilder(markers, self.geometry())


def sample_length(sample: dict) -> int:
    """Tokens a sample occupies in a pack: its content plus 2 per plan item (markers / bos+eos)."""
    return sample["num_tokens"] + 2 * len(sample["sequence_plan"])


def _check_item(item: dict) -> None:
    if item.get("special_token_loss", 0) or "frame_delta" in item or not item.get("split_start", True):
        raise ValueError(
            "sequence plan items with special_token_loss, frame_delta or split_start/split_end (video) are "
            f"not supported: {item}"
        )


def pack_sample(
    sample: dict,
    builder: SequenceBuilder,
    cfg: PackingConfig,
    py_rng: random.Random,
    np_rng: np.random.RandomState,
) -> SequenceBuilder:
    """Append one sample to ``builder`` (the sample itself is not modified)."""
    texts = iter(sample["text_ids_list"])
    images = iter(sample["image_tensor_list"])
    builder.start_sample()
    for item in sample["sequence_plan"]:
        _check_item(item)
        kind = item["type"]
        droppable = item["enable_cfg"] == 1
        if kind == "text":
            ids = next(texts)
            if droppable and py_rng.random() < cfg.text_cond_dropout_prob:
                continue
            builder.add_text(ids, loss=item["loss"] == 1)
        elif kind in ("vit_image", "vae_image"):
            image = next(images)
            prob = cfg.vit_cond_dropout_prob if kind == "vit_image" else cfg.vae_cond_dropout_prob
            if droppable and py_rng.random() < prob:
                builder.skip_image()
            elif kind == "vit_image":
                builder.add_vit_image(image)
            elif item["loss"] == 1:
                builder.add_vae_image(image, noisy=True, timestep=float(np_rng.randn()))
            else:
                builder.add_vae_image(image)
        else:
            raise ValueError(f"unknown sequence plan item type {kind!r}")
    builder.end_sample(sample.get("data_indexes"))
    return builder


def pack_samples(
    samples: list[dict],
    cfg: PackingConfig,
    py_rng: random.Random | None = None,
    np_rng: np.random.RandomState | None = None,
) -> PackedSequence:
    """Pack the given samples in the listed order into one sequence (deterministic, no budget logic)."""
    py_rng = py_rng if py_rng is not None else random.Random(0)
    np_rng = np_rng if np_rng is not None else np.random.RandomState(0)
    builder = cfg.new_builder()
    for sample in samples:
        pack_sample(sample, builder, cfg, py_rng, np_rng)
    return builder.build()
