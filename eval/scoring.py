"""Shared scoring driver for OmniContext and SconeEval: find generated images, run the judge calls of every
(sampling round, judging pass, case), write per-group records and the aggregated tables.

Resume: every finished judgement is in the judge's disk cache, so rerunning the same command after a
kill (or a quota stop) re-issues only the calls that never finished and produces the same tables.
Layout written to `--output_dir`:
    round{r}/scoring{s}/score.jsonl     one record per case (scores, reasons, or "failed": reason)
    scores.json / scores.csv / scores.md aggregated tables (eval/aggregation.py)
    usage.jsonl                          one judge usage ledger per run (appended)
    judge_cache/                         default --cache_dir
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from data.benchmark_cases import BenchmarkCase, CaseProblem, input_image_paths, read_cases
from eval.aggregation import aggregate, get_benchmark, write_outputs
from eval.authors_protocol import (
    AuthorsProtocol,
    AuthorsProtocolError,
    add_protocol_args,
    load_judge_protocol,
)
from eval.judge.batch import BatchRunner, Request
from eval.judge.cache import LiveLedgerFile, atomic_write_text
from eval.judge.client import JudgeClient, JudgeFatalError, JudgeResult
from eval.judge.images import load_reference, load_rgb
from eval.judge.prompts import PromptSet
from eval.judge.provenance import judge_record, provenance_markdown

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED_CASES, EXIT_FATAL, EXIT_PENDING = 0, 1, 2, 3


class _BatchPending(Exception):
    """--batch_api: a submitted batch has not finished yet."""


@dataclass
class Call:
    """One judge request of a case. `name` is "PF", "SC" or "DIS/<image>/<subject>"."""

    name: str
    prompt: str
    images: list[Image.Image]
    parse: Callable[[str], Any]


# build_calls(case, refs (resized, RGB), output image, prompts) -> calls
CallBuilder = Callable[[BenchmarkCase, list[Image.Image], Image.Image, PromptSet], list[Call]]
# make_record(case, {call name: JudgeResult}) -> record fields (PF_score, SC_score, DIS_pred, reasons...)
RecordMaker = Callable[[BenchmarkCase, dict[str, JudgeResult]], dict]


def round_dirs(result_dir: Path, rounds: int | None) -> list[tuple[int, Path]]:
    """[(round index, folder with {task_type}/{key}.png)]. `rounds=None` autodetects `round{i}/` folders
    and falls back to a flat folder (one round, e.g. images written by the upstream scripts)."""
    if rounds is not None:
        dirs = [(i, result_dir / f"round{i}") for i in range(rounds)]
        missing = [str(d) for _, d in dirs if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"result folders not found: {', '.join(missing)}")
        return dirs
    found = sorted(int(p.name[5:]) for p in result_dir.glob("round*") if p.is_dir() and p.name[5:].isdigit())
    if found:
        if found != list(range(len(found))):
            raise ValueError(f"{result_dir}: round folders {found} are not round0..round{len(found) - 1}")
        return [(i, result_dir / f"round{i}") for i in found]
    if not result_dir.is_dir():
        raise FileNotFoundError(f"result folder not found: {result_dir}")
    return [(0, result_dir)]


def read_case_images(
    case: BenchmarkCase, benchmark_dir: Path, image_dir: Path
) -> tuple[list[Image.Image], Image.Image]:
    """(references prepared as the protocol does, the generated image) of one case in one round's folder.
    ValueError names what cannot be read (the case's "failed" reason)."""
    try:
        refs = [load_reference(p) for p in input_image_paths(case, benchmark_dir)]
    except (OSError, ValueError) as e:
        raise ValueError(f"reference image: {e}") from None
    out_path = output_image_path(case, image_dir)
    if not out_path.is_file():
        raise ValueError("missing output image")
    try:
        return refs, load_rgb(out_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable output image: {e}") from None


def output_image_path(case: BenchmarkCase, image_dir: Path) -> Path:
    return image_dir / case.task_type / f"{case.key}.png"


def call_tag(rnd: int, scoring: int, case: BenchmarkCase, call: Call) -> str:
    """The judge's log/cache tag of one call: round, judging pass, case and call name."""
    return f"round{rnd}/scoring{scoring}/{case.uid}/{call.name}"


def _score_one(
    client: JudgeClient,
    case: BenchmarkCase,
    benchmark_dir: Path,
    image_dir: Path,
    rnd: int,
    scoring: int,
    prompts: PromptSet,
    build_calls: CallBuilder,
    make_record: RecordMaker,
) -> dict:
    """Judge one case of one group -> record (always has key/task_type; "failed" when it did not work)."""
    base = {"key": case.key, "task_type": case.task_type, "instruction": case.instruction}
    if case.subject_label is not None:
        base["subject_label"] = case.subject_label
    base["output_image_path"] = str(output_image_path(case, image_dir))
    try:
        refs, output = read_case_images(case, benchmark_dir, image_dir)
    except ValueError as e:
        return {**base, "failed": str(e)}
    results: dict[str, JudgeResult] = {}
    for call in build_calls(case, refs, output, prompts):
        tag = call_tag(rnd, scoring, case, call)
        res = client.judge(call.prompt, call.images, call.parse, scoring_round=scoring, tag=tag)
        if not res.ok:
            return {**base, "failed": f"{call.name}: {res.error} (after {res.attempts} attempt(s))"}
        results[call.name] = res
    return {**base, **make_record(case, results)}


def image_tokens(width: int, height: int) -> int:
    """OpenAI's documented count for a high-detail image: fit in 2048², shortest side to 768, then
    85 + 170 per 512-px tile. An estimate for other servers."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * (math.ceil(w / 512) * math.ceil(h / 512))


@dataclass
class RequestPlan:
    requests: int = 0  # requests a run would send now (not cached), one attempt each
    cached: int = 0
    skipped_cases: int = 0  # cases that cannot be judged (missing images): no request
    prompt_tokens: int = 0  # estimated, of the requests to send
    completion_tokens: int = 0

    def cost(self, price_in: float, price_out: float) -> float:
        """USD at list prices per million input / output tokens."""
        return (self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6


def iter_calls(
    cases: list[BenchmarkCase],
    benchmark_dir: Path,
    result_dir: Path,
    prompts: PromptSet,
    build_calls: CallBuilder,
    rounds: int | None = None,
    scorings: int = 1,
):
    """Every judge call ``score_benchmark`` makes, as (tag, scoring pass, call), in its order; a case whose
    images cannot be read yields ``(None, scorings, None)`` (it makes no call)."""
    for rnd, image_dir in round_dirs(result_dir, rounds):
        for case in cases:
            try:
                refs, output = read_case_images(case, benchmark_dir, image_dir)
            except ValueError:
                yield None, scorings, None
                continue
            for s in range(scorings):
                for call in build_calls(case, refs, output, prompts):
                    yield call_tag(rnd, s, case, call), s, call


def plan_requests(
    cases: list[BenchmarkCase],
    benchmark_dir: Path,
    result_dir: Path,
    client: JudgeClient,
    prompts: PromptSet,
    build_calls: CallBuilder,
    rounds: int | None = None,
    scorings: int = 1,
    completion_tokens: int = 200,
) -> RequestPlan:
    """What ``score_benchmark`` would send, without sending anything: the same calls, minus cache hits.
    Text tokens are estimated at 4 characters per token, replies at ``completion_tokens`` each."""
    plan = RequestPlan()
    for _tag, s, call in iter_calls(cases, benchmark_dir, result_dir, prompts, build_calls, rounds, scorings):
        if call is None:
            plan.skipped_cases += s
        elif client.is_cached(call.prompt, call.images, s):
            plan.cached += 1
        else:
            plan.requests += 1
            plan.prompt_tokens += len(call.prompt) // 4 + sum(image_tokens(*im.size) for im in call.images)
            plan.completion_tokens += completion_tokens
    return plan


def batch_requests(cases, benchmark_dir, result_dir, client, prompts, build_calls, rounds=None, scorings=1):
    """The Batch API requests of a scoring run (eval/judge/batch.py), one per distinct judgement."""
    out = {}
    for tag, s, call in iter_calls(cases, benchmark_dir, result_dir, prompts, build_calls, rounds, scorings):
        if call is not None:
            key, body = client.prepare(call.prompt, call.images, s)
            out.setdefault(key, Request(key, body, call.parse, s, tag))
    return list(out.values())


def score_benchmark(
    bench_name: str,
    cases: list[BenchmarkCase],
    benchmark_dir: Path,
    result_dir: Path,
    output_dir: Path,
    client: JudgeClient,
    prompts: PromptSet,
    build_calls: CallBuilder,
    make_record: RecordMaker,
    rounds: int | None = None,
    scorings: int = 1,
    progress: bool = True,
) -> dict:
    """Judge every (round, scoring, case) and aggregate. Raises JudgeFatalError on quota/auth stops
    (after cancelling pending work; finished judgements are cached)."""
    bench = get_benchmark(bench_name)
    dirs = round_dirs(result_dir, rounds)
    units = [(r, d, s, c) for r, d in dirs for s in range(scorings) for c in cases]
    records: list[dict | None] = [None] * len(units)
    bar = tqdm(total=len(units), desc=f"score {bench.name}", disable=not progress, dynamic_ncols=True)
    # cases run concurrently; the client's semaphore bounds the requests actually in flight
    with ThreadPoolExecutor(max_workers=client.max_concurrency) as pool:
        futures = [
            pool.submit(_score_one, client, c, benchmark_dir, d, r, s, prompts, build_calls, make_record)
            for r, d, s, c in units
        ]
        try:
            for i, f in enumerate(futures):
                records[i] = f.result()
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()
    groups: dict[tuple[int, int], list[dict]] = {}
    for (r, _, s, _), rec in zip(units, records):
        groups.setdefault((r, s), []).append(rec)
    for (r, s), recs in groups.items():
        lines = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in recs)
        atomic_write_text(output_dir / f"round{r}" / f"scoring{s}" / "score.jsonl", lines)
    return aggregate(groups, bench)


# ----------------------------------------------------------------------------- CLI
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
    p.add_argument(
        "--judge_model",
        default=None,
        help="e.g. gpt-4.1-2025-04-14 (pin a snapshot); default gpt-4.1, or the authors' with --protocol authors",
    )
    p.add_argument("--base_url", default=None, help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--max_concurrency", type=int, default=8)
    p.add_argument("--max_retries", type=int, default=5)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument(
        "--temperature", type=float, default=None, help="default 0; negative: do not send a temperature"
    )
    p.add_argument("--seed", type=int, default=None, help="default 0; negative: do not send a seed")
    p.add_argument("--max_tokens", type=int, default=None, help="default 1400")
    p.add_argument("--backoff_base", type=float, default=1.0)
    p.add_argument("--backoff_max", type=float, default=60.0)
    p.add_argument(
        "--retry_after_max",
        type=float,
        default=300.0,
        help="longest wait a server's Retry-After may ask for (it overrides --backoff_max up to this)",
    )
    p.add_argument(
        "--image_format",
        choices=("png", "jpeg"),
        default=None,
        help="default png; jpeg = upstream's encoding",
    )
    p.add_argument("--cache_dir", default=None, help="default: {output_dir}/judge_cache")
    p.add_argument("--prompt_dir", default=None, help="folder with template files overriding eval/prompts/")
    p.add_argument("--task_types", nargs="*", default=None, help="only these task types (default: all)")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="print the requests a run would send (cached ones excluded), their estimated tokens and cost; "
        "send nothing",
    )
    p.add_argument("--price_input", type=float, default=2.0, help="USD per 1M input tokens (--dry_run)")
    p.add_argument("--price_output", type=float, default=8.0, help="USD per 1M output tokens (--dry_run)")
    p.add_argument(
        "--completion_tokens", type=int, default=200, help="assumed reply length for --dry_run's estimate"
    )
    p.add_argument(
        "--batch_api",
        action="store_true",
        help="judge through the OpenAI Batch API (half price, within 24 h): each run collects finished "
        "batches and submits what is missing; exit code 3 while a batch runs, then the tables",
    )
    p.add_argument(
        "--batch_max_submissions",
        type=int,
        default=3,
        help="--batch_api: batches a judgement is sent in before it counts as failed",
    )


_OURS = {"judge_model": "gpt-4.1", "temperature": 0.0, "seed": 0, "max_tokens": 1400, "image_format": "png"}


def _prompts_and_protocol(args: argparse.Namespace, bench: str) -> tuple[PromptSet, AuthorsProtocol | None]:
    """The prompt set and, with ``--protocol authors``, the authors' protocol; fills in the request
    settings left unset on the command line (``args`` is updated, so that scores.json records them)."""
    if args.protocol == "ours":
        for k, v in _OURS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        return PromptSet(bench, args.prompt_dir), None
    clash = [
        f"--{k}"
        for k in ("temperature", "seed", "max_tokens", "image_format", "prompt_dir")
        if getattr(args, k) is not None
    ]
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the authors' files with --protocol authors")
    protocol = load_judge_protocol(
        bench,
        getattr(args, "authors_upstream", None),
        args.authors_repo,
        args.authors_cache,
        args.authors_url,
    )
    req = protocol.request
    if args.judge_model is None:
        args.judge_model = req.model
    elif args.judge_model != req.model:
        log.warning("--judge_model %s replaces the authors' %s in the requests", args.judge_model, req.model)
    # the authors' client sends neither temperature nor seed when its files name none (-1 = "not sent")
    args.temperature = -1.0 if req.temperature is None else float(req.temperature)
    args.seed = -1
    args.max_tokens, args.image_format = req.max_tokens, req.image_format
    for role, src in protocol.sources.items():
        log.info("authors' %s: %s (sha256 %s)", role, src["file"], src["sha256"][:12])
    return PromptSet.from_texts(bench, protocol.templates, protocol.sources), protocol


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
        prompts, protocol = _prompts_and_protocol(args, bench.name)
    except (FileNotFoundError, ValueError, AuthorsProtocolError) as e:
        log.error("%s", e)
        return EXIT_FATAL
    client = JudgeClient(
        model=args.judge_model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        cache_dir=args.cache_dir or output_dir / "judge_cache",
        max_concurrency=args.max_concurrency,
        max_retries=args.max_retries,
        timeout=args.timeout,
        temperature=None if args.temperature < 0 else args.temperature,
        seed=None if args.seed < 0 else args.seed,
        max_tokens=args.max_tokens,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        retry_after_max=args.retry_after_max,
        image_format=args.image_format,
        jpeg_quality=protocol.request.jpeg_quality if protocol else 75,
        body_style="requests" if protocol else "sdk",  # the authors' client posts with `requests`
    )
    if args.dry_run:
        plan = plan_requests(
            kept,
            benchmark_dir,
            Path(args.result_dir),
            client,
            prompts,
            build_calls,
            args.rounds,
            args.scorings,
            args.completion_tokens,
        )
        cost = plan.cost(args.price_input, args.price_output)
        print(
            f"dry run ({args.judge_model}): {plan.requests} request(s) to send, {plan.cached} cached, "
            f"{plan.skipped_cases} case(s) without images; about {plan.prompt_tokens} input + "
            f"{plan.completion_tokens} output tokens = ${cost:.2f} at ${args.price_input}/"
            f"${args.price_output} per 1M (retries not included)"
        )
        return EXIT_OK
    started = time.time()
    code = EXIT_OK
    recovered = LiveLedgerFile.recover(output_dir)
    if recovered:
        log.warning(
            "%d interrupted run(s) found: their judge usage is now in %s",
            recovered,
            output_dir / "usage.jsonl",
        )

    def ledger_line() -> dict:
        return {"time": started, "judge_model": args.judge_model, **client.usage.as_dict()}

    live = LiveLedgerFile(output_dir, ledger_line).start()
    # SIGTERM (a scheduler's kill, `timeout`) unwinds like Ctrl-C, so that the ledger line below is written
    previous = (
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        if args.batch_api:
            requests = batch_requests(
                kept,
                benchmark_dir,
                Path(args.result_dir),
                client,
                prompts,
                build_calls,
                args.rounds,
                args.scorings,
            )
            report = BatchRunner(client, output_dir, args.batch_max_submissions).run(requests)
            log.info(
                "Batch API: %d reply(ies) collected, %d rejected, %d request(s) submitted%s, %d batch(es) "
                "running, %d given up",
                report.collected,
                report.rejected,
                report.submitted_requests,
                f" as {report.submitted}" if report.submitted else "",
                len(report.pending_batches),
                report.given_up,
            )
            if not report.done:
                raise _BatchPending
            client.offline = f"no valid Batch API reply after {args.batch_max_submissions} submission(s)"
        result = score_benchmark(
            bench.name,
            kept,
            benchmark_dir,
            Path(args.result_dir),
            output_dir,
            client,
            prompts,
            build_calls,
            make_record,
            rounds=args.rounds,
            scorings=args.scorings,
            progress=not args.no_progress,
        )
    except JudgeFatalError as e:
        log.error("scoring stopped: %s. Finished judgements are cached; rerun the same command to resume.", e)
        result, code = None, EXIT_FATAL
    except _BatchPending:
        log.info("Batch API jobs are running: rerun the same command later to collect them (exit code 3)")
        result, code = None, EXIT_PENDING
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        client.close()
        usage = ledger_line()
        with open(output_dir / "usage.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(usage) + "\n")
        live.close()
        log.info("judge usage: %s", json.dumps(usage))
    if result is None:
        return code
    settings = {"base_url": args.base_url, "temperature": args.temperature, "seed": args.seed}
    settings.update(image_format=args.image_format, max_tokens=args.max_tokens)
    judge = judge_record(args.judge_model, client.served_models, args.protocol, prompts.sources, **settings)
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
