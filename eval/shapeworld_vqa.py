"""Score a model's answers to ShapeWorld questions with known answers (data/synthetic/vqa.py).

    python -m eval.shapeworld_vqa --model_path ckpts/scone-tiny \\
        --questions ckpts/tiny-work/data/shapeworld/vqa_eval/shapeworld_vqa_eval.jsonl --out results/vqa/tiny

Every question is asked with greedy decoding; an answer is right when it equals the known answer after
``normalise_answer`` (case, articles, final punctuation, a think block, number words). A question may use
the known answer's length plus ``--max_new_tokens`` tokens (a longer answer cannot be right). Written to ``--out``:
``answers.jsonl`` (one line per question: index, type, seen, answer, prediction, right; a question that
raised is a ``failed`` line, counted and never scored) and ``summary.json`` / ``summary.md``: accuracy per
type on held-out phrasings and on training phrasings, with chance beside it. A rerun continues after the
answered questions. Images are looked up inside the questions file's ``images`` folder (a path that leaves
it is refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from tqdm import tqdm

from data.benchmark_cases import resolve_in_dir
from data.synthetic.vqa import QUESTION_TYPES, normalise_answer
from inference.cli_common import (
    USER_ERRORS,
    add_model_args,
    add_think_args,
    default_model_path,
    load_pipeline,
    report_user_error,
)
from modeling.tokenizer import encode

log = logging.getLogger("scone.shapeworld_vqa")


def load_questions(path: str) -> list[dict]:
    """The questions of a JSONL file; a malformed line raises ValueError naming it."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
                human = q["conversations"][0]["value"]
                images = [q["image"]] if isinstance(q["image"], str) else list(q["image"])
                row = {
                    "type": q["type"],
                    "answer": q["answer"],
                    "seen": bool(q["seen"]),
                    "chance": q["chance"],
                }
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
                raise ValueError(
                    f"{path} line {n}: not a ShapeWorld question ({type(e).__name__}: {e})"
                ) from e
            if human.count("<image>") != len(images):
                raise ValueError(
                    f"{path} line {n}: {len(images)} image(s) but {human.count('<image>')} <image> tags"
                )
            row.update(index=len(out), images=images, question=human.replace("<image>", "").strip())
            out.append(row)
    return out


def is_right(prediction: str, answer: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(answer)


def summarise(rows: list[dict]) -> dict:
    """Per type (and ``all``): questions, accuracy on held-out (``unseen``) and training (``seen``)
    phrasings, and chance (the mean of the questions' ``chance``), over the rows that were answered."""
    out: dict = {}
    for qtype in (*QUESTION_TYPES, "all"):
        mine = [r for r in rows if qtype in ("all", r["type"])]
        scored = [r for r in mine if "right" in r]
        if not mine:
            continue
        entry = {"questions": len(mine), "failed": len(mine) - len(scored)}
        for split, seen in (("unseen", False), ("seen", True)):
            part = [r for r in scored if r["seen"] is seen]
            entry[f"{split}_n"] = len(part)
            entry[f"{split}_accuracy"] = sum(r["right"] for r in part) / len(part) if part else None
        entry["chance"] = sum(r["chance"] for r in scored) / len(scored) if scored else None
        out[qtype] = entry
    return out


def markdown(summary: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    lines = [
        "| type | questions | unseen phrasings | seen phrasings | chance | failed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for qtype, e in summary.items():
        lines.append(
            f"| {qtype} | {e['questions']} | {pct(e['unseen_accuracy'])} | {pct(e['seen_accuracy'])} | "
            f"{pct(e['chance'])} | {e['failed']} |"
        )
    return "\n".join(lines)


def answer_all(
    pipe, questions: list[dict], image_dir: str, out_dir: str, think: bool, max_new_tokens: int
) -> list[dict]:
    """Ask every question not yet in ``out_dir/answers.jsonl`` and append its line; returns all lines."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "answers.jsonl")
    done: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    done[row["index"]] = row
    todo = [q for q in questions if q["index"] not in done]
    if done:
        log.info("%d question(s) already answered in %s; %d to go", len(done), path, len(todo))
    with open(path, "a", encoding="utf-8") as f:
        for q in tqdm(todo, desc="questions"):
            row = {k: q[k] for k in ("index", "type", "seen", "chance", "answer")}
            try:
                images = [resolve_in_dir(image_dir, n) for n in q["images"]]
                budget = len(encode(pipe.tokenizer, q["answer"])) + max_new_tokens
                pred = pipe.understand(
                    images=images, prompt=q["question"], max_new_tokens=budget, think=think
                )
                row.update(prediction=pred.text, right=is_right(pred.text, q["answer"]))
            except (OSError, ValueError, RuntimeError) as e:  # recorded and reported, never scored
                row.update(failed=f"{type(e).__name__}: {e}")
                log.error("question %d failed: %s", q["index"], row["failed"])
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[q["index"]] = row
    return [done[q["index"]] for q in questions if q["index"] in done]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument(
        "--questions", required=True, help="a ShapeWorld question file (make_shapeworld --num_vqa_eval)"
    )
    p.add_argument("--out", required=True, help="output folder (answers.jsonl, summary.json, summary.md)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    add_think_args(
        p, "answer (the think block is not scored; add its budget to --max_new_tokens)", budget=False
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=8,
        help="tokens allowed beyond the known answer's length (any longer answer is wrong anyway; add the "
        "think budget with --think)",
    )
    args = p.parse_args(argv)
    try:
        questions = load_questions(args.questions)[: args.limit]
        args.model_path = default_model_path(args.model_path)
        pipe = load_pipeline(args)
        image_dir = os.path.join(os.path.dirname(os.path.abspath(args.questions)), "images")
        rows = answer_all(pipe, questions, image_dir, args.out, args.think, args.max_new_tokens)
    except USER_ERRORS as e:
        return report_user_error(log, e, args.debug)
    summary = summarise(rows)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"model_path": args.model_path, "questions": args.questions, "types": summary}, f, indent=2)
    table = markdown(summary)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    failed = summary.get("all", {}).get("failed", 0)
    if failed:
        log.error("%d question(s) failed (see answers.jsonl)", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
