"""Write a ShapeWorld training set (Scone-S2I parquet layout) and benchmark (SconeEval layout).

    python -m data.synthetic.make_shapeworld --out DIR --num_train N --num_eval M --seed S

Output (docs/data.md, docs/evaluation.md):

    DIR/parquet_data/shapeworld_single_candidate/part-00000.parquet   composition_* cases
    DIR/parquet_data/shapeworld_multi_candidate/part-00000.parquet    distinction_* cases
    DIR/parquet_info/shapeworld_{single,multi}_candidate.json        {abs parquet path: {"num_row_groups": n}}
    DIR/bench/data.jsonl                                              SconeEval records + "shapeworld" field
    DIR/bench/images/<key>/ref<i>.png                                 reference images
    DIR/bench/ground_truth/<task_type>/<key>.png                      target images (result layout)
    DIR/vlm/images/c<case>_r<i>.png + DIR/vlm/shapeworld_vlm.jsonl     captions of training references (--num_vlm)
    DIR/manifest.json                                                 arguments, counts, dataset registry entries

With ``--novel_shape heart`` every case requests one heart (a shape the standard world never draws) and
the training sets are named ``shapeworld_heart_{single,multi}_candidate``: data to teach a trained model a
new concept (docs/finetune.md).

Parquet rows: ``image`` = list<binary> of PNG bytes (references first, target last), ``instruction`` =
string. Eval cases are drawn first (seed stream "eval"); training cases (stream "train") that repeat an
eval case are redrawn, and the disjointness is asserted before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from data.synthetic.captions import write_vlm_dataset
from data.synthetic.render import NOVEL_SHAPES, png_bytes
from data.synthetic.shapeworld import Case, case_record, case_signature, generate_cases, render_case
from data.synthetic.vqa import plan_text, write_vqa_dataset

logger = logging.getLogger(__name__)

PARQUET_SCHEMA = pa.schema([("image", pa.list_(pa.binary())), ("instruction", pa.string())])
# s2i rows with a think-mode plan (data/s2i_dataset.py: S2IThinkDataset)
THINK_SCHEMA = pa.schema([*PARQUET_SCHEMA, ("plan", pa.string())])
DATASET_NAMES = {"single": "shapeworld_single_candidate", "multi": "shapeworld_multi_candidate"}
THINK_DATASET = "shapeworld_think"


def dataset_names(novel_shape: str | None = None) -> dict[str, str]:
    """Training set names; a novel-shape world's sets are named apart (``shapeworld_heart_...``) so they
    can sit next to the standard ones in one data mix."""
    if novel_shape is None:
        return dict(DATASET_NAMES)
    return {k: v.replace("shapeworld_", f"shapeworld_{novel_shape}_", 1) for k, v in DATASET_NAMES.items()}


def dataset_of(case: Case, novel_shape: str | None = None) -> str:
    """Composition cases (one subject per reference) → single-candidate set; distinction → multi."""
    return dataset_names(novel_shape)["single" if case.task_type.startswith("composition") else "multi"]


def case_row(case: Case, with_plan: bool = False) -> dict:
    """One s2i parquet row: PNG bytes of the references then the target, and the instruction (and with
    ``with_plan`` the think-mode plan, data.synthetic.vqa.plan_text)."""
    refs, target = render_case(case)
    row = {"image": [png_bytes(im) for im in refs] + [png_bytes(target)], "instruction": case.instruction}
    if with_plan:
        row["plan"] = plan_text(case)
    return row


def write_parquet_dataset(
    cases: list[Case],
    data_dir: str,
    info_path: str,
    rows_per_file: int = 256,
    row_group_size: int = 32,
    with_plan: bool = False,
) -> dict[str, dict]:
    """Render ``cases`` into ``data_dir/part-XXXXX.parquet`` files and write the parquet_info JSON
    (``with_plan``: rows carry a ``plan`` column too).

    Keys of the info map are ``os.path.join(abspath(data_dir), file)``: the training loader looks the
    files up by exactly that path. Returns the info map.
    """
    schema = THINK_SCHEMA if with_plan else PARQUET_SCHEMA
    if rows_per_file <= 0 or row_group_size <= 0:
        raise ValueError(
            f"rows_per_file ({rows_per_file}) and row_group_size ({row_group_size}) must be positive"
        )
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    info: dict[str, dict] = {}
    for file_idx, start in enumerate(range(0, len(cases), rows_per_file)):
        path = os.path.join(data_dir, f"part-{file_idx:05d}.parquet")
        chunk = cases[start : start + rows_per_file]
        with pq.ParquetWriter(path, schema) as writer:
            for g in range(0, len(chunk), row_group_size):
                rows = [case_row(c, with_plan) for c in chunk[g : g + row_group_size]]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=row_group_size)
        n_groups = pq.ParquetFile(path).num_row_groups
        info[path] = {"num_row_groups": n_groups, "num_rows": len(chunk)}
    os.makedirs(os.path.dirname(os.path.abspath(info_path)), exist_ok=True)
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info


def write_benchmark(cases: list[Case], bench_dir: str) -> list[dict]:
    """Write ``bench_dir/data.jsonl``, reference images and ground-truth targets; returns the records."""
    records = []
    os.makedirs(bench_dir, exist_ok=True)
    for i, case in enumerate(tqdm(cases, desc="benchmark", leave=False)):
        key = f"sw{i:05d}"
        refs, target = render_case(case)
        inputs = []
        os.makedirs(os.path.join(bench_dir, "images", key), exist_ok=True)
        for j, im in enumerate(refs):
            rel = f"images/{key}/ref{j}.png"
            with open(os.path.join(bench_dir, rel), "wb") as f:
                f.write(png_bytes(im))
            inputs.append(rel)
        target_rel = f"ground_truth/{case.task_type}/{key}.png"
        os.makedirs(os.path.join(bench_dir, "ground_truth", case.task_type), exist_ok=True)
        with open(os.path.join(bench_dir, target_rel), "wb") as f:
            f.write(png_bytes(target))
        records.append(case_record(case, key, inputs, target_rel))
    with open(os.path.join(bench_dir, "data.jsonl"), "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return records


def make_shapeworld(
    out: str,
    num_train: int,
    num_eval: int,
    seed: int,
    size: int = 96,
    scene_prob: float = 0.3,
    rows_per_file: int = 256,
    row_group_size: int = 32,
    overwrite: bool = False,
    num_vlm: int = 0,
    novel_shape: str | None = None,
    num_vqa: int = 0,
    num_vqa_eval: int = 0,
    vqa_eval_seed: int | None = None,
    num_think: int = 0,
) -> dict:
    """Generate everything under ``out``; returns the manifest (also written to ``out/manifest.json``).

    ``novel_shape`` (data.synthetic.render.NOVEL_SHAPES): a world where every case, training and
    benchmark, requests one subject of that shape (a concept the standard world never shows).
    ``num_vqa``: questions about the training cases' references, training phrasings (``out/vqa``);
    ``num_vqa_eval``: questions about the held-out world of ``vqa_eval_seed`` (default ``seed + 1``),
    each reference asked once in training phrasings and once in held-out ones (``out/vqa_eval``);
    ``num_think``: the first ``num_think`` training cases again, with their think-mode plan
    (``shapeworld_think`` parquet).
    """
    counts = (num_train, num_eval, num_vlm, num_vqa, num_vqa_eval, num_think)
    if min(counts) < 0:
        raise ValueError("num_train, num_eval, num_vlm, num_vqa, num_vqa_eval and num_think must be >= 0")
    vqa_eval_seed = seed + 1 if vqa_eval_seed is None else vqa_eval_seed
    if num_vqa_eval and vqa_eval_seed == seed:
        raise ValueError(f"vqa_eval_seed must differ from the training world's seed {seed}")
    if not 0.0 <= scene_prob <= 1.0:
        raise ValueError(f"scene_prob must be in [0, 1], got {scene_prob}")
    if size < 96:
        logger.warning(
            "size %d < 96: small subjects are only ~%d px wide; the judge (eval/shapeworld.py) is validated "
            "at >= 96 and may confuse diamond/cross/star/circle on blurred outputs at this size",
            size,
            round(0.2 * size),
        )
    targets = [
        os.path.join(out, d) for d in ("parquet_data", "parquet_info", "bench", "vlm", "vqa", "vqa_eval")
    ]
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise FileExistsError(
            f"output already exists: {', '.join(existing)} (pass --overwrite to replace it)"
        )
    for t in existing:
        shutil.rmtree(t)
    t0 = time.time()
    eval_cases, eval_redraws = generate_cases(
        seed, "eval", num_eval, size, scene_prob, unique=True, novel_shape=novel_shape
    )
    eval_sigs = {case_signature(c) for c in eval_cases}
    train_cases, train_redraws = generate_cases(
        seed, "train", num_train, size, scene_prob, exclude=eval_sigs, novel_shape=novel_shape
    )
    overlap = eval_sigs & {case_signature(c) for c in train_cases}
    assert not overlap, f"{len(overlap)} eval case(s) also appear in the training set"
    logger.info(
        "drew %d eval + %d train cases (%d eval duplicates and %d train/eval collisions redrawn)",
        num_eval,
        num_train,
        eval_redraws,
        train_redraws,
    )

    datasets = {}
    for name in dataset_names(novel_shape).values():
        subset = [c for c in train_cases if dataset_of(c, novel_shape) == name]
        if not subset:
            continue
        data_dir = os.path.join(out, "parquet_data", name)
        info_path = os.path.join(out, "parquet_info", f"{name}.json")
        info = write_parquet_dataset(subset, data_dir, info_path, rows_per_file, row_group_size)
        datasets[name] = {
            "data_dir": os.path.abspath(data_dir),
            "parquet_info_path": os.path.abspath(info_path),
            "num_files": len(info),
            "num_total_samples": len(subset),
        }
    if num_think:
        name = THINK_DATASET if novel_shape is None else f"shapeworld_{novel_shape}_think"
        data_dir = os.path.join(out, "parquet_data", name)
        info_path = os.path.join(out, "parquet_info", f"{name}.json")
        subset = train_cases[:num_think]
        info = write_parquet_dataset(
            subset, data_dir, info_path, rows_per_file, row_group_size, with_plan=True
        )
        think = {
            name: {
                "data_dir": os.path.abspath(data_dir),
                "parquet_info_path": os.path.abspath(info_path),
                "num_files": len(info),
                "num_total_samples": len(subset),
            }
        }
    if num_eval:
        write_benchmark(eval_cases, os.path.join(out, "bench"))
    vlm = {}
    question_counts = {}
    if num_vqa:
        entry = write_vqa_dataset(
            train_cases, os.path.join(out, "vqa"), "shapeworld_vqa", num_vqa, seed, "train"
        )
        question_counts["shapeworld_vqa"] = entry.pop("per_type")
        vlm["shapeworld_vqa"] = entry
    if num_vqa_eval:
        # a world never trained on: the eval stream of another seed
        world, _ = generate_cases(
            vqa_eval_seed, "eval", num_vqa_eval, size, scene_prob, novel_shape=novel_shape
        )
        entry = write_vqa_dataset(
            world,
            os.path.join(out, "vqa_eval"),
            "shapeworld_vqa_eval",
            10**9,
            vqa_eval_seed,
            "eval",
            (True, False),
        )
        question_counts["shapeworld_vqa_eval"] = entry.pop("per_type")
        vlm["shapeworld_vqa_eval"] = entry
    if num_vlm:
        vlm["shapeworld_vlm"] = write_vlm_dataset(train_cases, os.path.join(out, "vlm"), num_vlm)
        if vlm["shapeworld_vlm"]["num_total_samples"] < num_vlm:
            logger.warning(
                "--num_vlm %d: the %d training cases hold only %d reference images",
                num_vlm,
                num_train,
                vlm["shapeworld_vlm"]["num_total_samples"],
            )
    task_counts: dict[str, dict[str, int]] = {}
    for split, cases in (("train", train_cases), ("eval", eval_cases)):
        for c in cases:
            task_counts.setdefault(split, {}).setdefault(c.task_type, 0)
            task_counts[split][c.task_type] += 1
    manifest = {
        "args": {
            "num_train": num_train,
            "num_eval": num_eval,
            "seed": seed,
            "size": size,
            "scene_prob": scene_prob,
            "rows_per_file": rows_per_file,
            "row_group_size": row_group_size,
            "num_vlm": num_vlm,
            "novel_shape": novel_shape,
            "num_vqa": num_vqa,
            "num_vqa_eval": num_vqa_eval,
            "vqa_eval_seed": vqa_eval_seed,
            "num_think": num_think,
        },
        # entries for the training registry (DATASET_INFO["s2i"] / ["vlm_sft"])
        "dataset_info": {
            "s2i": datasets,
            **({"s2i_think": think} if num_think else {}),
            **({"vlm_sft": vlm} if vlm else {}),
        },
        "questions": question_counts,
        "bench_dir": os.path.abspath(os.path.join(out, "bench")) if num_eval else None,
        "task_counts": task_counts,
        "redraws": {"eval_duplicates": eval_redraws, "train_eval_collisions": train_redraws},
        "seconds": round(time.time() - t0, 2),
    }
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    logger.info("wrote %s in %.1f s", out, manifest["seconds"])
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the ShapeWorld training parquet and benchmark.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--num_train", type=int, required=True, help="training cases (task types round-robin)")
    ap.add_argument("--num_eval", type=int, required=True, help="benchmark cases (task types round-robin)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=96, help="image side in pixels, a multiple of 16")
    ap.add_argument("--scene_prob", type=float, default=0.3, help="probability that a case requests a scene")
    ap.add_argument("--rows_per_file", type=int, default=256)
    ap.add_argument("--row_group_size", type=int, default=32)
    ap.add_argument(
        "--num_vlm",
        type=int,
        default=0,
        help="caption this many training reference images (vlm_sft JSONL under OUT/vlm)",
    )
    ap.add_argument(
        "--novel_shape",
        choices=NOVEL_SHAPES,
        default=None,
        help="a world where every case requests one subject of this shape, never drawn by the standard world",
    )
    ap.add_argument(
        "--num_vqa",
        type=int,
        default=0,
        help="questions with known answers about training references, training phrasings (vlm_sft JSONL under OUT/vqa)",
    )
    ap.add_argument(
        "--num_vqa_eval",
        type=int,
        default=0,
        help="held-out world cases to ask about (seen and unseen phrasings; OUT/vqa_eval)",
    )
    ap.add_argument(
        "--vqa_eval_seed", type=int, default=None, help="seed of the held-out world (default seed + 1)"
    )
    ap.add_argument(
        "--num_think",
        type=int,
        default=0,
        help="the first N training cases again with a think-mode plan (parquet set shapeworld_think)",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_shapeworld(
        args.out,
        args.num_train,
        args.num_eval,
        args.seed,
        args.size,
        args.scene_prob,
        args.rows_per_file,
        args.row_group_size,
        args.overwrite,
        args.num_vlm,
        args.novel_shape,
        args.num_vqa,
        args.num_vqa_eval,
        args.vqa_eval_seed,
        args.num_think,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
