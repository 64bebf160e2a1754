"""A bounded request queue whose one worker thread runs compatible requests together.

The web demo (``inference.app``) serves several people with one loaded model. Every request goes through
here: requests that can share a forward pass (same ``key``: for image generation, the same sampling
settings) and that wait at the same time are handed to ``run_batch`` as one list, up to
``max_batch_size``. Only the worker thread touches the model, so a CPU or GPU is never shared by two
forwards at once, and a full queue is refused at once (``QueueFull``) instead of growing without bound:
in requests (``max_queue``) and in their total cost (``max_queued_cost``, e.g. the pixels of the uploaded
images, which is what fills memory). Jobs are told apart by identity, never by comparing payloads (two
identical requests are two places in line, and a payload of large images is never compared byte by
byte). A request that fails, out of memory included, fails alone with a readable message; the worker
keeps serving. The web demo (``inference.app``) and the OpenAI-compatible server (``inference.serve``)
share one batcher when they run in one process.

Why our own queue rather than Gradio's ``batch=True``: Gradio batches calls of one function without
looking at their arguments, so requests with different sizes or step counts would land in one call that
cannot run them together; it also gives no per-request progress. This module does not import Gradio and
is tested on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# run_batch(key, payloads, progress) -> one result per payload, in order; progress(done, total).
RunBatch = Callable[[Hashable, list, Callable[[int, int], None]], list]


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` requests already; the caller should try again later."""


@dataclass(eq=False)  # identity: never compare payloads (uploaded images) to find a job
class Job:
    key: Hashable
    payload: Any
    cost: float = 0.0  # counted against max_queued_cost while queued
    submitted: float = field(default_factory=time.monotonic)
    status: str = "queued"  # queued -> running -> done
    progress: tuple[int, int] = (0, 0)  # (steps done, steps in all) of the batch it runs in
    batch_size: int = 0  # how many requests shared its forward passes
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0  # time in run_batch
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has a result or an error."""
        return self._done.wait(timeout)

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.status = result, error, "done"
        self._done.set()


class RequestBatcher:
    """Queue of ``Job``s served by one worker thread.

    ``gather_s``: once the worker is idle and a first request arrives, it waits this long for others to
    join (people pressing "generate" within the same instant), never longer. ``max_queue`` counts jobs
    waiting, not the ones running.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int = 4,
        max_queue: int = 16,
        gather_s: float = 0.1,
        name: str = "scone-batcher",
        max_queued_cost: float = float("inf"),
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size}, {max_queue}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_queued_cost = max_queued_cost
        self._queued_cost = 0.0
        self.gather_s = gather_s
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    def submit(self, key: Hashable, payload: Any, cost: float = 0.0) -> Job:
        """Queue one request; raises ``QueueFull`` when ``max_queue`` are waiting already or its ``cost``
        would take the queued total past ``max_queued_cost`` (a request alone is always accepted)."""
        job = Job(key, payload, cost)
        with self._cond:
            if self._closed:
                raise RuntimeError("the request queue is closed")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting already")
            if self._pending and self._queued_cost + cost > self.max_queued_cost:
                raise QueueFull("the queued requests' images fill the queue's memory budget")
            self._pending.append(job)
            self._queued_cost += cost
            self._cond.notify_all()
        return job

    def position(self, job: Job) -> int:
        """0-based place of a queued job in the line (-1 once it runs): one pass, by identity."""
        with self._cond:
            for i, queued in enumerate(self._pending):
                if queued is job:
                    return i
            return -1

    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the running batch; jobs still queued fail with RuntimeError."""
        with self._cond:
            self._closed = True
            left, self._pending = self._pending, []
            self._queued_cost = 0.0
            self._cond.notify_all()
        for job in left:
            job._finish(error=RuntimeError("the server is shutting down"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._pending[0]
            deadline = time.monotonic() + self.gather_s
            while not self._closed:
                same = [j for j in self._pending if j.key == first.key]
                left = deadline - time.monotonic()
                if len(same) >= self.max_batch_size or left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            batch = [j for j in self._pending if j.key == first.key][: self.max_batch_size]
            taken = {id(j) for j in batch}
            self._pending = [j for j in self._pending if id(j) not in taken]
            for j in batch:
                j.status = "running"
                self._queued_cost -= j.cost
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        def progress(done: int, total: int) -> None:
            for j in batch:
                j.progress = (done, total)

        start = time.monotonic()
        try:
            results = self.run_batch(batch[0].key, [j.payload for j in batch], progress)
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
        except Exception as e:  # reported to each caller; the worker thread must never die
            if is_out_of_memory(e):
                free_memory()
            if len(batch) == 1:
                log.warning("request failed: %s", describe_error(e), exc_info=log.isEnabledFor(logging.DEBUG))
                batch[0].seconds = time.monotonic() - start
                batch[0]._finish(error=e)
                return
            # One request may be what failed: run them one by one so the others still get their answer.
            log.warning(
                "a batch of %d failed (%s); running its requests one by one", len(batch), describe_error(e)
            )
            for j in batch:
                self._run([j])
            return
        self.batches_run += 1
        seconds = time.monotonic() - start
        for j, r in zip(batch, results):
            j.batch_size, j.seconds = len(batch), seconds
            j._finish(result=r)


def is_out_of_memory(error: BaseException) -> bool:
    """Host ``MemoryError``, CUDA's ``OutOfMemoryError`` or an allocator's "can't allocate" RuntimeError."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate" in text


def free_memory() -> None:
    """Give back what a failed request allocated, before the next one runs."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # never let cleanup fail the worker
        pass


def describe_error(error: BaseException) -> str:
    """A message a user can read: out-of-memory failures say so (``MemoryError()`` has no text at all)."""
    if is_out_of_memory(error):
        return (
            "the server ran out of memory for this request; try fewer or smaller images, a smaller output, "
            "or try again when it is less busy"
        )
    return str(error).strip() or type(error).__name__
