"""Picture for the README: one row per benchmark case — references → generated image (→ ground truth).

    python scripts/tiny/make_grid.py --bench_dir ckpts/tiny-work/data/shapeworld/bench \\
        --result_dir ckpts/tiny-work/eval/stage2_mask --keys sw00001 sw00004 --out assets/shapeworld_grid.png

Rows keep the references in input order; a thin gap separates references, generation and ground truth,
and each row is labelled with its key and task type. Generated images are read from
``result_dir/round0/{task_type}/{key}.png`` (the benchmark runner's layout) or the flat layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger("make_grid")


def _find_generated(result_dir: Path, task_type: str, key: str) -> Path:
    for p in (result_dir / "round0" / task_type / f"{key}.png", result_dir / task_type / f"{key}.png"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"no generated image for {key} ({task_type}) under {result_dir}")


def make_grid(bench_dir: Path, result_dir: Path, keys: list[str], cell: int = 96, with_truth: bool = True):
    records = {}
    with open(bench_dir / "data.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                records[r["key"]] = r
    missing = [k for k in keys if k not in records]
    if missing:
        raise KeyError(f"keys not in {bench_dir}/data.jsonl: {missing}")
    max_refs = max(len(records[k]["input_images"]) for k in keys)
    gap, label_h = 12, 14
    cols = max_refs + 1 + int(with_truth)
    width = cols * cell + 2 * gap + 4
    height = len(keys) * (cell + label_h + 4)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for row, key in enumerate(keys):
        rec = records[key]
        y = row * (cell + label_h + 4) + label_h
        draw.text((2, y - label_h + 1), f"{key}  {rec['task_type']}", fill=(60, 60, 60))
        for i, rel in enumerate(rec["input_images"]):
            canvas.paste(Image.open(bench_dir / rel).convert("RGB").resize((cell, cell)), (i * cell, y))
        x = max_refs * cell + gap
        canvas.paste(
            Image.open(_find_generated(result_dir, rec["task_type"], key))
            .convert("RGB")
            .resize((cell, cell)),
            (x, y),
        )
        if with_truth:
            truth = Image.open(bench_dir / rec["target_image"]).convert("RGB").resize((cell, cell))
            canvas.paste(truth, (x + cell + gap, y))
    return canvas


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench_dir", required=True)
    p.add_argument("--result_dir", required=True)
    p.add_argument("--keys", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cell", type=int, default=96)
    p.add_argument("--no_truth", action="store_true", help="omit the ground-truth column")
    args = p.parse_args(argv)
    grid = make_grid(Path(args.bench_dir), Path(args.result_dir), args.keys, args.cell, not args.no_truth)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid.save(args.out)
    logger.info("wrote %s (%dx%d)", args.out, *grid.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
