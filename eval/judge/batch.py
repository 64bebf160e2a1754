"""Judging through the OpenAI Batch API (half the price, answers within 24 h), resumable across runs.

Each run of a scoring command with ``--batch_api`` does, in order:

1. **collect**: every batch submitted by an earlier run (``batch_api.json`` in the output folder) is
   looked up; a finished one's replies are checked by the same parser as live replies and go into the
   judge cache (a reply that does not parse is not cached);
2. **submit**: the judgements the protocol needs now, neither cached nor waiting in a submitted batch, are
   uploaded as one new batch (a JSONL of the exact request bodies the live client would send). With our
   protocol a reply that did not parse is asked again (up to ``max_submissions`` batches); the authors'
   protocols never ask one request again: their own tries are other requests (Scone's scorer sends the
   whole case again, eval/scoring.py ``batch_jobs``);
3. while a batch is still running the command stops with exit code 3 ("rerun later"); once nothing is
   pending, scoring runs from the cache only (no live request) and writes the tables. A judgement still
   without a valid reply after ``max_submissions`` batches is a failed case, counted like any other.

Nothing is lost when a run is killed: the state file is rewritten atomically after each submission and
collection, and cached replies stay cached.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.judge.cache import atomic_write_text
from eval.judge.client import JudgeClient

log = logging.getLogger(__name__)

STATE_FILE = "batch_api.json"
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
ENDPOINT = "/v1/chat/completions"


@dataclass
class Request:
    """One judgement to get: where it goes in the cache and how its reply is checked."""

    key: str
    body: dict
    parse: Callable[[str], Any]
    scoring_round: int
    tag: str


def batch_requests(client: JudgeClient, jobs: Iterable) -> list[Request]:
    """The Batch API requests of ``jobs`` (``JudgeJob``; ``None`` entries make none), one per distinct
    judgement, with the cache keys and bodies the live client would use."""
    out: dict[str, Request] = {}
    for job in jobs:
        if job is not None:
            key, body = client.prepare(job.prompt, job.images, job.scoring_round, send=job.send)
            out.setdefault(key, Request(key, body, job.parse, job.scoring_round, job.tag))
    return list(out.values())


@dataclass
class BatchReport:
    pending_batches: list[str] = field(default_factory=list)  # still running at the provider
    submitted: str | None = None  # batch id submitted by this run
    submitted_requests: int = 0
    collected: int = 0  # replies cached by this run
    rejected: int = 0  # replies that did not parse (asked again in the next batch)
    given_up: int = 0  # requests without a valid reply after max_submissions batches

    @property
    def done(self) -> bool:
        return not self.pending_batches and self.submitted is None


class BatchRunner:
    def __init__(self, client: JudgeClient, output_dir: Path, max_submissions: int = 3):
        if client.cache is None:
            raise ValueError(
                "the Batch API path keeps its replies in the judge cache: give the client a cache_dir"
            )
        self.client, self.path, self.max_submissions = client, Path(output_dir) / STATE_FILE, max_submissions
        self.state = (
            json.loads(self.path.read_text()) if self.path.is_file() else {"batches": [], "tries": {}}
        )
        self._waiting_keys: set[str] | None = None

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.state, indent=1))
        self._waiting_keys = None  # the state changed

    def run(self, requests: list[Request]) -> BatchReport:
        """``collect`` then ``submit`` the same requests."""
        report = BatchReport()
        self.collect(requests, report)
        self.submit(requests, report)
        return report

    def collect(self, requests: list[Request], report: BatchReport) -> None:
        """Look up every batch submitted earlier; a finished one's replies go into the cache (``requests``
        give each reply's parser: a reply of a request not among them is not read)."""
        by_key = {r.key: r for r in requests}
        api = self.client._client()
        for batch in self.state["batches"]:
            if batch.get("collected"):
                continue
            info = api.batches.retrieve(batch["id"])
            batch["status"] = info.status
            if info.status in RUNNING:
                report.pending_batches.append(batch["id"])
                continue
            for file_id in (info.output_file_id, info.error_file_id):
                if file_id:
                    self._collect(api.files.content(file_id).text, by_key, report)
            batch["collected"] = True
            self._save()

    def _waiting(self) -> set[str]:
        """Keys of the submitted batches not collected yet (kept until the state changes)."""
        if self._waiting_keys is None:
            self._waiting_keys = {
                k for b in self.state["batches"] if not b.get("collected") for k in b["keys"]
            }
        return self._waiting_keys

    def unusable(self, key: str) -> bool:
        """Whether ``key`` was answered by a collected batch without a reply the parser accepts."""
        return (
            self.state["tries"].get(key, 0) > 0
            and key not in self._waiting()
            and self.client.cache.get(key) is None
        )

    def submit(self, requests: list[Request], report: BatchReport) -> None:
        """Upload the requests neither cached nor waiting in a submitted batch as one new batch."""
        waiting, todo = self._waiting(), []
        for r in requests:
            if r.key in waiting or self.client.cache.get(r.key) is not None:
                continue
            if self.state["tries"].get(r.key, 0) >= self.max_submissions:
                report.given_up += 1
                continue
            todo.append(r)
        if todo:
            self._submit(self.client._client(), todo, report)

    def _collect(self, text: str, by_key: dict[str, Request], report: BatchReport) -> None:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key = item["custom_id"]
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable Batch API output line: %.200s", line)
                continue
            r = by_key.get(key)
            if r is None:
                continue  # a request of another configuration (e.g. other task types this run)
            response = item.get("response") or {}
            if item.get("error") or response.get("status_code") != 200:
                report.rejected += 1
                self.client.usage.error("batch_error")
                log.warning("[%s] Batch API error: %s", r.tag, item.get("error") or response.get("body"))
                continue
            body = response.get("body") or {}
            usage = body.get("usage") or {}
            self.client.usage.add(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            try:
                raw = self.client.reply_text(body)
            except ValueError as e:
                report.rejected += 1
                log.warning("[%s] %s", r.tag, e)
                continue
            if self.client.accept(key, raw, r.parse, r.scoring_round, r.tag):
                report.collected += 1
            else:
                report.rejected += 1

    def _submit(self, api, todo: list[Request], report: BatchReport) -> None:
        lines = "".join(
            json.dumps({"custom_id": r.key, "method": "POST", "url": ENDPOINT, "body": r.body}) + "\n"
            for r in todo
        )
        upload = api.files.create(file=("judge_requests.jsonl", lines.encode("utf-8")), purpose="batch")
        batch = api.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h")
        for r in todo:
            self.state["tries"][r.key] = self.state["tries"].get(r.key, 0) + 1
        self.state["batches"].append(
            {
                "id": batch.id,
                "input_file_id": upload.id,
                "keys": [r.key for r in todo],
                "submitted": time.time(),
                "status": batch.status,
            }
        )
        self._save()
        self.client.usage.add(requests=len(todo))
        report.submitted, report.submitted_requests = batch.id, len(todo)
        log.info("submitted Batch API job %s with %d request(s)", batch.id, len(todo))
