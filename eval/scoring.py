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

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from data.benchmark_cases import BenchmarkCase, input_image_paths
from eval.aggregation import aggregate, get_benchmark
from eval.judge.cache import atomic_write_text
from eval.judge.client import JudgeClient, JudgeJob, JudgeResult
from eval.judge.images import load_rgb
from eval.judge.prompts import PromptSet
from eval.judge.rules import OURS, JudgingRules

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One judge request of a case. `name` is "PF", "SC" or "DIS/<image>/<subject>"; calls with the same
    `batch` are sent together before their replies are read (PF and SC, as the authors' scorers do)."""

    name: str
    prompt: str
    images: list[Image.Image]
    parse: Callable[[str], Any]
    batch: int = 0


# build_calls(case, refs (prepared, RGB), output image, prompts, rules) -> calls
CallBuilder = Callable[[BenchmarkCase, list[Image.Image], Image.Image, PromptSet, JudgingRules], list[Call]]
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
    case: BenchmarkCase, benchmark_dir: Path, image_dir: Path, rules: JudgingRules = OURS
) -> tuple[list[Image.Image], Image.Image]:
    """(references prepared as the protocol does, the generated image) of one case in one round's folder.
    ValueError names what cannot be read (the case's "failed" reason)."""
    try:
        refs = [rules.prepare_reference(p) for p in input_image_paths(case, benchmark_dir)]
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


def _batches(calls: list[Call]) -> list[list[Call]]:
    """Calls grouped by ``Call.batch`` in order: a batch is sent whole before its replies are read."""
    out: list[list[Call]] = []
    for call in calls:
        if out and out[-1][0].batch == call.batch:
            out[-1].append(call)
        else:
            out.append([call])
    return out


def send_case(
    client: JudgeClient,
    calls: list[Call],
    tag: Callable[[Call], str],
    scoring: int,
    rules: JudgingRules = OURS,
) -> tuple[dict[str, JudgeResult], dict[str, JudgeResult]]:
    """The protocol's tries of one case -> ({call name: last readable reply}, {call name: last failure}).

    In each try the batches are sent in order (every call of a batch before any reply is read); replies
    are read in call order and an unreadable one ends the try (no later batch is sent). A try whose
    replies all read ends the case unless ``rules.every_try`` (OmniGen2's loop without a ``break``)."""
    results: dict[str, JudgeResult] = {}
    errors: dict[str, JudgeResult] = {}
    for k in range(rules.tries):
        complete = True
        for batch in _batches(calls):
            replies = [
                client.judge(c.prompt, c.images, c.parse, scoring_round=scoring, tag=tag(c), send=k)
                for c in batch
            ]
            for call, res in zip(batch, replies):
                if not res.ok:
                    errors[call.name], complete = res, False
                    break
                results[call.name] = res
            if not complete:
                break
        if complete and not rules.every_try:
            break
    return results, errors


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
    rules: JudgingRules = OURS,
) -> dict:
    """Judge one case of one group -> record (always has key/task_type; "failed" when it did not work)."""
    base = {"key": case.key, "task_type": case.task_type, "instruction": case.instruction}
    if case.subject_label is not None:
        base["subject_label"] = case.subject_label
    base["output_image_path"] = str(output_image_path(case, image_dir))
    try:
        refs, output = read_case_images(case, benchmark_dir, image_dir, rules)
    except ValueError as e:
        return {**base, "failed": str(e)}
    calls = build_calls(case, refs, output, prompts, rules)
    results, errors = send_case(client, calls, lambda c: call_tag(rnd, scoring, case, c), scoring, rules)
    for call in calls:
        if call.name not in results:
            res = errors.get(call.name) or next(iter(errors.values()))
            return {**base, "failed": f"{call.name}: {res.error} (after {res.attempts} attempt(s))"}
    return {**base, **make_record(case, results)}


def iter_jobs(
    cases: list[BenchmarkCase],
    benchmark_dir: Path,
    result_dir: Path,
    prompts: PromptSet,
    build_calls: CallBuilder,
    rounds: int | None = None,
    scorings: int = 1,
    rules: JudgingRules = OURS,
) -> Iterator[JudgeJob | None]:
    """Every judge request ``score_benchmark`` makes when every reply reads, in its order, as a ``JudgeJob``
    (all tries with ``rules.every_try``, else the first); ``None`` once per judging pass of a case whose
    images cannot be read (it makes no request). For ``--dry_run`` and the Batch API
    (eval/judge/run_modes.py, eval/judge/batch.py)."""
    for rnd, image_dir in round_dirs(result_dir, rounds):
        for case in cases:
            try:
                refs, output = read_case_images(case, benchmark_dir, image_dir, rules)
            except ValueError:
                yield from [None] * scorings
                continue
            for s in range(scorings):
                for call in build_calls(case, refs, output, prompts, rules):
                    tag = call_tag(rnd, s, case, call)
                    for k in range(rules.tries if rules.every_try else 1):
                        yield JudgeJob(call.prompt, call.images, call.parse, scoring_round=s, tag=tag, send=k)


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
    rules: JudgingRules = OURS,
) -> dict:
    """Judge every (round, scoring, case) and aggregate. Raises JudgeFatalError on quota/auth stops
    (after cancelling pending work; finished judgements are cached)."""
    bench = get_benchmark(bench_name)
    dirs = round_dirs(result_dir, rounds)
    units = [(r, d, s, c) for r, d in dirs for s in range(scorings) for c in cases]
    records: list[dict | None] = [None] * len(units)
    bar = tqdm(total=len(units), desc=f"score {bench.name}", disable=not progress, dynamic_ncols=True)
    # cases run concurrently; the client's semaphore bounds the requests actually in flight
    with ThreadPoolExecutor(max_workers=client.settings.max_concurrency) as pool:
        futures = [
            pool.submit(
                _score_one, client, c, benchmark_dir, d, r, s, prompts, build_calls, make_record, rules
            )
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
