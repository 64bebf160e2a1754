"""Token-budget sequence packing over a weighted mix of dataset groups (docs/data.md).

Per DataLoader worker, forever:

1. At the start of a pack, one sample of every mandatory group (samples with length >=
   ``max_num_tokens_per_sample`` are skipped there, upstream's ``>=``).
2. While the pack is shorter than ``prefer_buffer_before`` and the overflow buffer is not empty, take
   the oldest buffered sample; otherwise draw a group by weight and take its next sample.
3. Samples longer than ``max_num_tokens_per_sample`` are skipped (``>``, counted ``too_long_samples``).
4. A sample that would overflow ``max_num_tokens`` is buffered (fresh sample, buffer not full);
   otherwise the pack is yielded and that sample is dropped (counted ``dropped_at_flush``).
5. Else it is packed; once the pack reaches ``expected_num_tokens`` it is yielded.

Every yielded ``PackedSequence`` carries ``seq.meta["data_state"]`` (data_state.py), the exact state of its worker right
after that pack, so a run resumed from the last consumed pack of each worker continues identically.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from data.data_config import DataGroup, ModelGeometry, build_groups, check_groups
from data.data_state import (
    FORMAT,
    check_rank_state,
    decode_np_rng,
    decode_py_rng,
    encode_np_rng,
    encode_py_rng,
    is_upstream_status,
    new_rngs,
    worker_state_from_upstream,
)
from data.dataset_info import data_root_from_env
from data.parquet_io import DataConfigError
from data.sequence_packing import PackingConfig, pack_sample, sample_length
from modeling.sequence import PackedSequence, SequenceBuilder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackingBudget:
    """Token budget of one pack (upstream's names and defaults): a pack is yielded once it reaches
    ``expected_num_tokens`` and never exceeds ``max_num_tokens``; longer samples are skipped; the overflow
    buffer holds up to ``max_buffer_size`` samples and is drained first while a pack is shorter than
    ``prefer_buffer_before``."""

    expected_num_tokens: int = 32768
    max_num_tokens: int = 36864
    max_num_tokens_per_sample: int = 16384
    prefer_buffer_before: int = 16384
    max_buffer_size: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.expected_num_tokens <= self.max_num_tokens:
            raise DataConfigError(
                f"need 0 < expected_num_tokens ({self.expected_num_tokens}) <= max_num_tokens "
                f"({self.max_num_tokens})"
            )
        if not 0 < self.max_num_tokens_per_sample <= self.max_num_tokens:
            # a sample longer than a whole pack would make the flush branch yield empty packs
            raise DataConfigError(
                f"need 0 < max_num_tokens_per_sample ({self.max_num_tokens_per_sample}) <= max_num_tokens "
                f"({self.max_num_tokens})"
            )
        if self.max_buffer_size < 0:
            raise DataConfigError(f"max_buffer_size must be >= 0, got {self.max_buffer_size}")


@dataclass(frozen=True)
class ConditionDropout:
    """Probabilities of dropping a sample's text / ViT / VAE conditioning (classifier-free guidance)."""

    text: float = 0.1
    vit: float = 0.3
    vae: float = 0.3


class PackedDataset(torch.utils.data.IterableDataset):
    """IterableDataset of packs (one pack = one training step's batch on this rank).

    ``data_state``: a rank state from ``DataStateTracker.state_dict()`` (or upstream's per-rank
    ``data_status`` entry) to resume from; None starts from the beginning.
    ``stats``: skip counters of the in-process iterator (``num_workers == 0``); with workers, read
    ``seq.meta["data_state"]["stats"]`` or ``DataStateTracker.stats()`` instead.
    """

    def __init__(
        self,
        groups: list[DataGroup],
        packing: PackingConfig,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        data_seed: int,
        budget: PackingBudget = PackingBudget(),
        data_state: dict | None = None,
    ):
        super().__init__()
        self.groups = groups
        self.packing = packing
        self.rank, self.world_size, self.num_workers, self.data_seed = (
            rank,
            world_size,
            num_workers,
            data_seed,
        )
        self.expected_num_tokens = budget.expected_num_tokens
        self.max_num_tokens = budget.max_num_tokens
        self.max_num_tokens_per_sample = budget.max_num_tokens_per_sample
        self.prefer_buffer_before = budget.prefer_buffer_before
        self.max_buffer_size = budget.max_buffer_size
        if data_state is not None and not isinstance(data_state, dict):
            raise DataConfigError(
                f"data_state must be this rank's dict (data_status[rank]), got {type(data_state).__name__}"
            )
        if data_state is not None and not is_upstream_status(data_state):
            check_rank_state(
                data_state, rank=rank, world_size=world_size, num_workers=num_workers, data_seed=data_seed
            )
        self.data_state = data_state
        self.stats: Counter = Counter()
        total = sum(g.weight for g in groups)
        self.cumprobs = [sum(g.weight for g in groups[: i + 1]) / total for i in range(len(groups))]

    # ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PackedSequence]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            if self.num_workers != 0:
                # the sharding (and so the saved state) depends on the number of workers
                raise DataConfigError(
                    f"PackedDataset was built for num_workers={self.num_workers} but is iterated without "
                    "DataLoader workers; build it with num_workers=0 or use build_dataloader()"
                )
            loader_worker, n_workers = 0, 0
        else:
            if info.num_workers != self.num_workers:
                raise DataConfigError(
                    f"PackedDataset was built for num_workers={self.num_workers} but the DataLoader has {info.num_workers}"
                )
            loader_worker, n_workers = info.id, info.num_workers
        offset = self._next_worker()
        worker_id = (loader_worker + offset) % max(n_workers, 1)
        return self._packs(worker_id, n_workers)

    def _next_worker(self) -> int:
        if self.data_state is None or is_upstream_status(self.data_state):
            return 0
        return int(self.data_state["next_worker"])

    def _initial_worker_state(self, worker_id: int) -> dict | None:
        if self.data_state is None:
            return None
        if is_upstream_status(self.data_state):
            return worker_state_from_upstream(self.data_state, worker_id)
        workers = self.data_state["workers"]
        state = workers.get(worker_id, workers.get(str(worker_id)))
        return copy.deepcopy(state) if state is not None else None

    def _packs(self, worker_id: int, n_workers: int) -> Iterator[PackedSequence]:
        saved = self._initial_worker_state(worker_id)
        resumable = {g.name for g in self.groups if g.resume_data_status}
        positions = {g.name: None for g in self.groups}
        if n_workers == 0:
            self.stats.clear()  # in-process counters restart with each iteration (restored below)
        stats = self.stats if n_workers == 0 else Counter()
        py_rng, np_rng = new_rngs(self.data_seed, self.rank, worker_id)
        packs = 0
        buffer: list[dict] = []
        if saved is not None:
            for name, pos in saved["positions"].items():
                if name in resumable and name in positions:
                    positions[name] = copy.deepcopy(pos)
            if saved.get("py_rng") is not None:
                py_rng, np_rng = decode_py_rng(saved["py_rng"]), decode_np_rng(saved["np_rng"])
            stats.update(saved.get("stats", {}))
            packs = int(saved.get("packs", 0))
            by_name = {g.name: g for g in self.groups}
            for ref in saved.get("buffer", []):
                if ref["group"] in resumable and ref["group"] in by_name:
                    ds = by_name[ref["group"]].dataset
                    sample = ds.load(worker_id, n_workers, ref["epoch"], ref["data_indexes"], Counter())
                    sample["group"] = ref["group"]
                    buffer.append(sample)
            logger.info(
                "rank-%d worker-%d: resuming data after %d packs (%d buffered samples)",
                self.rank,
                worker_id,
                packs,
                len(buffer),
            )

        iters = {
            g.name: g.dataset.iterate(worker_id, n_workers, positions[g.name], stats) for g in self.groups
        }

        def take(group: DataGroup) -> dict:
            sample = next(iters[group.name])
            ref = sample["source_ref"]
            positions[group.name] = {"epoch": ref["epoch"], "last": copy.deepcopy(ref["data_indexes"])}
            sample["group"] = group.name
            return sample

        def emit(builder: SequenceBuilder) -> PackedSequence:
            nonlocal packs
            packs += 1
            batch = builder.build()
            batch.meta["data_state"] = {
                "format": FORMAT,
                "rank": self.rank,
                "world_size": self.world_size,
                "num_workers": self.num_workers,
                "data_seed": self.data_seed,
                "worker_id": worker_id,
                "packs": packs,
                "positions": copy.deepcopy(positions),
                "buffer": [{"group": s["group"], **copy.deepcopy(s["source_ref"])} for s in buffer],
                "py_rng": encode_py_rng(py_rng),
                "np_rng": encode_np_rng(np_rng),
                "stats": dict(stats),
            }
            return batch

        state = self.packing.new_builder()  # the pack being filled
        while True:
            if state.curr == 0:
                for group in self.groups:
                    if not group.is_mandatory:
                        continue
                    while True:
                        sample = take(group)
                        length = sample_length(sample)
                        if length < self.max_num_tokens_per_sample:
                            pack_sample(sample, state, self.packing, py_rng, np_rng)
                            break
                        self._count_too_long(stats, sample, length)

            if state.curr < self.prefer_buffer_before and buffer:
                sample, from_buffer = buffer.pop(0), True
            else:
                draw = py_rng.random()
                index = next((i for i, p in enumerate(self.cumprobs) if draw < p), 0)
                sample, from_buffer = take(self.groups[index]), False

            length = sample_length(sample)
            if length > self.max_num_tokens_per_sample:
                self._count_too_long(stats, sample, length)
                continue
            if state.curr + length > self.max_num_tokens:
                if len(buffer) < self.max_buffer_size and not from_buffer:
                    buffer.append(sample)
                else:
                    stats["dropped_at_flush"] += 1
                    stats[
                        "dropped_at_flush/from_buffer" if from_buffer else "dropped_at_flush/buffer_full"
                    ] += 1
                    logger.info(
                        "pack of %d tokens yielded; dropping a %d-token %s sample (%s)",
                        state.curr,
                        length,
                        sample["group"],
                        "from buffer" if from_buffer else "buffer full",
                    )
                    yield emit(state)
                    state = self.packing.new_builder()
                continue

            pack_sample(sample, state, self.packing, py_rng, np_rng)
            if state.curr >= self.expected_num_tokens:
                yield emit(state)
                state = self.packing.new_builder()

    def _count_too_long(self, stats: Counter, sample: dict, length: int) -> None:
        stats["too_long_samples"] += 1
        stats[f"too_long_samples/{sample['group']}"] += 1
        logger.info(
            "skipping a %d-token %s sample %s",
            length,
            sample["group"],
            sample["data_indexes"]["data_indexes"],
        )


# ----------------------------------------------------------------------------------------------------
def build_packed_dataset(
    config: str | dict,
    tokenizer,
    special_ids,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    data_seed: int = 42,
    budget: PackingBudget = PackingBudget(),
    dropout: ConditionDropout = ConditionDropout(),
    geometry: ModelGeometry | None = None,
    data_root: str | None = None,
    data_state: dict | None = None,
) -> PackedDataset:
    """Build the training PackedDataset from a YAML mix (path or dict).

    ``special_ids``: modeling.tokenizer.SpecialTokenIds (or dict). ``geometry``: the model's sizes
    (``ModelGeometry.of(config)``; default: ModelGeometry's). ``data_root``: base of relative
    registry paths (default ``$SCONE_DATA_ROOT``). ``data_state``: this rank's saved state (see
    data_state.py) to resume from. Defaults follow upstream's training CLI.
    """
    groups = build_groups(
        config,
        tokenizer,
        rank=rank,
        world_size=world_size,
        data_seed=data_seed,
        data_root=data_root_from_env(data_root),
    )
    geometry = geometry or ModelGeometry()
    check_groups(groups, geometry, num_workers)
    packing = PackingConfig.from_special_ids(
        special_ids,
        text_cond_dropout_prob=dropout.text,
        vit_cond_dropout_prob=dropout.vit,
        vae_cond_dropout_prob=dropout.vae,
        **asdict(geometry),
    )
    return PackedDataset(
        groups,
        packing,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        data_seed=data_seed,
        budget=budget,
        data_state=data_state,
    )


def collate_packs(batch: list[PackedSequence]) -> PackedSequence:
    """DataLoader collate for ``batch_size=1``: the pack itself."""
    if len(batch) != 1:
        raise ValueError(f"packs are batches already; use DataLoader(batch_size=1), got {len(batch)}")
    return batch[0]


def build_dataloader(
    dataset: PackedDataset, *, prefetch_factor: int = 2, pin_memory: bool = True
) -> torch.utils.data.DataLoader:
    """DataLoader with upstream's settings (batch_size 1, drop_last) and ``dataset.num_workers`` workers."""
    workers = dataset.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        num_workers=workers,
        collate_fn=collate_packs,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=pin_memory,
        drop_last=True,
    )
