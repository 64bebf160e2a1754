"""Scone subject-to-image (s2i) parquet dataset (docs/data.md).

Row schema: ``image`` = list of encoded images, references first and the **target last**;
``instruction`` = string. Sequence plan for k references::

    for each reference: clean VAE image (cfg 1, loss 0), ViT image (cfg 1, loss 0)
    instruction text (cfg 1, loss 0)
    target VAE image (cfg 0, loss 1)

``S2IThinkDataset`` (group ``s2i_think``) reads rows with a third column, ``plan`` (string), and teaches
think mode in the order inference runs it (inference/pipeline.py): the think system prompt
(modeling/prompts.py) first, then the references and the instruction as above, then the plan (CE loss),
then the target.
"""

from __future__ import annotations

import random
from collections import Counter

from data.row_group_dataset import ParquetRowGroupDataset
from data.sample_builder import new_sample
from modeling.prompts import THINK_PROMPT_GENERATE


class S2IDataset(ParquetRowGroupDataset):
    columns: tuple[str, ...] = ("image", "instruction")

    def parse_row(self, row: dict, rng: random.Random, stats: Counter) -> dict:
        images = row["image"]
        instruction = row["instruction"]
        if not isinstance(images, list) or len(images) == 0:
            raise ValueError(
                f"'image' must be a non-empty list (refs..., target), got {type(images).__name__}"
            )
        if not isinstance(instruction, str):
            raise ValueError(f"'instruction' must be a string, got {type(instruction).__name__}")
        plan = row.get("plan")
        if "plan" in self.columns and (not isinstance(plan, str) or not plan.strip()):
            raise ValueError(f"'plan' must be a non-empty string, got {plan!r}")
        # Decode everything first so a corrupt target does not leave half-built work behind.
        decoded = [self.decode(value, stats) for value in images]
        sample = new_sample()
        if plan is not None:  # the system prompt is never dropped for CFG: inference always gives it
            self.builder.add_text(sample, THINK_PROMPT_GENERATE, need_loss=False, enable_cfg=False)
        for ref in decoded[:-1]:
            self.builder.add_image(sample, ref, need_loss=False, need_vae=True, need_vit=True)
        self.builder.add_text(sample, instruction, need_loss=False)
        if plan is not None:
            self.builder.add_text(sample, plan, need_loss=True, enable_cfg=False)
        self.builder.add_image(sample, decoded[-1], need_loss=True, need_vae=False, need_vit=False)
        return sample


class S2IThinkDataset(S2IDataset):
    columns = ("image", "instruction", "plan")
