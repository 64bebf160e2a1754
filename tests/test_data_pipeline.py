"""Packed dataset behaviour: sharding, exact resume, budgets, error counting and reporting."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data.data_config import ModelGeometry, build_groups
from data.data_state import FORMAT, DataStateTracker
from data.packed_dataset import ConditionDropout, PackingBudget, build_dataloader, build_packed_dataset
from data.parquet_io import DataConfigError, make_parquet_info
from data.sequence_packing import sample_length
from data.sharding import shard_for_rank, shard_for_worker
from data.tiny_data import make_tiny_dataset, s2i_row
from modeling.tokenizer import load_tokenizer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bagel-tiny")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "data", "configs", "scone_tiny.yaml")
# small budgets so that the overflow buffer, flushes and dropout all happen within a few packs
BUDGET = dict(
    budget=PackingBudget(
        expected_num_tokens=420,
        max_num_tokens=420,
        max_num_tokens_per_sample=300,
        prefer_buffer_before=300,
        max_buffer_size=2,
    ),
    dropout=ConditionDropout(text=0.2, vit=0.2, vae=0.2),
    geometry=ModelGeometry(max_latent_size=64),
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(os.path.join(FIXTURE, "checkpoint"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    make_tiny_dataset(root, num_files=2, rows_per_file=6, rows_per_group=3, num_vlm=12, seed=1)
    return root


def assert_same(a, b, path="batch"):
    """Deep equality for packs (tensors compared exactly, incl. dtype)."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        assert_same(dataclasses.asdict(a), dataclasses.asdict(b), path)
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def build(tok, data_root, **kw):
    """``build_packed_dataset`` on the tiny mix with BUDGET; PackingBudget fields in ``kw`` replace its own."""
    tokenizer, ids, _ = tok
    changes = {k: kw.pop(k) for k in list(kw) if k in PackingBudget.__dataclass_fields__}
    args = {**BUDGET, **kw}
    if changes:
        args["budget"] = dataclasses.replace(BUDGET["budget"], **changes)
    return build_packed_dataset(CONFIG, tokenizer, ids, data_root=data_root, **args)


# ---------------------------------------------------------------------------------------------------
def test_sharding_is_deterministic_and_disjoint():
    units = [(f"f{i // 3}.parquet", i % 3) for i in range(50)]
    seen = []
    for rank in range(2):
        rank_units = shard_for_rank(units, 42, rank, 2)
        assert rank_units == shard_for_rank(list(reversed(units)), 42, rank, 2)  # input order irrelevant
        assert len(rank_units) == 25
        for worker in range(3):
            part = shard_for_worker(rank_units, worker, 3)
            assert len(part) == 8  # 25 // 3, remainder dropped
            assert part == rank_units[worker * 8 : (worker + 1) * 8][::-1]  # upstream reverses
            seen.extend(part)
    assert len(seen) == len(set(seen)) == 48
    assert shard_for_rank(units, 43, 0, 2) != shard_for_rank(units, 42, 0, 2)


def test_dataset_shards_rows_disjointly_over_ranks_and_workers(tok, data_root):
    tokenizer, _, _ = tok
    rows_seen = []
    for rank in range(2):
        groups = build_groups(CONFIG, tokenizer, rank=rank, world_size=2, data_seed=7, data_root=data_root)
        s2i = groups[0].dataset
        assert len(s2i.units) == 8  # 2 datasets x 2 files x 2 row groups
        for worker in range(2):
            units = s2i.worker_units(worker, 2)
            assert len(units) == 2
            stats = Counter()
            for sample in itertools.islice(s2i.iterate(worker, 2, None, stats), 6):  # 2 row groups x 3 rows
                di = sample["data_indexes"]
                assert di["worker_id"] == worker and di["dataset_name"] == "s2i"
                rows_seen.append((units[di["data_indexes"][0]], di["data_indexes"][1]))
    assert len(rows_seen) == len(set(rows_seen)) == 24  # every (row group, row) exactly once


