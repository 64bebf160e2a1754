"""The command line shared by the judge-based benchmark scorers (eval/sconeeval.py, eval/omnicontext.py): flags,
the protocol and its rules chosen once, the judge client, dry runs, the Batch API, the usage ledger, the
provenance and the tables. The scoring itself is eval/scoring.py."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from data.benchmark_cases import BenchmarkCase, CaseProblem, read_cases
from eval.aggregation import get_benchmark, write_outputs
from eval.authors_protocol import (
    AuthorsProtocol,
    AuthorsProtocolError,
    add_protocol_args,
    load_judge_protocol,
)
from eval.judge.client import JudgeClient, JudgeFatalError
from eval.judge.prompts import PromptSet
from eval.judge.provenance import judge_record, provenance_markdown
from eval.judge.rules import judging_rules
from eval.judge.run_modes import (
    EXIT_FAILED_CASES,
    EXIT_FATAL,
    EXIT_OK,
    JudgedRun,
    add_run_mode_args,
    dry_run,
)
from eval.judge.settings import REQUEST_FLAGS, JudgeSettings, add_judge_args, settings_from_args
from eval.scoring import (
    CallBuilder,
    JudgedCaseScorer,
    RecordMaker,
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


OURS_REQUEST = JudgeSettings()  # gpt-4.1, temperature 0, seed 0 (+ pass), max_tokens 1400, PNG


def _prompts_and_protocol(
    args: argparse.Namespace, bench: str
) -> tuple[PromptSet, AuthorsProtocol | None, JudgeSettings]:
    """The prompt set, with ``--protocol authors`` the authors' protocol, and the judge settings: the
    protocol's request with the flags given on the command line (flags the authors' files set are errors)."""
    if args.protocol == "ours":
        return PromptSet(bench, args.prompt_dir), None, settings_from_args(args, OURS_REQUEST)
    if args.prompt_dir is not None:
        raise ValueError("--prompt_dir: set by the authors' files with --protocol authors")
    protocol = load_judge_protocol(
        bench,
        args.authors_upstream,
        args.authors_repo,
        args.authors_cache,
        args.authors_url,
    )
    req = protocol.request
    if args.judge_model is not None and args.judge_model != req.model:
        log.warning("--judge_model %s replaces the authors' %s in the requests", args.judge_model, req.model)
    # the authors' client sends neither temperature nor seed when its files name none, and posts with `requests`
    request = JudgeSettings(
        model=req.model,
        temperature=req.temperature,
        seed=None,
        max_tokens=req.max_tokens,
        image_format=req.image_format,
        jpeg_quality=req.jpeg_quality,
        body_style="requests",
    )
    settings = settings_from_args(args, request, fixed=tuple(REQUEST_FLAGS))
    for role, src in protocol.sources.items():
        log.info("authors' %s: %s (sha256 %s)", role, src["file"], src["sha256"][:12])
    return PromptSet.from_texts(bench, protocol.templates, protocol.sources), protocol, settings


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
        prompts, protocol, settings = _prompts_and_protocol(args, bench.name)
    except (FileNotFoundError, ValueError, AuthorsProtocolError) as e:
        log.error("%s", e)
        return EXIT_FATAL
    rules = judging_rules(args.protocol, protocol.upstream if protocol else None)
    if args.batch_api and rules.tries > 1 and not rules.every_try:
        # the Batch API asks again only the request whose reply did not read; this protocol would send the
        # whole case again, so its numbers would not be the authors'
        log.error(
            "--batch_api cannot follow the %s protocol's whole-case re-sends: judge live (without --batch_api)",
            rules.name,
        )
        return EXIT_FATAL
    # the protocol's own tries are its re-asking
    settings = settings.with_(retry_unparseable=rules.tries == 1)
    client = JudgeClient(settings, cache_dir=args.cache_dir or output_dir / "judge_cache")
    try:
        units = make_units(kept, round_dirs(Path(args.result_dir), args.rounds), args.scorings)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return EXIT_FATAL
    scorer = JudgedCaseScorer(benchmark_dir, prompts, build_calls, make_record, rules)
    jobs = iter_jobs(units, scorer, rules)
    if args.dry_run:
        return dry_run(client, jobs, args)
    result, code = None, EXIT_OK
    with JudgedRun(client, output_dir, args) as run:
        try:
            code = run.batch(jobs) or EXIT_OK
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
    judge = judge_record(client.served_models, args.protocol, prompts.sources, settings)
    extra = {
        "judge": judge,
        "protocol": args.protocol,
        **({"authors_upstream": protocol.upstream} if protocol else {}),
        "prompts": prompts.sources,
        "invalid_cases": [str(p) for p in problems],
    }
    md = write_outputs(
        result, output_dir, method=args.method, extra=extra, extra_markdown=provenance_markdown(judge)
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
