"""SconeEval scoring (docs/evaluation.md): PF and SC for every case (COM = sqrt(PF*SC)), and for the
distinction subtasks one presence judgement per (reference image, candidate subject) -> DIS metrics.

    python -m eval.sconeeval --benchmark_dir datasets/SconeEval \\
        --result_dir results/sconeeval/Scone --output_dir results/sconeeval/Scone/scores --scorings 3
"""

from __future__ import annotations

import argparse
import logging
import sys

from PIL import Image

from data.benchmark_cases import BenchmarkCase
from eval.aggregation import SCONEEVAL
from eval.judge.client import JudgeResult
from eval.judge.prompts import PromptSet
from eval.judge.rules import JudgingRules
from eval.scoring import Call
from eval.scoring_cli import add_common_args, run_cli


def build_calls(
    case: BenchmarkCase, refs: list[Image.Image], output: Image.Image, prompts: PromptSet, rules: JudgingRules
) -> list[Call]:
    images = [*refs, output]
    n = len(refs)
    sc_name = "sconeeval_sc_scene" if rules.scene_rubric["sconeeval"](case) else "sconeeval_sc"
    pf = prompts.render("sconeeval_pf", instruction=case.instruction, num_references=n)
    calls = [
        Call("PF", pf, images, rules.parse_score),
        Call(
            "SC",
            prompts.render(sc_name, instruction=case.instruction, num_references=n),
            images,
            rules.parse_score,
        ),
    ]
    if case.task_type in SCONEEVAL.dis_task_types:
        # one presence request per (reference, subject), each sent after the previous reply was read
        for i, subjects in enumerate(case.subject_list):
            for j, subject in enumerate(subjects):
                prompt = prompts.render("sconeeval_dis", subject=subject)
                dis = Call(f"DIS/{i}/{j}", prompt, [refs[i], output], rules.parse_presence, batch=len(calls))
                calls.append(dis)
    return calls


def make_record(case: BenchmarkCase, results: dict[str, JudgeResult]) -> dict:
    rec = {}
    for name in ("PF", "SC"):
        rec[f"{name}_score"], rec[f"{name}_score_reason"] = results[name].value
    if case.task_type in SCONEEVAL.dis_task_types:
        rec["DIS_pred"] = [
            [results[f"DIS/{i}/{j}"].value for j in range(len(subjects))]
            for i, subjects in enumerate(case.subject_list)
        ]
    return rec


def check_case(case: BenchmarkCase) -> str | None:
    """Distinction cases need subject_list/subject_label (validated by data.benchmark_cases when present)."""
    if case.task_type in SCONEEVAL.dis_task_types and case.subject_list is None:
        return "distinction case without subject_list/subject_label"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "SconeEval")
    p.set_defaults(authors_upstream="scone")  # SconeEval has one authors' evaluator (OmniContext has two)
    args = p.parse_args(argv)
    args.benchmark = "sconeeval"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return run_cli(args, build_calls, make_record, check_case)


if __name__ == "__main__":
    sys.exit(main())