def test_packs_respect_budgets_and_carry_state(tok, data_root):
    ds = build(tok, data_root)
    packs = list(itertools.islice(iter(ds), 12))
    for batch in packs:
        assert 0 < batch.length <= BUDGET["budget"].max_num_tokens
        assert batch.length == sum(batch.sample_lens) == batch.position_ids.numel()
        assert all(n <= BUDGET["budget"].max_num_tokens_per_sample for n in batch.sample_lens)
        assert len(batch.attention_masks()) == len(batch.sample_lens) == len(batch.split_lens)
        assert batch.meta["data_state"]["format"] == FORMAT
        # markers + text + vae + vit tokens tile the sequence exactly once
        allidx = torch.cat([batch.text_indexes, batch.vae_indexes, batch.vit_indexes]).sort().values
        assert torch.equal(allidx, torch.arange(batch.length))
    assert {d["dataset_name"] for b in packs for d in b.meta["data_indexes"]} == {"s2i", "vlm_sft"}
    # the small budget must actually exercise the buffer and the flush path
    assert any(b.meta["data_state"]["buffer"] for b in packs)
    assert ds.stats["dropped_at_flush"] + ds.stats["too_long_samples"] > 0


def test_resume_in_process_is_exact(tok, data_root):
    reference = list(itertools.islice(iter(build(tok, data_root)), 10))
    for stop in (3, 6):
        tracker = DataStateTracker(rank=0, world_size=1, num_workers=0, data_seed=42)
        for batch in reference[: stop + 1]:
            tracker.update(batch)
        saved = tracker.state_dict()
        path_state = copy.deepcopy(saved)
        resumed = list(itertools.islice(iter(build(tok, data_root, data_state=path_state)), 10 - stop - 1))
        for a, b in zip(resumed, reference[stop + 1 :]):
            assert_same(a, b)


def test_state_survives_torch_save_weights_only(tok, data_root, tmp_path):
    ds = build(tok, data_root)
    tracker = DataStateTracker(rank=0, world_size=1, num_workers=0, data_seed=42)
    packs = list(itertools.islice(iter(ds), 5))
    for batch in packs[:3]:
        tracker.update(batch)
    torch.save([tracker.state_dict()], tmp_path / "data_status.pt")
    loaded = torch.load(tmp_path / "data_status.pt", weights_only=True)[0]
    json.dumps(loaded)  # plain containers only
    resumed = list(itertools.islice(iter(build(tok, data_root, data_state=loaded)), 2))
    for a, b in zip(resumed, packs[3:]):
        assert_same(a, b)


def test_resume_with_dataloader_workers_is_exact(tok, data_root):
    ds = build(tok, data_root, num_workers=2)
    loader = build_dataloader(ds, pin_memory=False, prefetch_factor=1)
    reference = list(itertools.islice(iter(loader), 7))
    assert [b.meta["data_state"]["worker_id"] for b in reference] == [0, 1, 0, 1, 0, 1, 0]
    # the two workers read disjoint rows
    rows = {w: {json.dumps(d) for b in reference if b.meta["data_state"]["worker_id"] == w for d in b.meta["data_indexes"]}
            for w in (0, 1)}  # fmt: skip
    assert rows[0] and rows[1]
    tracker = DataStateTracker(rank=0, world_size=1, num_workers=2, data_seed=42)
    for batch in reference[:5]:  # stop after a pack of worker 0: worker 1 must come next
        tracker.update(batch)
    state = tracker.state_dict()
    assert state["next_worker"] == 1
    resumed_loader = build_dataloader(
        build(tok, data_root, num_workers=2, data_state=state), pin_memory=False
    )
    resumed = list(itertools.islice(iter(resumed_loader), 2))
    for a, b in zip(resumed, reference[5:]):
        assert_same(a, b)


def test_state_mismatch_is_rejected(tok, data_root):
    tracker = DataStateTracker(rank=0, world_size=1, num_workers=0, data_seed=42)
    tracker.update(next(iter(build(tok, data_root))))
    with pytest.raises(DataConfigError, match="data_seed"):
        build(tok, data_root, data_seed=1, data_state=tracker.state_dict())


def test_upstream_data_status_is_accepted(tok, data_root):
    # upstream format: {group: {worker_id: last data_indexes}}; resumes the positions (fresh RNG/buffer)
    ds = build(tok, data_root, data_state={"s2i": {0: [1, 2]}, "vlm_sft": {0: 4}})
    firsts = {}
    for batch in itertools.islice(iter(ds), 6):
        for d in batch.meta["data_indexes"]:
            firsts.setdefault(d["dataset_name"], d["data_indexes"])
    assert firsts["s2i"] == [2, 0]  # row group 1 ends at row 2 -> next is row group 2, row 0
    assert firsts["vlm_sft"] == 5


