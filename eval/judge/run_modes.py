"""What every judge-based benchmark CLI shares around its own scoring, in one vocabulary: ``--dry_run`` (the
requests a run would send, cached ones excluded, with estimated tokens and cost), ``--batch_api`` (the
judgements through OpenAI's Batch API, eval/judge/batch.py), the usage ledger and the exit codes
(``JudgedRun``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from eval.judge.cache import LiveLedgerFile, append_usage

log = logging.getLogger(__name__)


def add_run_mode_args(p: argparse.ArgumentParser) -> None:
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


def plan_requests(client, jobs: Iterable, completion_tokens: int = 200) -> RequestPlan:
    """What a run would send, without sending anything: ``jobs`` (``JudgeJob``, or ``None`` for a case that
    makes no request) minus cache hits. Text tokens are estimated at 4 characters per token, replies at
    ``completion_tokens`` each."""
    plan = RequestPlan()
    for job in jobs:
        if job is None:
            plan.skipped_cases += 1
        elif client.is_cached(job.prompt, job.images, job.scoring_round, send=job.send):
            plan.cached += 1
        else:
            plan.requests += 1
            plan.prompt_tokens += len(job.prompt) // 4 + sum(image_tokens(*_size(im)) for im in job.images)
            plan.completion_tokens += completion_tokens
    return plan


def _size(image) -> tuple[int, int]:
    """(width, height) of a PIL image, or of an image file read only as far as its header."""
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as im:
        return im.size


def describe_plan(plan: RequestPlan, args: argparse.Namespace, model: str) -> str:
    """The dry run's one line: requests to send, cached, cases without images, tokens and cost."""
    cost = plan.cost(args.price_input, args.price_output)
    return (
        f"dry run ({model}): {plan.requests} request(s) to send, {plan.cached} cached, "
        f"{plan.skipped_cases} case(s) without images; about {plan.prompt_tokens} input + "
        f"{plan.completion_tokens} output tokens = ${cost:.2f} at ${args.price_input}/"
        f"${args.price_output} per 1M (retries not included)"
    )


EXIT_OK, EXIT_FAILED_CASES, EXIT_FATAL, EXIT_PENDING = 0, 1, 2, 3


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class JudgedRun:
    """The lifecycle every judged benchmark run shares around its own scoring (``with JudgedRun(...) as run``):

    * on entry, the usage of runs killed earlier (their live ledger files) goes into ``usage.jsonl``, this
      run's usage is kept on disk while it runs, and SIGTERM unwinds like Ctrl-C;
    * ``batch(jobs)`` with ``--batch_api``: collects finished batches and submits what is missing; returns
      ``EXIT_PENDING`` while a batch runs, else None, and the client then answers from the cache only;
    * on exit, the client is closed and one usage line is appended (also after an error or an interrupt).
    """

    def __init__(self, client, output_dir: Path, args: argparse.Namespace):
        self.client, self.output_dir, self.args = client, Path(output_dir), args
        self.started = time.time()
        self._live = self._previous = None

    def ledger_line(self) -> dict:
        return {
            "time": self.started,
            "judge_model": self.client.settings.model,
            **self.client.usage.as_dict(),
        }

    def __enter__(self) -> JudgedRun:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        recovered = LiveLedgerFile.recover(self.output_dir)
        if recovered:
            log.warning(
                "%d interrupted run(s) found: their judge usage is now in %s",
                recovered,
                self.output_dir / "usage.jsonl",
            )
        self._live = LiveLedgerFile(self.output_dir, self.ledger_line).start()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def batch(self, plan: Callable[[Callable[[str], bool]], Iterable]) -> int | None:
        """``--batch_api``: the judgements ``plan(unusable)`` lists (``JudgeJob``s; ``unusable(key)``: whether
        a collected batch answered that request without a readable reply) through the Batch API
        (eval/judge/batch.py). The plan is made before collecting (to read the replies of earlier batches)
        and again after (what to submit now). A client that does not ask again for an unreadable reply
        (``retry_unparseable=False``: the authors' protocols) never submits one request twice. Returns ``EXIT_PENDING`` while a batch runs, else None; the client then
        answers from the cache only."""
        if not self.args.batch_api:
            return None
        from eval.judge.batch import BatchReport, BatchRunner, batch_requests

        reask = self.client.settings.retry_unparseable
        runner = BatchRunner(self.client, self.output_dir, self.args.batch_max_submissions if reask else 1)
        report = BatchReport()
        runner.collect(batch_requests(self.client, plan(runner.unusable)), report)
        runner.submit(batch_requests(self.client, plan(runner.unusable)), report)
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
            log.info("Batch API jobs are running: rerun the same command later to collect them (exit code 3)")
            return EXIT_PENDING
        self.client.offline = "no valid Batch API reply for this request"
        return None

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        self.client.close()
        usage = self.ledger_line()
        append_usage(self.output_dir, usage)
        self._live.close()
        log.info("judge usage: %s", json.dumps(usage))


def dry_run(client, jobs: Iterable, args: argparse.Namespace) -> int:
    """``--dry_run``: print what a run would send (nothing is sent or written)."""
    print(describe_plan(plan_requests(client, jobs, args.completion_tokens), args, client.settings.model))
    return EXIT_OK
