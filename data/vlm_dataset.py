"""BAGEL's ``vlm_sft`` JSONL dataset (docs/data.md).

One JSON object per line::

    {"image": "a.jpg" | ["a.jpg", ...], "conversations": [{"from": "human", "value": "<image>\\nQ"},
                                                          {"from": "gpt", "value": "A"}]}

Image paths are relative to the dataset's ``data_dir``. ``<image>`` placeholders in human turns mark
where the images go (ViT tokens only, no VAE); human text has no loss, gpt turns get CE loss. No CFG
dropout applies to any item. Units are lines; the resume index is the worker-local line index.
Rows whose placeholder count differs from their image count, or with no gpt turn, are skipped and
counted (upstream silently mis-aligned / skipped them). Video rows are not supported (counted).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator

from data.image_io import decode_image
from data.parquet_io import DataConfigError
from data.sample_builder import new_sample, plan_item
from data.sharding import ShardedSource
from data.transforms import ImageTransform
from modeling.tokenizer import encode

logger = logging.getLogger(__name__)


def conversation_elements(conversations: list[dict], num_images: int) -> list[dict]:
    """Flatten turns into ``{"type": "text", "has_loss", "text"}`` / ``{"type": "image"}`` elements."""
    elements: list[dict] = []
    for turn in conversations:
        role, value = turn["from"], turn["value"]
        if role == "human":
            pieces = value.split("<image>")
            for idx, piece in enumerate(pieces):
                if piece.strip():
                    elements.append({"type": "text", "has_loss": 0, "text": piece.strip()})
                if idx != len(pieces) - 1 and idx < num_images:
                    elements.append({"type": "image"})
        elif role == "gpt":
            elements.append({"type": "text", "has_loss": 1, "text": value})
        else:
            raise ValueError(f"unknown conversation role {role!r} (expected 'human' or 'gpt')")
    return elements


class VlmSftDataset(ShardedSource):
    understanding_only = True  # its one image transform is the ViT's (data_config.image_views)

    def __init__(
        self,
        dataset_name: str,
        tokenizer,
        jsonl_path_list: list[str],
        data_dir_list: list[str],
        num_used_data: list[int],
        transform: ImageTransform,
        shuffle_lines: bool = False,
        shuffle_seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        data_seed: int = 42,
    ):
        if not (len(jsonl_path_list) == len(data_dir_list) == len(num_used_data)):
            raise DataConfigError(
                f"{dataset_name}: {len(jsonl_path_list)} jsonl files, {len(data_dir_list)} image dirs and "
                f"{len(num_used_data)} num_used_data entries must match"
            )
        # unit = (json line, image dir, jsonl path, line number); sorting is by the line text first, like upstream
        units: list[tuple[str, str, str, int]] = []
        for jsonl_path, image_dir, num in zip(jsonl_path_list, data_dir_list, num_used_data):
            if not os.path.isfile(jsonl_path):
                raise DataConfigError(f"{dataset_name}: jsonl file does not exist: {jsonl_path}")
            if not os.path.isdir(image_dir):
                raise DataConfigError(f"{dataset_name}: image directory does not exist: {image_dir}")
            with open(jsonl_path, encoding="utf-8") as f:
                lines = [(line, n) for n, line in enumerate(f.read().splitlines(), start=1) if line.strip()]
            if shuffle_lines:
                random.Random(shuffle_seed).shuffle(lines)
            if num > len(lines):
                logger.warning(
                    "%s: %d lines requested from %s, only %d exist", dataset_name, num, jsonl_path, len(lines)
                )
            units.extend((line, image_dir, jsonl_path, n) for line, n in lines[:num])
        if not units:
            raise DataConfigError(f"{dataset_name}: no lines in {jsonl_path_list}")
        super().__init__(dataset_name, units, rank=rank, world_size=world_size, data_seed=data_seed)
        self.tokenizer = tokenizer
        self.transform = transform

    def _walk(self, units: list, after, stats: Counter) -> Iterator[tuple[int, str, tuple]]:
        start = after + 1 if after is not None else 0
        for idx in range(start, len(units)):
            yield idx, f"{units[idx][2]} line {units[idx][3]}", units[idx]

    def _fetch(self, units: list, data_indexes) -> tuple[str, tuple]:
        unit = units[data_indexes]
        return f"{unit[2]} line {unit[3]}", unit

    def parse_row(self, row: tuple, rng: random.Random, stats: Counter) -> dict | None:
        line, image_dir = row[0], row[1]
        item = json.loads(line)
        if "video" in item:
            stats["unsupported_video_rows"] += 1
            raise ValueError("video rows are not supported by this reimplementation")
        names = item.get("image", [])
        names = [names] if isinstance(names, str) else list(names)
        images = [
            decode_image(os.path.join(image_dir, n), stats, where=f"{self.current_where}: {n}") for n in names
        ]
        tensors = [self.transform(img, img_num=len(images)) for img in images]

        elements = conversation_elements(item["conversations"], len(tensors))
        placed = sum(1 for e in elements if e["type"] == "image")
        if placed != len(tensors):
            raise ValueError(f"{len(tensors)} image(s) but {placed} usable <image> placeholder(s)")

        sample = new_sample()
        sample["image_tensor_list"] = tensors
        for tensor in tensors:
            h, w = tensor.shape[1:]
            sample["num_tokens"] += w * h // self.transform.stride**2
        for element in elements:
            if element["type"] == "image":
                sample["sequence_plan"].append(plan_item("vit_image", 0, 0))
                continue
            ids = encode(self.tokenizer, element["text"])
            if ids:  # empty texts are dropped (upstream)
                sample["text_ids_list"].append(ids)
                sample["num_tokens"] += len(ids)
                sample["sequence_plan"].append(plan_item("text", 0, element["has_loss"]))
        if not any(p["loss"] for p in sample["sequence_plan"]):
            return None  # no CE target: nothing to learn (counted as skipped by the caller)
        return sample