def test_corrupt_rows_are_counted_and_skipped(tok, tmp_path, caplog):
    import random

    tokenizer, ids, _ = tok
    rng = random.Random(0)
    rows = [s2i_row(rng, False) for _ in range(4)]
    rows[1]["image"][0] = b"not an image at all"
    rows[2]["image"][-1] = rows[2]["image"][-1][:60]  # truncated target: decoded, but counted
    data_dir = tmp_path / "pq"
    data_dir.mkdir()
    path = str(data_dir / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    info = tmp_path / "info.json"
    info.write_text(json.dumps(make_parquet_info([path])))
    config = {"s2i": {"dataset_names": ["bad"], "num_used_data": [1], "weight": 1,
                      "image_transform_args": {"image_stride": 16, "max_image_size": 64, "min_image_size": 32},
                      "vit_image_transform_args": {"image_stride": 14, "max_image_size": 56, "min_image_size": 28},
                      "dataset_info": {"bad": {"data_dir": str(data_dir), "parquet_info_path": str(info)}}}}  # fmt: skip
    ds = build_packed_dataset(config, tokenizer, ids, budget=PackingBudget(10**5, 10**5, 10**5))
    groups = ds.groups
    stats = Counter()
    with caplog.at_level(logging.WARNING):
        samples = list(itertools.islice(groups[0].dataset.iterate(0, 0, None, stats), 3))
    assert [s["data_indexes"]["data_indexes"] for s in samples] == [[0, 0], [0, 2], [0, 3]]
    assert stats["corrupt_rows"] == 1 and stats["corrupt_rows/s2i"] == 1
    assert stats["truncated_images"] == 1
    assert any(path in r.getMessage() and "row group 0 row 1" in r.getMessage() for r in caplog.records)


def test_unreadable_row_group_is_counted(tok, tmp_path):
    tokenizer, _, _ = tok
    data_dir = tmp_path / "pq"
    data_dir.mkdir()
    good = str(data_dir / "a.parquet")
    import random

    pq.write_table(pa.Table.from_pylist([s2i_row(random.Random(1), False)]), good)
    bad = str(data_dir / "b.parquet")
    with open(bad, "wb") as f:
        f.write(b"garbage, not parquet")
    info = tmp_path / "info.json"
    info.write_text(json.dumps({good: {"num_row_groups": 1}, bad: {"num_row_groups": 1}}))
    config = {"s2i": {"dataset_names": ["x"], "num_used_data": [2], "weight": 1,
                      "image_transform_args": {"image_stride": 16, "max_image_size": 64, "min_image_size": 32},
                      "vit_image_transform_args": {"image_stride": 14, "max_image_size": 56, "min_image_size": 28},
                      "dataset_info": {"x": {"data_dir": str(data_dir), "parquet_info_path": str(info)}}}}  # fmt: skip
    groups = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)
    stats = Counter()
    samples = list(itertools.islice(groups[0].dataset.iterate(0, 0, None, stats), 2))
    assert len(samples) == 2 and stats["corrupt_row_groups"] >= 1


def test_missing_data_dir_is_a_clear_error(tok, tmp_path):
    tokenizer, _, _ = tok
    config = {"s2i": {"dataset_names": ["x"], "num_used_data": [1], "weight": 1,
                      "image_transform_args": {"image_stride": 16, "max_image_size": 64, "min_image_size": 32},
                      "dataset_info": {"x": {"data_dir": str(tmp_path / "nope"),
                                             "parquet_info_path": str(tmp_path / "i.json")}}}}  # fmt: skip
    (tmp_path / "i.json").write_text("{}")
    with pytest.raises(DataConfigError, match="nope"):
        build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)


def test_missing_parquet_info_file_is_a_clear_error(tok, data_root):
    tokenizer, _, _ = tok
    config = {"s2i": {"dataset_names": ["x"], "num_used_data": [1], "weight": 1,
                      "image_transform_args": {"image_stride": 16, "max_image_size": 64, "min_image_size": 32},
                      "dataset_info": {"x": {"data_dir": "scone_tiny/parquet_data/tiny_single_candidate",
                                             "parquet_info_path": "scone_tiny/parquet_info/missing.json"}}}}  # fmt: skip
    with pytest.raises(DataConfigError, match="missing.json"):
        build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=data_root)


