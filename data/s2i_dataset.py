"""Scone subject-to-image (s2i) parquet dataset (docs/data.md).

Row schema: ``image`` = list of encoded images, references first and the **target last**;
``instruction`` = string. Sequence plan for k references::

    for each reference: clean VAE image (cfg 1, loss 0), ViT image (cfg 1, loss 0)
    instruction text (cfg 1, loss 0)
    target VAE image (cfg 0, loss 1)
"""

from __future__ import annotations

import random
from collections import Counter

from data.row_group_dataset import ParquetRowGroupDataset
from data.sample_builder import new_sample


class S2IDataset(ParquetRowGroupDataset):
    columns = ("image", "instruction")

    def parse_row(self, row: dict, rng: random.Random, stats: Counter) -> dict:
        images = row["image"]
        instruction = row["instruction"]
        if not isinstance(images, list) or len(images) == 0:
            raise ValueError(
                f"'image' must be a non-empty list (refs..., target), got {type(images).__name__}"
            )
        if not isinstance(instruction, str):
            raise ValueError(f"'instruction' must be a string, got {type(instruction).__name__}")
        # Decode everything first so a corrupt target does not leave half-built work behind.
        decoded = [self.decode(value, stats) for value in images]
        sample = new_sample()
        for ref in decoded[:-1]:
            self.builder.add_image(sample, ref, need_loss=False, need_vae=True, need_vit=True)
        self.builder.add_text(sample, instruction, need_loss=False)
        self.builder.add_image(sample, decoded[-1], need_loss=True, need_vae=False, need_vit=False)
        return sample
