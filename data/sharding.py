"""Deterministic sharding over ranks x DataLoader workers, and the resumable row iterator
(docs/data.md).

A dataset is a list of *units* (parquet row groups, parquet files, or JSONL lines). For a given
``data_seed`` the units are sorted, shuffled with ``random.Random(data_seed)``, rank r takes the slice
``[r*m, (r+1)*m)`` with ``m = len // world_size`` and worker w of W takes ``[w*q, (w+1)*q)`` of the
rank's list with ``q = m // W``, reversed (upstream). Remainders are dropped. Without DataLoader
workers (``num_workers == 0``) the single in-process iterator gets the rank's whole list, not reversed.

Every unit keeps its order forever (one "epoch" = one pass over the worker's units), so the position
``{"epoch": e, "last": data_indexes}`` of the last yielded row is enough to resume.
"""

from __future__ import annotations

import json
import logging
import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator

logger = logging.getLogger(__name__)


def shard_for_rank(units: list, data_seed: int, rank: int, world_size: int) -> list:
    """Units of one rank: sorted, shuffled with ``random.Random(data_seed)``, contiguous slice."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    ordered = sorted(units)
    random.Random(data_seed).shuffle(ordered)
    per_rank = len(ordered) // world_size
    return ordered[rank * per_rank : (rank + 1) * per_rank]


def shard_for_worker(rank_units: list, worker_id: int, num_workers: int) -> list:
    """Units of one DataLoader worker (``num_workers == 0``: the in-process iterator gets everything)."""
    if num_workers == 0:
        return list(rank_units)
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id {worker_id} out of range for num_workers {num_workers}")
    per_worker = len(rank_units) // num_workers
    return rank_units[worker_id * per_worker : (worker_id + 1) * per_worker][::-1]


def row_rng(data_seed: int, group: str, epoch: int, data_indexes) -> random.Random:
    """RNG for random choices made while parsing one row (e.g. which caption).

    Seeded by the row's identity instead of drawing from a global stream, so a sample re-read after a
    resume (buffered samples) is bit-identical to the one read before.
    """
    return random.Random(f"{data_seed}|{group}|{epoch}|{json.dumps(data_indexes)}")


class ShardedSource(ABC):
    """Base class of the group datasets: sharding, epochs, error counting, resume positions.

    Subclasses define ``_walk`` (sequential rows after a position), ``_fetch`` (random access to one
    row) and ``parse_row`` (row -> sample dict, see sample_builder.py; ``None`` = skip and count).
    """

    def __init__(self, dataset_name: str, units: list, *, rank: int, world_size: int, data_seed: int):
        self.dataset_name = dataset_name
        self.units = units
        self.rank = rank
        self.world_size = world_size
        self.data_seed = data_seed
        self.rank_units = shard_for_rank(units, data_seed, rank, world_size)
        self.current_where = ""

    def worker_units(self, worker_id: int, num_workers: int) -> list:
        units = shard_for_worker(self.rank_units, worker_id, num_workers)
        if not units:
            raise RuntimeError(
                f"dataset group {self.dataset_name!r}: rank {self.rank} worker {worker_id} gets no data "
                f"({len(self.units)} units for world_size {self.world_size} x num_workers {num_workers}); "
                "use more files (num_used_data) or fewer ranks/workers"
            )
        return units

    # --- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _walk(self, units: list, after, stats: Counter) -> Iterator[tuple[object, str, object]]:
        """Yield ``(data_indexes, where, row)`` for every row strictly after ``after`` (None = start)."""

    @abstractmethod
    def _fetch(self, units: list, data_indexes) -> tuple[str, object]:
        """Random access: ``(where, row)`` of one row."""

    @abstractmethod
    def parse_row(self, row, rng: random.Random, stats: Counter) -> dict | None:
        """Row -> sample dict (sample_builder.py); ``None`` skips the row (counted); raising = corrupt."""

    # --- iteration --------------------------------------------------------------------------------
    def iterate(
        self, worker_id: int, num_workers: int, position: dict | None, stats: Counter
    ) -> Iterator[dict]:
        """Endless stream of samples of one worker, starting right after ``position``."""
        units = self.worker_units(worker_id, num_workers)
        epoch = position["epoch"] if position else 0
        after = position["last"] if position else None
        logger.info(
            "rank-%d worker-%d dataset-%s: %d units, starting at epoch %d after %s",
            self.rank,
            worker_id,
            self.dataset_name,
            len(units),
            epoch,
            after,
        )
        while True:
            produced = 0
            from_start = after is None
            for data_indexes, where, row in self._walk(units, after, stats):
                sample = self._parse(row, where, epoch, data_indexes, stats)
                if sample is None:
                    continue
                produced += 1
                yield self._decorate(sample, worker_id, epoch, data_indexes)
            if produced == 0 and from_start:
                raise RuntimeError(
                    f"dataset group {self.dataset_name!r} (rank {self.rank}, worker {worker_id}): a full pass "
                    f"over {len(units)} units produced no usable sample; stats so far: {dict(stats)}"
                )
            after = None
            epoch += 1
            logger.info(
                "dataset-%s repeats in rank-%d worker-%d (epoch %d)",
                self.dataset_name,
                self.rank,
                worker_id,
                epoch,
            )

    def load(self, worker_id: int, num_workers: int, epoch: int, data_indexes, stats: Counter) -> dict:
        """Re-read one sample by its index (restores the packer's overflow buffer after a resume)."""
        units = self.worker_units(worker_id, num_workers)
        where, row = self._fetch(units, data_indexes)
        sample = self._parse(row, where, epoch, data_indexes, stats)
        if sample is None:
            raise RuntimeError(f"buffered sample {where} could not be re-read on resume")
        return self._decorate(sample, worker_id, epoch, data_indexes)

    def _parse(self, row, where: str, epoch: int, data_indexes, stats: Counter) -> dict | None:
        self.current_where = where  # lets parse_row helpers name the row in their warnings
        try:
            sample = self.parse_row(
                row, row_rng(self.data_seed, self.dataset_name, epoch, data_indexes), stats
            )
        except Exception as e:  # a corrupt row must never stop training, but it is counted and logged
            stats["corrupt_rows"] += 1
            stats[f"corrupt_rows/{self.dataset_name}"] += 1
            logger.warning("skipping corrupt row (%s): %s: %s", where, type(e).__name__, e)
            return None
        if sample is None:
            stats["skipped_rows"] += 1
            stats[f"skipped_rows/{self.dataset_name}"] += 1
            logger.warning("skipping row without a usable training target (%s)", where)
        return sample

    def _decorate(self, sample: dict, worker_id: int, epoch: int, data_indexes) -> dict:
        sample["data_indexes"] = {
            "data_indexes": data_indexes,
            "worker_id": worker_id,
            "dataset_name": self.dataset_name,
        }
        sample["source_ref"] = {"epoch": epoch, "data_indexes": data_indexes}
        return sample


def count_read_error(stats: Counter, dataset_name: str, where: str, err: Exception) -> None:
    """Count and log a unit (row group / file) that could not be read at all."""
    stats["corrupt_row_groups"] += 1
    stats[f"corrupt_row_groups/{dataset_name}"] += 1
    logger.warning("skipping unreadable data (%s): %s: %s", where, type(err).__name__, err)
