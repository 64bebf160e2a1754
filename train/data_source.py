"""Where the loop's packs come from: the packed parquet pipeline (``data/``) or synthetic packs.

A source has ``next_batch() -> PackedSequence`` (one pack), ``state_dict()`` (this
rank's resumable position, stored in ``data_status.pt``), ``load_state_dict(state)`` and
``counters() -> dict`` (skip / error counters, logged under ``data/``).
"""

from __future__ import annotations

import logging

from train.config import DataSection
from train.synthetic import SyntheticSource, SyntheticSpec

logger = logging.getLogger(__name__)


def check_data(data: DataSection, model_path: str, rank: int, world_size: int) -> dict:
    """Check the YAML mix against the model before anything heavy loads: every file and parquet_info entry
    exists, the image sizes fit the model, every DataLoader worker gets data, the parquet files have the
    columns their dataset reads. Reads only configs, file headers and parquet footers. Raises
    ``DataConfigError`` (a ValueError) or ``CheckpointError`` with a message saying what to change.
    Returns the mix's image views (``data.data_config.image_views``; ``{}`` for synthetic packs)."""
    if data.synthetic_data:
        return {}
    from data.data_config import ModelGeometry, build_groups, check_groups, image_views
    from data.dataset_info import data_root_from_env
    from modeling.checkpoint import build_config, check_model_folder, latent_downsample, pick_weights_file

    folder = check_model_folder(model_path)
    cfg = build_config(folder, pick_weights_file(folder, None))
    geometry = ModelGeometry.of(cfg, latent_downsample(folder, cfg))
    groups = build_groups(
        data.dataset_config_file,
        None,  # no tokenizer needed to list and check the data
        rank=rank,
        world_size=world_size,
        data_seed=data.data_seed,
        data_root=data_root_from_env(data.data_root),
    )
    check_groups(groups, geometry, data.num_workers)
    return image_views(groups)


def build_data_source(data: DataSection, accum: int, loaded, info, data_status):
    """Build the source for this rank (``accum`` packs per step) and restore ``data_status`` (from a
    resumed checkpoint) if given."""
    if data.synthetic_data:
        base = {
            "max_latent_size": loaded.config.max_latent_size,
            "vit_max_patch_per_side": loaded.config.vit_max_num_patch_per_side,
            "vocab": min(len(loaded.tokenizer), 256),
        }
        known = set(SyntheticSpec.__dataclass_fields__)
        unknown = set(data.synthetic_spec) - known
        if unknown:
            raise SystemExit(f"--synthetic_spec: unknown fields {sorted(unknown)}; known: {sorted(known)}")
        spec = SyntheticSpec(**{**base, **data.synthetic_spec})
        src = SyntheticSource(
            spec,
            data.data_seed,
            info.rank,
            info.world_size,
            loaded.special_ids.as_dict(),
            accum=accum,
        )
        if data_status is not None:
            src.load_state_dict(data_status)
        return src
    return ParquetSource(data, loaded, info, data_status)


class ParquetSource:
    """The ``data/`` pipeline: ``PackedDataset`` over the YAML mix + DataLoader + a state tracker that
    records the state of the last pack actually *consumed* from each worker (prefetched packs are not
    counted, so a resume continues exactly after the last trained pack)."""

    def __init__(self, data: DataSection, loaded, info, data_status):
        from data.data_config import ModelGeometry
        from data.data_state import DataStateTracker
        from data.packed_dataset import (
            ConditionDropout,
            PackingBudget,
            build_dataloader,
            build_packed_dataset,
        )

        self.dataset = build_packed_dataset(
            data.dataset_config_file,
            loaded.tokenizer,
            loaded.special_ids,
            rank=info.rank,
            world_size=info.world_size,
            num_workers=data.num_workers,
            data_seed=data.data_seed,
            budget=PackingBudget(
                data.expected_num_tokens,
                data.max_num_tokens,
                data.max_num_tokens_per_sample,
                data.prefer_buffer_before,
                data.max_buffer_size,
            ),
            dropout=ConditionDropout(
                data.text_cond_dropout_prob, data.vit_cond_dropout_prob, data.vae_cond_dropout_prob
            ),
            geometry=ModelGeometry.of(loaded.config),
            data_root=data.data_root,
            data_state=data_status,
        )
        self.loader = build_dataloader(
            self.dataset, prefetch_factor=data.prefetch_factor, pin_memory=info.device.type == "cuda"
        )
        self.tracker = DataStateTracker(
            info.rank, info.world_size, data.num_workers, data.data_seed, initial=data_status
        )
        self._it = iter(self.loader)

    def next_batch(self):
        batch = next(self._it)
        self.tracker.update(batch)
        return batch

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def counters(self) -> dict:
        return self.tracker.stats()
