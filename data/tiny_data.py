"""Write a small, valid dataset in the exact Scone-S2I layout (used by tests and scripts/make_tiny_data.py).

Layout under ``root`` (the data root; registry names in data/dataset_info.py)::

    scone_tiny/parquet_data/tiny_single_candidate/part-00000.parquet ...   (columns image, instruction)
    scone_tiny/parquet_data/tiny_multi_candidate/part-00000.parquet ...
    scone_tiny/parquet_info/tiny_single_candidate.json                     (keys = full parquet paths)
    scone_tiny/parquet_info/tiny_multi_candidate.json
    scone_tiny/vlm/images/*.png, scone_tiny/vlm/tiny_vlm.jsonl

Images are simple shapes drawn with PIL. Single-candidate rows: every reference shows one subject.
Multi-candidate rows: a reference shows several candidate subjects and the instruction names the one
to use ("the red circle from image 1"), as in Scone's distinction data.
"""

from __future__ import annotations

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from data.parquet_io import make_parquet_info
from data.synthetic.render import SUBJECT_COLOURS, draw_shape, png_bytes

# ShapeWorld's shapes and colours (data/synthetic/render.py), a few of them: the tiny set exercises the
# pipeline (odd image sizes, several candidates per reference), it is not meant to be learned.
COLORS = {name: SUBJECT_COLOURS[name] for name in ("red", "green", "blue", "yellow", "purple", "orange")}
SHAPES = ("circle", "square", "triangle")
SCENES = ("on a beach", "in a garden", "on a table", "in a snowy field")


def draw_image(rng: random.Random, subjects: list[tuple[str, str]], size: tuple[int, int]) -> Image.Image:
    """An image of ``size`` (w, h) with the (shape, color name) subjects side by side."""
    w, h = size
    background = tuple(rng.randint(170, 250) for _ in range(3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    slot = w / max(len(subjects), 1)
    for i, (shape, color) in enumerate(subjects):
        pad = max(2, int(min(slot, h) * rng.uniform(0.1, 0.25)))
        box = (int(i * slot) + pad, pad, int((i + 1) * slot) - pad, h - pad)
        draw_shape(draw, shape, box, COLORS[color])
    return image


def random_size(rng: random.Random, lo: int = 40, hi: int = 96) -> tuple[int, int]:
    return rng.randint(lo, hi), rng.randint(lo, hi)


def s2i_row(rng: random.Random, multi_candidate: bool) -> dict:
    """One row: ``image`` = [refs..., target] PNG bytes, ``instruction``."""
    num_refs = rng.randint(1, 2)
    picked, refs = [], []
    for _ in range(num_refs):
        subject = (rng.choice(SHAPES), rng.choice(list(COLORS)))
        candidates = [subject]
        if multi_candidate:
            while len(candidates) < 3:
                other = (rng.choice(SHAPES), rng.choice(list(COLORS)))
                if other not in candidates:
                    candidates.append(other)
            rng.shuffle(candidates)
        picked.append(subject)
        refs.append(draw_image(rng, candidates, random_size(rng)))
    target = draw_image(rng, picked, random_size(rng))
    names = [f"the {c} {s} from image {i + 1}" for i, (s, c) in enumerate(picked)]
    instruction = f"Place {' and '.join(names)} {rng.choice(SCENES)}."
    return {"image": [png_bytes(im) for im in [*refs, target]], "instruction": instruction}


def write_s2i_parquet(path: str, rows: list[dict], rows_per_group: int) -> None:
    """Parquet with the s2i schema (``image``: list<binary>, ``instruction``: string)."""
    schema = pa.schema([("image", pa.list_(pa.binary())), ("instruction", pa.string())])
    table = pa.Table.from_pylist(rows, schema=schema)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group)


def write_parquet_info(info_path: str, parquet_paths: list[str]) -> None:
    os.makedirs(os.path.dirname(info_path), exist_ok=True)
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(make_parquet_info(parquet_paths), f, indent=2)


def vlm_line(rng: random.Random, image_name: str, subjects: list[tuple[str, str]]) -> dict:
    what = ", ".join(f"a {c} {s}" for s, c in subjects)
    return {
        "image": image_name,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat objects are in this picture?"},
            {"from": "gpt", "value": f"There are {len(subjects)} objects: {what}."},
        ],
    }


def make_tiny_dataset(
    root: str,
    *,
    num_files: int = 2,
    rows_per_file: int = 8,
    rows_per_group: int = 4,
    num_vlm: int = 8,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Write the tiny dataset under ``root``; returns the written files per dataset name."""
    rng = random.Random(seed)
    base = os.path.join(root, "scone_tiny")
    written: dict[str, list[str]] = {}
    for name, multi in (("tiny_single_candidate", False), ("tiny_multi_candidate", True)):
        paths = []
        for f in range(num_files):
            path = os.path.join(base, "parquet_data", name, f"part-{f:05d}.parquet")
            write_s2i_parquet(path, [s2i_row(rng, multi) for _ in range(rows_per_file)], rows_per_group)
            paths.append(path)
        write_parquet_info(os.path.join(base, "parquet_info", f"{name}.json"), paths)
        written[name] = paths

    image_dir = os.path.join(base, "vlm", "images")
    os.makedirs(image_dir, exist_ok=True)
    lines = []
    for i in range(num_vlm):
        subjects = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(rng.randint(1, 3))]
        name = f"vlm_{i:04d}.png"
        draw_image(rng, subjects, random_size(rng)).save(os.path.join(image_dir, name))
        lines.append(json.dumps(vlm_line(rng, name, subjects)))
    jsonl = os.path.join(base, "vlm", "tiny_vlm.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    written["tiny_vlm"] = [jsonl]
    return written
