"""The command line shared by the judge-based benchmark scorers (eval/sconeeval.py, eval/omnicontext.py): flags,
the protocol and its rules chosen once, the judge client, dry runs, the Batch API, the usage ledger, the
provenance and the tables. The scoring itself is eval/scoring.py."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from data.benchmark_cases import BenchmarkCase, CaseProblem, read_cases
from eval.aggregation import get_benchmark, write_outputs
from eval.authors_protocol import (
    AuthorsProtocolError,
    add_protocol_args,
)
from eval.judge.client import JudgeClient, JudgeFatalError
from eval.judge.protocol import resolve_protocol
from eval.judge.provenance import judge_record, provenance_markdown
from eval.judge.run_modes import (
    EXIT_FAILED_CASES,
    EXIT_FATAL,
    EXIT_OK,
    JudgedRun,
    add_run_mode_args,
    dry_run,
)
from eval.judge.settings import add_judge_args
from eval.scoring import (
    CallBuilder,
    JudgedCaseScorer,
    RecordMaker,
    batch_jobs,
    iter_jobs,
    make_units,
    round_dirs,
    score_benchmark,
)

log = logging.getLogger("eval.scoring")


def add_common_args(p: argparse.ArgumentParser, default_dir: str) -> None:
    p.add_argument(
        "--benchmark_dir", required=True, help=f"folder with data.jsonl and images ({default_dir})"
    )
    p.add_argument("--metadata_file", default=None, help="default: {benchmark_dir}/data.jsonl")
    p.add_argument(
        "--result_dir", required=True, help="generated images: round{i}/{task_type}/{key}.png or flat"
    )
    p.add_argument("--output_dir", required=True, help="where scores, per-case records and the cache go")
    p.add_argument("--method", default="Scone", help="row name in the leaderboard table")
    p.add_argument("--rounds", type=int, default=None, help="sampling rounds to read (default: autodetect)")
    p.add_argument("--scorings", type=int, default=1, help="independent judging passes per round (paper: 3)")
    add_protocol_args(p, "the authors' repository (Ryann-Ran/Scone or VectorSpaceLab/OmniGen2)")
    add_judge_args(p)
    p.add_argument("--prompt_dir", default=None, help="folder with template files overriding eval/prompts/")
    p.add_argument("--task_types", nargs="*", default=None, help="only these task types (default: all)")
    p.add_argument("--no_progress", action="store_true")
    add_run_mode_args(p)


def run_cli(
    args: argparse.Namespace,
    build_calls: CallBuilder,
    make_record: RecordMaker,
    case_filter: Callable[[BenchmarkCase], str | None] | None = None,
) -> int:
    """Common main(): read cases, judge, write outputs, print the table; returns the exit code."""
    bench = get_benchmark(args.benchmark)
    benchmark_dir = Path(args.benchmark_dir)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cases, problems = read_cases(args.metadata_file or benchmark_dir / "data.jsonl")
    kept: list[BenchmarkCase] = []
    for c in cases:
        reason = None
        if c.task_type not in bench.task_types:
            reason = f"unknown task_type {c.task_type!r}"
        elif args.task_types and c.task_type not in args.task_types:
            continue
        elif case_filter is not None:
            reason = case_filter(c)
            if reason == "skip":
                continue
        if reason:
            problems.append(CaseProblem(c.uid, reason))
        else:
            kept.append(c)
    for p in problems:
        log.error("invalid case %s", p)
    try:
        protocol = resolve_protocol(bench.name, args)
    except (FileNotFoundError, ValueError, AuthorsProtocolError) as e:
        log.error("%s", e)
        return EXIT_FATAL
    rules, settings = protocol.rules, protocol.settings
    client = JudgeClient(settings, cache_dir=args.cache_dir or output_dir / "judge_cache")
    try:
        units = make_units(kept, round_dirs(Path(args.result_dir), args.rounds), args.scorings)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return EXIT_FATAL
    scorer = JudgedCaseScorer(benchmark_dir, protocol.prompts, build_calls, make_record, rules)
    if args.dry_run:
        return dry_run(client, iter_jobs(units, scorer, rules), args)
    result, code = None, EXIT_OK
    with JudgedRun(client, output_dir, args) as run:
        try:
            plan = partial(batch_jobs, units, scorer, rules, client)
            code = run.batch(plan) or EXIT_OK
            if code == EXIT_OK:
                result, _ = score_benchmark(
                    bench.name, units, scorer, output_dir, client, rules, progress=not args.no_progress
                )
        except JudgeFatalError as e:
            log.error(
                "scoring stopped: %s. Finished judgements are cached; rerun the same command to resume.", e
            )
            code = EXIT_FATAL
    if result is None:
        return code
    judge = judge_record(client.served_models, protocol.name, protocol.sources, settings)
    extra = {
        "judge": judge,
        "protocol": protocol.name,
        **({"authors_upstream": protocol.upstream} if protocol.upstream else {}),
        "prompts": protocol.sources,
        "invalid_cases": [str(p) for p in problems],
    }
    invalid = f"\n{len(problems)} invalid case(s) of the metadata file were not scored (scores.json: invalid_cases).\n"
    md = write_outputs(
        result,
        output_dir,
        method=args.method,
        extra=extra,
        extra_markdown=(invalid if problems else "") + provenance_markdown(judge),
    )
    print(md)
    failed = result["cases"]["failed"]
    if failed or problems:
        log.error(
            "%d judged case(s) failed and %d invalid case(s) were not scored; see %s/scores.json",
            failed,
            len(problems),
            output_dir,
        )
        for tb in result["groups"]:
            for fl in tb["failures"]:
                log.error(
                    "  round%d/scoring%d %s/%s: %s",
                    tb["round"],
                    tb["scoring"],
                    fl["task_type"],
                    fl["key"],
                    fl["reason"],
                )
        code = EXIT_FAILED_CASES
    return code
