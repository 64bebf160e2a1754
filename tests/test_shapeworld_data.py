"""ShapeWorld generator: rendering, case sampling, parquet + parquet_info layout, benchmark layout."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data.benchmark_cases import read_cases
from data.parquet_io import list_parquet_files, load_parquet_info, read_row_group, row_groups_of_files
from data.synthetic.make_shapeworld import DATASET_NAMES, main, make_shapeworld
from data.synthetic.render import (
    BACKGROUND_COLOURS,
    SUBJECT_COLOURS,
    Background,
    Placement,
    Subject,
    png_bytes,
    render_image,
    shade_of,
)
from data.synthetic.shapeworld import (
    LAYOUTS,
    TASK_TYPES,
    case_from_record,
    case_record,
    case_signature,
    generate_cases,
    render_case,
    sample_case,
)


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def test_palettes_are_well_separated():
    subj = list(SUBJECT_COLOURS.values())
    bgs = list(BACKGROUND_COLOURS.values())
    assert min(_dist(a, b) for a, b in itertools.combinations(subj, 2)) >= 80
    assert min(_dist(a, b) for a, b in itertools.combinations(bgs, 2)) >= 65
    inks = subj + [shade_of(c) for c in subj]
    assert min(_dist(a, b) for a in inks for b in bgs) >= 115  # subjects always stand out of the scene
    assert not set(SUBJECT_COLOURS) & set(BACKGROUND_COLOURS)  # colour words are unambiguous


def test_render_is_deterministic_and_validated():
    p = [Placement(Subject("star", "red", "striped", "large"), 0.5, 0.5)]
    a = png_bytes(render_image(96, Background("azure", "grid"), p))
    b = png_bytes(render_image(96, Background("azure", "grid"), p))
    assert a == b
    img = Image.open(io.BytesIO(a))
    assert img.size == (96, 96) and img.mode == "RGB"
    arr = np.asarray(img)
    assert tuple(arr[0, 0]) != tuple(arr[48, 48])  # the subject is drawn at the centre
    with pytest.raises(ValueError, match="multiple of 16"):
        render_image(90, Background("white"), p)
    with pytest.raises(ValueError, match="leaves the image"):
        render_image(96, Background("white"), [Placement(p[0].subject, 0.05, 0.5)])
    with pytest.raises(ValueError, match="unknown subject colour"):
        Subject("star", "teal", "solid", "small")
    with pytest.raises(ValueError, match="unknown background colour"):
        Background("red")


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_sample_case_structure(task_type):
    for i in range(40):
        case = sample_case(random.Random(f"t{i}"), task_type, 96, scene_prob=0.5)
        subjects_refs = [r for r in case.references if r.kind == "subjects"]
        n = len(case.targets)
        assert (n == 1) == ("single" in task_type) and 1 <= n <= 3
        assert len(subjects_refs) == n  # one requested subject per subject reference
        ids = [
            (p.subject.shape, p.subject.colour, p.subject.pattern)
            for r in subjects_refs
            for p in r.placements
        ]
        assert len(ids) == len(set(ids)), "every candidate of a case has a distinct identity"
        for t in case.targets:
            ref = case.references[t.ref_index]
            assert ref.labels[t.candidate_index] == 1 and sum(ref.labels) == 1
            assert ref.placements[t.candidate_index].subject == t.subject
            assert f"from image {t.ref_index + 1}" in case.instruction
        assert sorted(t.position for t in case.targets) == sorted(LAYOUTS[n]) or n == 1
        if task_type.startswith("composition"):
            assert all(len(r.placements) == 1 for r in subjects_refs)
        else:
            for r in subjects_refs:
                shapes = [p.subject.shape for p in r.placements]
                assert len(shapes) in (2, 3)
                if task_type.endswith("cross"):
                    assert len(set(shapes)) == len(shapes)
                else:
                    assert len(set(shapes)) == 1
        if case.scene_index is not None:
            assert case.scene_index == len(case.references) - 1 and "S" in case.case_type
            assert (
                f"on the {case.background.colour} background from image {case.scene_index + 1}"
                in case.instruction
            )
            assert case.references[case.scene_index].background == case.background
        else:
            assert "S" not in case.case_type and "plain white background" in case.instruction
            assert case.background == Background("white", "plain")


def test_intra_instruction_names_the_distinguishing_attribute():
    for i in range(60):
        case = sample_case(random.Random(f"i{i}"), "distinction_single_intra", 96, 0.0)
        t = case.targets[0]
        others = [p.subject for j, p in enumerate(case.references[0].placements) if j != t.candidate_index]
        word = t.phrase.split()[1]  # "the <colour|pattern> <shape> from image 1"
        assert word in (t.subject.colour, t.subject.pattern)
        assert all(word not in (o.colour, o.pattern) for o in others), "the descriptor must be unique"


def test_record_round_trip_and_validation():
    case = sample_case(random.Random("rt"), "distinction_multi_intra", 96, 1.0)
    inputs = [f"images/k/ref{i}.png" for i in range(len(case.references))]
    rec = json.loads(json.dumps(case_record(case, "k", inputs, "ground_truth/x/k.png")))
    back = case_from_record(rec)
    assert case_signature(back) == case_signature(case)
    assert [len(x) for x in rec["subject_list"]] == [len(r.placements) for r in case.references]
    assert (
        rec["subject_list"][-1] == [] and rec["subject_label"][-1] == []
    )  # the scene image has no candidates
    bad = json.loads(json.dumps(rec))
    bad["shapeworld"]["targets"][0]["colour"] = "teal"
    with pytest.raises(ValueError, match="record 'k'.*teal"):
        case_from_record(bad)
    bad = json.loads(json.dumps(rec))
    del bad["shapeworld"]["background"]
    with pytest.raises(ValueError, match="record 'k': malformed"):
        case_from_record(bad)


def test_generate_cases_excludes_signatures():
    cases, redraws = generate_cases(3, "x", 12)
    assert redraws == 0
    assert [c.task_type for c in cases] == list(TASK_TYPES) * 2
    again, _ = generate_cases(3, "x", 12)
    assert [case_signature(c) for c in again] == [case_signature(c) for c in cases]
    other, redraws = generate_cases(3, "x", 12, exclude={case_signature(cases[0])})
    assert redraws >= 1 and case_signature(other[0]) != case_signature(cases[0])
    assert [case_signature(c) for c in other[1:]] == [case_signature(c) for c in cases[1:]]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and p.suffix != ".json"
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sw") / "out"
    assert (
        main(
            [
                "--out",
                str(out),
                "--num_train",
                "60",
                "--num_eval",
                "24",
                "--seed",
                "7",
                "--rows_per_file",
                "16",
                "--row_group_size",
                "4",
                "--num_vlm",
                "10",
            ]
        )
        == 0
    )
    return out


def test_parquet_layout(world):
    for name in DATASET_NAMES.values():
        data_dir = str(world / "parquet_data" / name)
        files = list_parquet_files(data_dir, 2)
        info_path = world / "parquet_info" / f"{name}.json"
        info = load_parquet_info([str(info_path)])
        assert set(info) == {os.path.join(os.path.abspath(data_dir), f) for f in os.listdir(data_dir)}
        units, missing = row_groups_of_files(files, info)
        assert not missing and len(units) == sum(info[f]["num_row_groups"] for f in files)
        total = 0
        for path, meta in info.items():
            pf = pq.ParquetFile(path)
            assert pf.num_row_groups == meta["num_row_groups"] == -(-pf.metadata.num_rows // 4)
            assert pf.schema_arrow.field("image").type == pa.list_(pa.binary())
            assert pf.schema_arrow.field("instruction").type == pa.string()
            total += pf.metadata.num_rows
        # 60 cases round-robin over 6 task types: 2 composition types, 4 distinction types
        assert total == (20 if "single" in name else 40)
        assert max(m["num_row_groups"] for m in info.values()) == 4  # several row groups per file
        rows = read_row_group(files[0], 0)
        for row in rows:
            imgs = [Image.open(io.BytesIO(b)) for b in row["image"]]
            assert all(im.format == "PNG" and im.size == (96, 96) for im in imgs)
            assert row["instruction"].startswith("Place ")
            n_refs = len(row["image"]) - 1
            assert f"image {n_refs}" in row["instruction"]  # every reference is used by the instruction
            assert f"image {n_refs + 1}" not in row["instruction"]  # ... and the target is not a reference
    manifest = json.loads((world / "manifest.json").read_text())
    entry = manifest["dataset_info"]["s2i"]["shapeworld_multi_candidate"]
    assert entry["num_total_samples"] == 40 and os.path.isdir(entry["data_dir"])


def test_benchmark_layout(world):
    bench = world / "bench"
    cases, problems = read_cases(bench / "data.jsonl")  # the shared SconeEval reader accepts it
    assert not problems and len(cases) == 24
    assert {c.task_type for c in cases} == set(TASK_TYPES)
    for c in cases:
        rec = c.raw
        assert all((bench / p).is_file() for p in c.input_images)
        assert (bench / rec["target_image"]).is_file()
        assert rec["target_image"] == f"ground_truth/{c.task_type}/{c.key}.png"
        case = case_from_record(rec)
        assert ("S" in c.case_type) == (case.scene_index is not None)
        if c.task_type.startswith("distinction"):
            assert len(c.subject_list) == len(c.input_images)
            assert [len(x) for x in c.subject_list] == [len(x) for x in c.subject_label]
        else:
            assert c.subject_list is None
        # the stored images are exactly what the description renders
        refs, target = render_case(case)
        assert png_bytes(target) == (bench / rec["target_image"]).read_bytes()
        assert png_bytes(refs[0]) == (bench / c.input_images[0]).read_bytes()


def test_same_seed_same_bytes_and_disjoint_splits(world, tmp_path):
    again = tmp_path / "again"
    make_shapeworld(str(again), 60, 24, 7, rows_per_file=16, row_group_size=4, num_vlm=10)
    assert _tree_digest(again) == _tree_digest(world)
    other = tmp_path / "other"
    make_shapeworld(str(other), 60, 24, 8, rows_per_file=16, row_group_size=4, num_vlm=10)
    assert _tree_digest(other) != _tree_digest(world)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_shapeworld(str(world), 6, 6, 7)
    # train and eval never share a case, even when the world is tiny enough for collisions to happen
    train, _ = generate_cases(0, "train", 600)
    evals, _ = generate_cases(0, "eval", 60, unique=True)
    sigs = {case_signature(c) for c in evals}
    naive = [c for c in train if case_signature(c) in sigs]
    assert naive, "the check below would be vacuous: no collision in the naive draw"
    fixed, redraws = generate_cases(0, "train", 600, exclude=sigs)
    assert redraws >= len(naive) and not sigs & {case_signature(c) for c in fixed}


def test_training_pipeline_reads_shapeworld(world):
    """The parquet output goes straight into the s2i dataset of the training pipeline."""
    from collections import Counter

    from data.data_config import build_groups
    from modeling.tokenizer import load_tokenizer

    tokenizer, _, _ = load_tokenizer(str(Path(__file__).parent / "fixtures" / "bagel-tiny" / "checkpoint"))
    manifest = json.loads((world / "manifest.json").read_text())
    names = sorted(DATASET_NAMES.values())
    config = {
        "s2i": {
            "dataset_names": names,
            "num_used_data": [2, 3],
            "weight": 1,
            "image_transform_args": {"image_stride": 16, "max_image_size": 96, "min_image_size": 32},
            "vit_image_transform_args": {"image_stride": 14, "max_image_size": 98, "min_image_size": 28},
            "dataset_info": manifest["dataset_info"]["s2i"],
        }
    }
    ds = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)[0].dataset
    stats = Counter()
    for sample in itertools.islice(ds.iterate(0, 0, None, stats), 12):
        plan = [(p["type"], p["loss"]) for p in sample["sequence_plan"]]
        n_refs = (len(plan) - 2) // 2
        assert n_refs >= 1 and plan == [("vae_image", 0), ("vit_image", 0)] * n_refs + [
            ("text", 0),
            ("vae_image", 1),
        ]
        assert tuple(sample["image_tensor_list"][-1].shape) == (3, 96, 96)  # target kept at world size


def test_vlm_captions_describe_the_training_references(world):
    """--num_vlm: captions of the training cases' reference images, read by the vlm_sft dataset."""
    from collections import Counter

    from data.data_config import build_groups
    from data.synthetic.captions import describe_reference
    from modeling.tokenizer import load_tokenizer

    manifest = json.loads((world / "manifest.json").read_text())
    entry = manifest["dataset_info"]["vlm_sft"]["shapeworld_vlm"]
    lines = [json.loads(x) for x in Path(entry["jsonl_path"]).read_text().splitlines()]
    assert len(lines) == entry["num_total_samples"] == 10
    # the same draws as the parquet rows: the first training cases' references, in order
    evals, _ = generate_cases(7, "eval", 24, unique=True)
    train, _ = generate_cases(7, "train", 60, exclude={case_signature(c) for c in evals})
    refs = [(i, j, r) for i, c in enumerate(train) for j, r in enumerate(c.references)][:10]
    for line, (i, j, ref) in zip(lines, refs):
        assert line["image"] == f"c{i:06d}_r{j}.png"
        image = Image.open(Path(entry["data_dir"]) / line["image"])
        assert png_bytes(image.convert("RGB")) == png_bytes(render_case(train[i])[0][j])
        human, gpt = line["conversations"]
        assert human == {"from": "human", "value": "<image>\nDescribe the image."}
        assert gpt["from"] == "gpt" and gpt["value"] == describe_reference(ref)
        for p in ref.placements:  # every attribute of every subject is named
            assert p.subject.description() in gpt["value"]
    two = Subject("star", "red", "dotted", "small"), Subject("circle", "blue", "solid", "large")
    from data.synthetic.shapeworld import Reference

    ref = Reference(
        "subjects", Background("sand"), (Placement(two[0], 0.7, 0.3), Placement(two[1], 0.2, 0.6))
    )
    assert describe_reference(ref) == (
        "From left to right: a large blue solid circle, a small red dotted star; on a plain sand background."
    )
    assert describe_reference(Reference("scene", Background("mint", "grid"))).startswith("No subjects")

    tokenizer, _, _ = load_tokenizer(str(Path(__file__).parent / "fixtures" / "bagel-tiny" / "checkpoint"))
    # the experiment's Stage II YAML: its vlm_sft group, on this world's captions
    from data.data_config import load_data_config

    yaml_path = Path(__file__).parents[1] / "data" / "configs" / "shapeworld_stage2_vlm.yaml"
    group = load_data_config(str(yaml_path))["vlm_sft"]
    assert group["dataset_names"] == ["shapeworld_vlm"]
    group.update(num_used_data=[10], dataset_info=manifest["dataset_info"]["vlm_sft"])
    config = {"vlm_sft": group}
    ds = build_groups(config, tokenizer, rank=0, world_size=1, data_seed=0, data_root=None)[0].dataset
    stats = Counter()
    for sample in itertools.islice(ds.iterate(0, 0, None, stats), 10):
        plan = [(p["type"], p["loss"]) for p in sample["sequence_plan"]]
        assert plan == [("vit_image", 0), ("text", 0), ("text", 1)]
    assert not any(k.startswith(("corrupt", "skipped")) and v for k, v in stats.items())