def test_relative_paths_need_a_data_root(tok, monkeypatch):
    tokenizer, _, _ = tok
    monkeypatch.delenv("SCONE_DATA_ROOT", raising=False)
    with pytest.raises(DataConfigError, match="SCONE_DATA_ROOT"):
        build_groups(CONFIG, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)


def test_data_root_from_environment(tok, data_root, monkeypatch):
    tokenizer, ids, _ = tok
    monkeypatch.setenv("SCONE_DATA_ROOT", data_root)
    ds = build_packed_dataset(CONFIG, tokenizer, ids, **BUDGET)
    assert next(iter(ds)).length > 0


def test_files_absent_from_parquet_info_are_reported(tok, data_root, tmp_path, caplog):
    tokenizer, _, _ = tok
    src = os.path.join(data_root, "scone_tiny", "parquet_data", "tiny_single_candidate")
    files = sorted(os.path.join(src, n) for n in os.listdir(src))
    info = tmp_path / "partial.json"
    info.write_text(json.dumps(make_parquet_info(files[:1])))
    config = {"s2i": {"dataset_names": ["x"], "num_used_data": [2], "weight": 1,
                      "image_transform_args": {"image_stride": 16, "max_image_size": 64, "min_image_size": 32},
                      "vit_image_transform_args": {"image_stride": 14, "max_image_size": 56, "min_image_size": 28},
                      "dataset_info": {"x": {"data_dir": src, "parquet_info_path": str(info)}}}}  # fmt: skip
    with caplog.at_level(logging.WARNING):
        groups = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)
    assert groups[0].dataset.missing_in_parquet_info == files[1:]
    assert any("1 parquet file(s)" in r.getMessage() and files[1] in r.getMessage() for r in caplog.records)
    assert {u[0] for u in groups[0].dataset.units} == {files[0]}


def test_too_long_samples_are_counted(tok, data_root):
    ds = build(tok, data_root, max_num_tokens_per_sample=120, max_num_tokens=420)
    packs = list(itertools.islice(iter(ds), 3))
    assert ds.stats["too_long_samples"] > 0
    assert all(n <= 120 for b in packs for n in b.sample_lens)
    assert packs[-1].meta["data_state"]["stats"]["too_long_samples"] == ds.stats["too_long_samples"]


def test_mandatory_group_opens_every_pack(tok, data_root):
    tokenizer, ids, _ = tok
    import yaml

    with open(CONFIG) as f:
        config = yaml.safe_load(f)
    config["vlm_sft"]["is_mandatory"] = True
    config["vlm_sft"]["weight"] = 0
    ds = build_packed_dataset(config, tokenizer, ids, data_root=data_root, **BUDGET)
    for batch in itertools.islice(iter(ds), 4):
        assert batch.meta["data_indexes"][0]["dataset_name"] == "vlm_sft"
        assert sum(d["dataset_name"] == "vlm_sft" for d in batch.meta["data_indexes"]) == 1


def test_budget_validation(tok, data_root):
    with pytest.raises(DataConfigError, match="max_num_tokens_per_sample"):
        build(tok, data_root, max_num_tokens_per_sample=1000, max_num_tokens=500, expected_num_tokens=400)


def test_move_batch_to_device(tok, data_root):
    batch = next(iter(build(tok, data_root)))
    moved = batch.to("cpu")
    assert moved.text_ids.device.type == "cpu" and moved.vae_images.device.type == "cpu"
    assert moved.sample_lens == batch.sample_lens and moved.meta is batch.meta


def test_sample_length_counts_markers(tok, data_root):
    tokenizer, _, _ = tok
    groups = build_groups(CONFIG, tokenizer, rank=0, world_size=1, data_seed=0, data_root=data_root)
    sample = next(groups[0].dataset.iterate(0, 0, None, Counter()))
    assert sample_length(sample) == sample["num_tokens"] + 2 * len(sample["sequence_plan"])


def test_workers_config_must_match_iteration(tok, data_root):
    ds = build(tok, data_root, num_workers=2)
    with pytest.raises(DataConfigError, match="num_workers=2"):
        next(iter(ds))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_loader_and_move_to_cuda(tok, data_root):
    loader = build_dataloader(build(tok, data_root, num_workers=1), pin_memory=True)
    batch = next(iter(loader))
    assert batch.text_ids.is_pinned()
    moved = batch.to("cuda")
    assert moved.vae_images.is_cuda and all(m.is_cuda for m in moved.attention_masks("cuda"))
    assert torch.equal(moved.position_ids.cpu(), batch.position_ids)
