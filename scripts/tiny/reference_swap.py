"""Does a model read its references? Recolour the subject of held-out composition_single cases, generate
for the original and for the recoloured references with the same seeds, and count how often the output's
colour follows the reference.

    python scripts/tiny/reference_swap.py --model_path ckpts/scone-tiny \\
        --bench_dir ckpts/tiny-work/data/shapeworld/bench --work /tmp/swap [--num_cases 50]

composition_single instructions name only the shape ("the star from image 1"), so the colour can only come
from the reference image. The script prints three shares:

* the colour is right with the original references;
* the colour is right with the recoloured references ("right" = the new colour);
* the output's colour changed when the reference's colour did.

A model that ignores its references scores near chance (1/7) on the first two and near 0 on the last.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

# run as a file from anywhere: make the checkout importable
from data.synthetic.make_shapeworld import write_benchmark
from data.synthetic.render import SUBJECT_COLOURS
from data.synthetic.shapeworld import case_from_record

logger = logging.getLogger("reference_swap")


def recoloured(record: dict, shift: int) -> dict:
    """The record with its (single) requested subject ``shift`` places further in the colour palette, both in
    the reference and in the target description."""
    out = copy.deepcopy(record)
    sw = out["shapeworld"]
    target = sw["targets"][0]
    subject = sw["references"][target["ref_index"]]["subjects"][target["candidate_index"]]
    names = list(SUBJECT_COLOURS)
    subject["colour"] = target["colour"] = names[(names.index(target["colour"]) + shift) % len(names)]
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_path", required=True)
    p.add_argument("--bench_dir", required=True, help="a ShapeWorld benchmark folder (data.jsonl)")
    p.add_argument("--work", required=True, help="scratch folder: the two benchmarks and their outputs")
    p.add_argument("--num_cases", type=int, default=50, help="first N composition_single cases")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from eval.shapeworld import score_benchmark
    from inference.benchmark import generate_benchmark, load_cases
    from inference.pipeline import SconePipeline

    with open(Path(args.bench_dir) / "data.jsonl", encoding="utf-8") as f:
        records = [json.loads(x) for x in f if x.strip()]
    records = [r for r in records if r["task_type"] == "composition_single"][: args.num_cases]
    if not records:
        raise SystemExit(f"{args.bench_dir}: no composition_single cases")
    work = Path(args.work)
    variants = {
        "original": records,
        # shifts 1..6 in turn: every other colour is used equally often
        "recoloured": [recoloured(r, 1 + i % (len(SUBJECT_COLOURS) - 1)) for i, r in enumerate(records)],
    }
    colours, right = {}, {}  # per variant: detected colour per case; share of right colours
    pipe = SconePipeline.from_pretrained(args.model_path)
    for name, recs in variants.items():
        bench, out = work / name / "bench", work / name / "generated"
        if not (bench / "data.jsonl").is_file():
            write_benchmark([case_from_record(r) for r in recs], str(bench))
        cases, problems, _ = load_cases("jsonl", bench)
        report = generate_benchmark(pipe, cases, bench, out, seed=args.seed, batch_size=8, progress=False)
        if problems or report.failures:
            raise SystemExit(f"generation failed for {name}: {problems or report.failures}")
        scores_dir = work / name / "scores"
        result = score_benchmark(str(bench), str(out), output_dir=str(scores_dir), progress=False)
        per_case = [
            json.loads(x)
            for x in (scores_dir / "round0" / "scoring0" / "score.jsonl").read_text().splitlines()
        ]
        colours[name] = [
            (c["judge"]["subjects"][0]["detection"] or {}).get("colour") if not c.get("failed") else None
            for c in per_case
        ]
        right[name] = result["attributes"].get("colour", 0.0)
        logger.info("%s: colour right %.0f%%", name, 100 * right[name])
    pairs = [(a, b) for a, b in zip(colours["original"], colours["recoloured"]) if a and b]
    changed = sum(a != b for a, b in pairs) / max(1, len(pairs))
    summary = {
        "cases": len(records),
        "colour_right_original": round(right["original"], 4),
        "colour_right_recoloured": round(right["recoloured"], 4),
        "output_colour_changed": round(changed, 4),
        "pairs_with_a_subject_in_both": len(pairs),
    }
    (work / "reference_swap.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
