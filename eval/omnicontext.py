"""OmniContext scoring (docs/evaluation.md): per case a PF and an SC judgement over
[resized reference images..., generated image]; overall = sqrt(PF*SC); means per task type and Average.

    python -m eval.omnicontext --benchmark_dir datasets/OmniContext-jsonl \\
        --result_dir results/omnicontext/Scone --output_dir results/omnicontext/Scone/scores
"""

from __future__ import annotations

import argparse
import logging
import sys

from PIL import Image

from data.benchmark_cases import BenchmarkCase
from eval.authors_protocol import OMNICONTEXT_UPSTREAMS
from eval.judge.client import JudgeResult
from eval.judge.prompts import PromptSet
from eval.judge.rules import JudgingRules
from eval.scoring import Call
from eval.scoring_cli import add_common_args, run_cli


def build_calls(
    case: BenchmarkCase, refs: list[Image.Image], output: Image.Image, prompts: PromptSet, rules: JudgingRules
) -> list[Call]:
    images = [*refs, output]
    # PF never uses a scene variant (as the benchmark authors); SC does for scene cases (rules.scene_rubric)
    sc_name = "omnicontext_sc_scene" if rules.scene_rubric["omnicontext"](case) else "omnicontext_sc"
    return [
        Call("PF", prompts.render("omnicontext_pf", instruction=case.instruction), images, rules.parse_score),
        Call("SC", prompts.render(sc_name, instruction=case.instruction), images, rules.parse_score),
    ]


def make_record(case: BenchmarkCase, results: dict[str, JudgeResult]) -> dict:
    rec = {}
    for name in ("PF", "SC"):
        rec[f"{name}_score"], rec[f"{name}_score_reason"] = results[name].value
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "OmniContext-jsonl")
    p.add_argument(
        "--language", default=None, help="keep only cases with this instruction_language (e.g. en)"
    )
    p.add_argument(
        "--authors_upstream",
        choices=OMNICONTEXT_UPSTREAMS,
        default="scone",
        help="--protocol authors: whose OmniContext judge to follow: scone (Scone's copy, as in the Scone "
        "paper; default) or omnigen2 (the benchmark's original evaluator, as in the OmniGen2 paper)",
    )
    args = p.parse_args(argv)
    args.benchmark = "omnicontext"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def language_filter(case: BenchmarkCase) -> str | None:
        if args.language and case.raw.get("instruction_language") != args.language:
            return "skip"
        return None

    return run_cli(args, build_calls, make_record, language_filter)


if __name__ == "__main__":
    sys.exit(main())
