"""Registry, YAML mixes and the tiny-data script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from data.data_config import load_data_config
from data.dataset_info import DATASET_INFO, dataset_meta, registry_classes
from data.parquet_io import DataConfigError, list_parquet_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "data", "configs")


def test_registry_groups_and_scone_sets():
    assert set(registry_classes()) == {"s2i", "s2i_think", "t2i_pretrain", "unified_edit", "vlm_sft"}
    s2i = DATASET_INFO["s2i"]
    for name, files in (
        ("scone_single_candidate_base", 70),
        ("scone_single_candidate_refined", 22),
        ("scone_multi_candidate", 36),
    ):
        assert s2i[name]["num_files"] == files
        meta = dataset_meta("s2i", name, "/data")
        assert meta["data_dir"] == f"/data/Scone-S2I-57K/parquet_data/{name}"
        assert meta["parquet_info_path"] == f"/data/Scone-S2I-57K/parquet_info/{name}.json"
    with pytest.raises(DataConfigError, match="not registered"):
        dataset_meta("s2i", "nope", "/data")


def test_stage_configs():
    step1 = load_data_config(os.path.join(CONFIGS, "scone_stage1_step1.yaml"))
    step2 = load_data_config(os.path.join(CONFIGS, "scone_stage1_step2.yaml"))
    stage2 = load_data_config(os.path.join(CONFIGS, "scone_stage2.yaml"))
    assert step1["s2i"]["dataset_names"] == ["scone_single_candidate_base"] and step1["s2i"][
        "num_used_data"
    ] == [70]
    assert step2["s2i"]["dataset_names"] == ["scone_single_candidate_refined"] and step2["s2i"][
        "num_used_data"
    ] == [22]
    assert stage2["s2i"]["dataset_names"] == ["scone_single_candidate_refined", "scone_multi_candidate"]
    assert stage2["s2i"]["num_used_data"] == [22, 36]
    for cfg in (step1, step2, stage2):
        assert cfg["s2i"]["image_transform_args"] == {
            "image_stride": 16,
            "max_image_size": 1024,
            "min_image_size": 512,
        }
        assert cfg["s2i"]["vit_image_transform_args"] == {
            "image_stride": 14,
            "max_image_size": 518,
            "min_image_size": 224,
        }


def test_upstream_stage2_mismatch_is_rejected():
    config = load_data_config(os.path.join(CONFIGS, "scone_stage2.yaml"))
    config["s2i"]["num_used_data"] = [58]  # as released upstream
    with pytest.raises(DataConfigError, match="paired one-to-one"):
        load_data_config(config)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"nope": {"dataset_names": ["a"], "num_used_data": [1]}}, "unknown dataset group"),
        ({"s2i": {"dataset_names": [], "num_used_data": []}}, "non-empty"),
        ({"s2i": {"dataset_names": ["a"], "num_used_data": [0]}}, "positive"),
        ({"s2i": {"dataset_names": ["a"], "num_used_data": [1], "weight": -1}}, "weight"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(DataConfigError, match=match):
        load_data_config(bad)


def test_file_listing_is_sorted_and_cycled(tmp_path):
    for name in ("c.parquet", "a.parquet", "b.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in list_parquet_files(str(tmp_path), 2)] == ["a.parquet", "b.parquet"]
    assert [os.path.basename(p) for p in list_parquet_files(str(tmp_path), 5)] == [
        "a.parquet", "b.parquet", "c.parquet", "a.parquet", "b.parquet",
    ]  # fmt: skip
    with pytest.raises(DataConfigError, match="does not exist"):
        list_parquet_files(str(tmp_path / "missing"), 1)


def test_make_tiny_data_cli(tmp_path):
    script = os.path.join(ROOT, "scripts", "make_tiny_data.py")
    help_out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True)
    assert "--out" in help_out.stdout
    subprocess.run(
        [sys.executable, script, "--out", str(tmp_path), "--num_files", "1", "--rows_per_file", "3",
         "--rows_per_group", "2", "--num_vlm", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    for name in ("tiny_single_candidate", "tiny_multi_candidate"):
        meta = dataset_meta("s2i", name, str(tmp_path))
        files = sorted(os.listdir(meta["data_dir"]))
        assert files == ["part-00000.parquet"]
        path = os.path.join(meta["data_dir"], files[0])
        with open(meta["parquet_info_path"]) as f:
            info = json.load(f)
        assert info == {path: {"num_row_groups": 2}}
        pf = pq.ParquetFile(path)
        assert pf.num_row_groups == 2 and pf.schema_arrow.names == ["image", "instruction"]
        rows = pf.read().to_pylist()
        assert all(len(r["image"]) >= 2 and isinstance(r["image"][0], bytes) for r in rows)
    vlm = dataset_meta("vlm_sft", "tiny_vlm", str(tmp_path))
    with open(vlm["jsonl_path"]) as f:
        lines = [json.loads(x) for x in f]
    assert len(lines) == 2 and all(os.path.isfile(os.path.join(vlm["data_dir"], x["image"])) for x in lines)


def test_image_views_name_only_the_views_every_group_agrees_on(tmp_path):
    from types import SimpleNamespace as NS

    from data.data_config import image_views
    from data.transforms import ImageTransform
    from train.checkpointing import record_image_views

    vae96, vit70 = ImageTransform(96, 32, 16), ImageTransform(70, 28, 14)
    s2i = NS(dataset=NS(builder=NS(transform=vae96, vit_transform=vit70)))
    vqa = NS(
        dataset=NS(understanding_only=True, transform=ImageTransform(112, 28, 14))
    )  # its one view: the ViT's
    assert image_views([s2i]) == {"vae_transform": (96, 32, 16), "vit_transform": (70, 28, 14)}
    assert image_views([s2i, vqa]) == {"vae_transform": (96, 32, 16)}  # two ViT views: none is named

    # a step folder records a view only where it differs from what the folder would run at
    own = {"semantic_layer": 1, "inference": {"vit_transform": [70, 28, 14], "height": 96}}
    (tmp_path / "scone_config.json").write_text(json.dumps(own))
    assert record_image_views(str(tmp_path), {"vit_transform": (70, 28, 14)}) == {}
    assert json.loads((tmp_path / "scone_config.json").read_text()) == own
    assert record_image_views(str(tmp_path), {"vit_transform": (112, 28, 14)}) == {
        "vit_transform": [112, 28, 14]
    }
    own["inference"]["vit_transform"] = [112, 28, 14]
    assert json.loads((tmp_path / "scone_config.json").read_text()) == own  # the rest kept
    bare = tmp_path / "bagel"
    bare.mkdir()  # a released folder (no scone_config.json) trained at upstream's views stays without one
    assert (
        record_image_views(str(bare), {"vit_transform": (980, 224, 14), "vae_transform": (1024, 512, 16)})
        == {}
    )
    assert not (bare / "scone_config.json").exists()
