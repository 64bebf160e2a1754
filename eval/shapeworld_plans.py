"""Do a model's think-mode plans name what the instruction asks for? (ShapeWorld, known answers.)

    python -m eval.generate --model_path M --benchmark_dir BENCH --output_dir OUT --think ...
    python -m eval.shapeworld_plans --bench_dir BENCH --result_dir OUT

``eval.generate --think`` logs each case's reasoning (``thought`` in ``generation_log.rank*.jsonl``). An
instruction names a subject only by its shape or one attribute and its image ("the dotted star from
image 2"); a plan is right about a requested subject when it states that subject's full description, size
colour pattern shape ("a small red dotted star"), which only the reference image tells. Printed per task
type: the share of requested subjects named in full, of cases with every subject named, and of cases whose
plan names the background ("<texture> <colour> background"). Cases without a logged thought are counted
as missing, never as wrong or right.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys

from data.synthetic.shapeworld import case_from_record
from eval.shapeworld import load_bench

log = logging.getLogger("scone.shapeworld_plans")


def load_thoughts(result_dir: str) -> dict[tuple[int, str], str]:
    """(round, key) -> the logged thought of every generation log under ``result_dir``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(result_dir, "generation_log.rank*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if row.get("thought") is not None:
                        out[(int(row["round"]), row["key"])] = row["thought"]
    return out


def plan_scores(records: list[dict], thoughts: dict[tuple[int, str], str]) -> dict:
    """Per task type and ``all``: subjects named in full, cases fully named, backgrounds named, missing."""
    rounds = sorted({r for r, _ in thoughts}) or [0]
    rows = []
    for rec in records:
        case = case_from_record(rec)
        for rnd in rounds:
            thought = thoughts.get((rnd, rec["key"]))
            if thought is None:
                rows.append({"task_type": rec["task_type"], "missing": True})
                continue
            text = " ".join(thought.lower().split())
            named = [t.subject.description()[2:] in text for t in case.targets]
            bg = f"{case.background.texture} {case.background.colour} background" in text
            rows.append({"task_type": rec["task_type"], "named": named, "background": bg})
    out = {}
    for task in sorted({r["task_type"] for r in rows}) + ["all"]:
        mine = [r for r in rows if task in ("all", r["task_type"])]
        done = [r for r in mine if not r.get("missing")]
        subjects = [n for r in done for n in r["named"]]
        out[task] = {
            "plans": len(done),
            "missing": len(mine) - len(done),
            "subjects_named": sum(subjects) / len(subjects) if subjects else None,
            "cases_all_named": sum(all(r["named"]) for r in done) / len(done) if done else None,
            "background_named": sum(r["background"] for r in done) / len(done) if done else None,
        }
    return out


def markdown(scores: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    lines = [
        "| task type | plans | subjects named in full | cases with every subject | background | missing |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, e in scores.items():
        lines.append(
            f"| {task} | {e['plans']} | {pct(e['subjects_named'])} | {pct(e['cases_all_named'])} | "
            f"{pct(e['background_named'])} | {e['missing']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--bench_dir", required=True, help="the ShapeWorld benchmark the images were generated for"
    )
    p.add_argument("--result_dir", required=True, help="eval.generate --think output folder")
    args = p.parse_args(argv)
    thoughts = load_thoughts(args.result_dir)
    if not thoughts:
        log.error("no logged thoughts under %s (generate with eval.generate --think)", args.result_dir)
        return 2
    scores = plan_scores(load_bench(args.bench_dir), thoughts)
    with open(os.path.join(args.result_dir, "plans.json"), "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=2)
    print(markdown(scores))
    missing = scores["all"]["missing"]
    if missing:
        log.error("%d case(s) have no logged thought", missing)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
