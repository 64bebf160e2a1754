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
from eval.judge.parsing import parse_binary, parse_score_json, parse_score_reason
from eval.judge.prompts import PromptSet
from eval.scoring import Call, add_common_args, run_cli


def uses_scene_rubric(case: BenchmarkCase) -> bool:
    return "scene" in case.task_type or "S" in case.case_type


def build_calls(
    case: BenchmarkCase, refs: list[Image.Image], output: Image.Image, prompts: PromptSet
) -> list[Call]:
    images = [*refs, output]
    n = len(refs)
    sc_name = "sconeeval_sc_scene" if uses_scene_rubric(case) else "sconeeval_sc"
    calls = [
        Call(
            "PF",
            prompts.render("sconeeval_pf", instruction=case.instruction, num_references=n),
            images,
            parse_score_json,
        ),
        Call(
            "SC",
            prompts.render(sc_name, instruction=case.instruction, num_references=n),
            images,
            parse_score_json,
        ),
    ]
    if case.task_type in SCONEEVAL.dis_task_types:
        for i, subjects in enumerate(case.subject_list):
            for j, subject in enumerate(subjects):
                prompt = prompts.render("sconeeval_dis", subject=subject)
                calls.append(Call(f"DIS/{i}/{j}", prompt, [refs[i], output], parse_binary))
    return calls


def make_record(case: BenchmarkCase, results: dict[str, JudgeResult]) -> dict:
    rec = {}
    for name in ("PF", "SC"):
        score, reason = parse_score_reason(results[name].raw)
        rec[f"{name}_score"], rec[f"{name}_score_reason"] = score, reason
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
    args = p.parse_args(argv)
    args.benchmark = "sconeeval"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return run_cli(args, build_calls, make_record, check_case)


if __name__ == "__main__":
    sys.exit(main())
