"""BAGEL's ``unified_edit`` parquet dataset (docs/data.md).

Row schema: ``image_list`` = list of encoded images (an editing trajectory), ``instruction_list`` =
list (one entry per transition i -> i+1) of candidate instruction lists. A random start frame and an
end frame 1-2 steps later are chosen; with probability 0.5 (when more than one step) the step
instructions are concatenated into one and only the end frame is generated, otherwise every step is an
(instruction, generated frame) pair and intermediate frames also serve as clean conditions.

The random choices come from the per-row RNG (sharding.row_rng), so a row always parses the same way
within an epoch (needed for exact resume).
"""

from __future__ import annotations

import random
from collections import Counter

from data.row_group_dataset import ParquetRowGroupDataset
from data.sample_builder import new_sample


class UnifiedEditDataset(ParquetRowGroupDataset):
    columns = ("image_list", "instruction_list")

    def parse_row(self, row: dict, rng: random.Random, stats: Counter) -> dict:
        images, instructions = row["image_list"], row["instruction_list"]
        num = len(images)
        if num < 2:
            raise ValueError(f"'image_list' needs at least 2 images, got {num}")
        if len(instructions) < num - 1:
            raise ValueError(f"'instruction_list' has {len(instructions)} entries for {num} images")
        start = rng.choice(range(num - 1))
        end = rng.choice(range(start + 1, min(start + 3, num)))

        sample = new_sample()
        self.builder.add_image(
            sample, self.decode(images[start], stats), need_loss=False, need_vae=True, need_vit=True
        )
        if end - start > 1 and rng.random() < 0.5:
            # One concatenated instruction for several steps (upstream also pulls the end back by one
            # when it is the last frame).
            if end == num - 1:
                end -= 1
            text = "".join(rng.choice(instructions[i - 1]) + ". " for i in range(start + 1, end + 1))
            self.builder.add_text(sample, text.rstrip(), need_loss=False)
            self.builder.add_image(
                sample, self.decode(images[end], stats), need_loss=True, need_vae=False, need_vit=False
            )
        else:
            for i in range(start + 1, end + 1):
                self.builder.add_text(sample, rng.choice(instructions[i - 1]), need_loss=False)
                last = i == end
                self.builder.add_image(
                    sample,
                    self.decode(images[i], stats),
                    need_loss=True,
                    need_vae=not last,
                    need_vit=not last,
                )
        return sample
