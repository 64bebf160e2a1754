"""Data state: what to save so that a resumed run continues with exactly the same packs.

Three levels (all plain python containers: ``torch.save``/``torch.load(weights_only=True)``/JSON safe):

* **worker state** (attached by each DataLoader worker to every pack as ``seq.meta["data_state"]``)::

      {"format": FORMAT, "rank", "world_size", "num_workers", "data_seed", "worker_id",
       "packs": packs yielded so far by this worker,
       "positions": {group: {"epoch": e, "last": data_indexes} | None},   # last row read per group
       "buffer": [{"group", "epoch", "data_indexes"}, ...],                # overflow buffer, re-read on resume
       "py_rng": [...], "np_rng": [...],                                   # packer RNGs (dropout, timesteps)
       "stats": {counter: int}}                                            # cumulative skip counters

* **rank state** (``DataStateTracker.state_dict()``; pass it back as ``data_state=`` when rebuilding)::

      {"format": FORMAT, "rank", "world_size", "num_workers", "data_seed",
       "next_worker": logical worker whose pack comes next, "workers": {worker_id: worker state}}

* **checkpoint file** ``data_status.pt``: a list indexed by rank of rank states (gathered by the
  trainer), like upstream.

Upstream's own ``data_status`` (``{group: {worker_id: data_indexes}}`` per rank) is also accepted on
restore: positions are taken from it, the buffer starts empty and RNGs start fresh (approximate resume,
as upstream).
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections import Counter

import numpy as np

from data.parquet_io import DataConfigError

FORMAT = "scone-data-state-v1"


def worker_seed(data_seed: int, rank: int, worker_id: int) -> int:
    """Deterministic 32-bit seed of the packer RNGs of one (rank, logical worker)."""
    digest = hashlib.sha256(f"scone-pack|{data_seed}|{rank}|{worker_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def new_rngs(data_seed: int, rank: int, worker_id: int) -> tuple[random.Random, np.random.RandomState]:
    seed = worker_seed(data_seed, rank, worker_id)
    return random.Random(seed), np.random.RandomState(seed)


def encode_py_rng(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def decode_py_rng(state: list) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def encode_np_rng(rng: np.random.RandomState) -> list:
    name, keys, pos, has_gauss, cached = rng.get_state(legacy=True)
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def decode_np_rng(state: list) -> np.random.RandomState:
    rng = np.random.RandomState()
    rng.set_state((state[0], np.asarray(state[1], dtype=np.uint32), state[2], state[3], state[4]))
    return rng


def is_upstream_status(state: dict) -> bool:
    return isinstance(state, dict) and "format" not in state


def check_rank_state(state: dict, *, rank: int, world_size: int, num_workers: int, data_seed: int) -> None:
    """A state is only valid for the same world size, number of workers and data seed."""
    if state.get("format") != FORMAT:
        raise DataConfigError(f"unknown data state format {state.get('format')!r} (expected {FORMAT})")
    expected = {"rank": rank, "world_size": world_size, "num_workers": num_workers, "data_seed": data_seed}
    wrong = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}: saved {a} vs now {b}" for k, (a, b) in wrong.items())
        raise DataConfigError(
            f"data state does not match this run ({details}); resume needs the same world size, num_workers "
            "and data_seed, or pass data_state=None to restart the data from the beginning"
        )


def worker_state_from_upstream(status: dict, worker_id: int) -> dict:
    """Positions of one worker from upstream's ``{group: {worker_id: data_indexes}}``."""
    positions = {}
    for group, per_worker in (status or {}).items():
        if per_worker is not None and worker_id in per_worker:
            positions[group] = {"epoch": 0, "last": copy.deepcopy(per_worker[worker_id])}
    return {"positions": positions, "buffer": [], "py_rng": None, "np_rng": None, "stats": {}, "packs": 0}


class DataStateTracker:
    """Lives in the training process; records the state of the last pack *consumed* from each worker.

    Usage::

        tracker = DataStateTracker(rank, world_size, num_workers, data_seed, initial=restored_rank_state)
        for batch in loader:
            tracker.update(batch)          # call once per pack actually trained on
            ...
        torch.save(all_gathered([tracker.state_dict()]), "data_status.pt")
    """

    def __init__(
        self, rank: int, world_size: int, num_workers: int, data_seed: int, initial: dict | None = None
    ):
        self.rank, self.world_size, self.num_workers, self.data_seed = (
            rank,
            world_size,
            num_workers,
            data_seed,
        )
        self.workers: dict[int, dict] = {}
        self.next_worker = 0
        if initial is not None and not is_upstream_status(initial):
            check_rank_state(
                initial, rank=rank, world_size=world_size, num_workers=num_workers, data_seed=data_seed
            )
            self.workers = {int(k): copy.deepcopy(v) for k, v in initial["workers"].items()}
            self.next_worker = int(initial["next_worker"])

    def update(self, batch) -> None:
        """``batch``: a PackedSequence from PackedDataset."""
        state = batch.meta["data_state"]
        worker = int(state["worker_id"])
        self.workers[worker] = state
        # DataLoader serves its workers round-robin; the next pack comes from the next logical worker.
        self.next_worker = (worker + 1) % max(self.num_workers, 1)

    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "data_seed": self.data_seed,
            "next_worker": self.next_worker,
            "workers": copy.deepcopy(self.workers),
        }

    def stats(self) -> dict[str, int]:
        """Skip counters summed over this rank's workers (cumulative since the start of training)."""
        total: Counter = Counter()
        for state in self.workers.values():
            total.update(state.get("stats", {}))
        return dict(total)
