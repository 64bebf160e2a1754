"""BAGEL's ``t2i_pretrain`` parquet dataset (docs/data.md).

Row schema: ``image`` = encoded image bytes, ``captions`` = JSON string of a dict of captions. One
caption is chosen at random (per-row RNG); an empty dict gives a single space (upstream). Plan: caption
text (cfg 1, loss 0) + target VAE image (loss 1).

Units are whole parquet files (row groups are read from each file's footer, no parquet_info); the
resume index is ``[worker-local file index, row group, row]`` like upstream.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Iterator

from data.image_io import decode_image
from data.parquet_io import num_row_groups, read_row_group, selected_parquet_files
from data.row_group_dataset import image_bytes
from data.sample_builder import SampleBuilder, new_sample
from data.sharding import ShardedSource, count_read_error
from data.transforms import ImageTransform

logger = logging.getLogger(__name__)


class T2IDataset(ShardedSource):
    columns = ["image", "captions"]

    def __init__(
        self,
        dataset_name: str,
        tokenizer,
        data_dir_list: list[str],
        num_used_data: list[int],
        transform: ImageTransform,
        *,
        rank: int = 0,
        world_size: int = 1,
        data_seed: int = 42,
    ):
        files = [
            f for group in selected_parquet_files(dataset_name, data_dir_list, num_used_data) for f in group
        ]
        super().__init__(dataset_name, files, rank=rank, world_size=world_size, data_seed=data_seed)
        self.builder = SampleBuilder(tokenizer, transform, None)

    def _walk(self, units: list, after, stats: Counter) -> Iterator[tuple[list[int], str, dict]]:
        start_file, start_rg, start_row = (
            (after[0], after[1], after[2] + 1) if after is not None else (0, 0, 0)
        )
        for file_idx in range(start_file, len(units)):
            path = units[file_idx]
            try:
                n_groups = num_row_groups(path)
            except Exception as e:
                count_read_error(stats, self.dataset_name, path, e)
                start_rg, start_row = 0, 0
                continue
            for row_group in range(start_rg, n_groups):
                try:
                    rows = read_row_group(path, row_group, columns=self.columns)
                except Exception as e:
                    count_read_error(stats, self.dataset_name, f"{path} row group {row_group}", e)
                    start_row = 0
                    continue
                for row_idx in range(start_row, len(rows)):
                    yield (
                        [file_idx, row_group, row_idx],
                        f"{path} row group {row_group} row {row_idx}",
                        rows[row_idx],
                    )
                start_row = 0
            start_rg = 0

    def _fetch(self, units: list, data_indexes) -> tuple[str, dict]:
        file_idx, row_group, row_idx = data_indexes
        path = units[file_idx]
        rows = read_row_group(path, row_group, columns=self.columns)
        return f"{path} row group {row_group} row {row_idx}", rows[row_idx]

    def parse_row(self, row: dict, rng: random.Random, stats: Counter) -> dict:
        image = decode_image(image_bytes(row["image"]), stats, where=self.current_where)
        captions = json.loads(row["captions"])
        if not isinstance(captions, dict):
            raise ValueError("'captions' must be a JSON object of captions")
        texts = list(captions.values())
        if not texts:
            stats["empty_captions"] += 1
            logger.warning(
                "row without captions in %s; using a single space (upstream behaviour)", self.dataset_name
            )
            text = " "
        else:
            text = rng.choice(texts)
        sample = new_sample()
        self.builder.add_text(sample, text, need_loss=False)
        self.builder.add_image(sample, image, need_loss=True, need_vae=False, need_vit=False)
        return sample
