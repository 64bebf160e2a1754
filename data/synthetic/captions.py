"""ShapeWorld understanding data: captions of the training cases' reference images, in BAGEL's
``vlm_sft`` JSONL layout (docs/data.md, read by data/vlm_dataset.py).

Why: the tiny model starts from nothing, unlike BAGEL, whose understanding expert and SigLIP were
pretrained on captioning and VQA. Trained on generation alone it learns the instruction's words (shape,
layout, background) but gets the references' attributes right little more often than chance: colour,
pattern and size (it does read them: scripts/tiny/reference_swap.py).
Captions give the understanding expert and the ViT a direct CE signal to encode exactly those
attributes, which is what Scone's understanding bridge assumes it can do. Measured (docs/shapeworld.md
§4.1): mixed into Stage II, the understanding side learns them, but the generator's score does not
improve. So the captions are an option (data/configs/shapeworld_stage2_vlm.yaml), not part of the recipe.

Every caption lists the subjects from left to right with all four attributes, then the background::

    <image>  Describe the image.
    -> From left to right: a small red dotted star, a large blue solid circle; on a plain sand background.

The images are the training cases' own references (the same draws as the parquet rows), so the
captions add no image the training set does not already hold, and nothing of the benchmark.
"""

from __future__ import annotations

import itertools
import json
import os

from data.synthetic.render import render_image
from data.synthetic.shapeworld import Case, Reference

QUESTION = "<image>\nDescribe the image."


def describe_reference(ref: Reference) -> str:
    """Caption of one reference image: its subjects left to right, then its background."""
    background = f"{ref.background.texture} {ref.background.colour} background"
    subjects = sorted(ref.placements, key=lambda p: (p.x, p.y))
    if not subjects:
        return f"No subjects; only a {background}."
    return (
        "From left to right: "
        + ", ".join(p.subject.description() for p in subjects)
        + f"; on a {background}."
    )


def write_vlm_dataset(cases: list[Case], out_dir: str, max_images: int) -> dict:
    """Render the references of ``cases`` (in order, at most ``max_images``) to ``out_dir/images`` and
    write ``out_dir/shapeworld_vlm.jsonl``, one captioning conversation per image.

    Returns the registry entry (``data_dir``, ``jsonl_path``, ``num_total_samples``) with absolute paths.
    """
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    refs = ((i, j, case.size, ref) for i, case in enumerate(cases) for j, ref in enumerate(case.references))
    lines = []
    for c_idx, r_idx, size, ref in itertools.islice(refs, max_images):
        name = f"c{c_idx:06d}_r{r_idx}.png"
        render_image(size, ref.background, ref.placements).save(os.path.join(image_dir, name))
        conversation = [
            {"from": "human", "value": QUESTION},
            {"from": "gpt", "value": describe_reference(ref)},
        ]
        lines.append(json.dumps({"image": name, "conversations": conversation}) + "\n")
    return write_jsonl_entry(lines, os.path.join(out_dir, "shapeworld_vlm.jsonl"), image_dir)


def write_jsonl_entry(lines: list[str], jsonl_path: str, image_dir: str) -> dict:
    """Write ``lines`` to ``jsonl_path`` (through a temporary file: never half a file) and return the
    ``vlm_sft`` registry entry (``data_dir``, ``jsonl_path``, ``num_total_samples``) with absolute paths."""
    tmp = jsonl_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, jsonl_path)
    return {
        "data_dir": os.path.abspath(image_dir),
        "jsonl_path": os.path.abspath(jsonl_path),
        "num_total_samples": len(lines),
    }
