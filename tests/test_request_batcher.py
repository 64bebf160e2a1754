"""The web demo's request queue: batching by key, bounds, failure isolation, progress, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from inference.request_batcher import QueueFull, RequestBatcher


class Recorder:
    """A ``run_batch`` that records every call; ``gate`` holds the worker until released."""

    def __init__(self, fail_on=None, gate: threading.Event | None = None, steps: int = 3):
        self.calls: list[tuple] = []
        self.fail_on = fail_on
        self.gate = gate
        self.steps = steps

    def __call__(self, key, payloads, progress):
        self.calls.append((key, list(payloads)))
        if self.gate is not None:
            self.gate.wait(10)
        for i in range(self.steps):
            progress(i + 1, self.steps)
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError(f"cannot do {self.fail_on}")
        return [f"{key}:{p}" for p in payloads]


def wait_all(jobs, timeout=10):
    for j in jobs:
        assert j.wait(timeout), "a job never finished"


def test_requests_waiting_together_share_one_call_per_key():
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = RequestBatcher(run, max_batch_size=3, max_queue=10, gather_s=0.0)
    try:
        first = b.submit("a", 0)  # occupies the worker until the gate opens
        while not run.calls:
            time.sleep(0.01)
        jobs = [b.submit(k, i) for i, k in enumerate("aabaab", 1)]
        gate.set()
        wait_all([first, *jobs])
    finally:
        b.close()
    # after the first call: the oldest key first, at most 3 per call, other keys wait their turn
    assert run.calls[1:] == [("a", [1, 2, 4]), ("b", [3, 6]), ("a", [5])]
    assert [j.result for j in jobs] == ["a:1", "a:2", "b:3", "a:4", "a:5", "b:6"]
    assert [j.batch_size for j in jobs] == [3, 3, 2, 3, 1, 2]
    assert all(j.progress == (3, 3) and j.status == "done" for j in jobs)


def test_a_first_request_waits_for_company_within_the_gather_window():
    run = Recorder()
    b = RequestBatcher(run, max_batch_size=4, max_queue=10, gather_s=0.5)
    try:
        jobs = [b.submit("k", 0)]
        time.sleep(0.05)
        jobs += [b.submit("k", i) for i in (1, 2, 3)]  # the fourth fills the batch: no more waiting
        wait_all(jobs)
    finally:
        b.close()
    assert run.calls == [("k", [0, 1, 2, 3])]


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = RequestBatcher(run, max_batch_size=1, max_queue=2, gather_s=0.0)
    try:
        running = b.submit("k", 0)
        while not run.calls:
            time.sleep(0.01)
        queued = [b.submit("k", 1), b.submit("k", 2)]
        assert b.waiting() == 2 and b.position(queued[1]) == 1 and b.position(running) == -1
        with pytest.raises(QueueFull, match="2 requests are waiting"):
            b.submit("k", 3)
        gate.set()
        wait_all([running, *queued])
        assert b.submit("k", 4).wait(10)  # room again once the line moved
    finally:
        b.close()


def test_one_failing_request_does_not_fail_the_others_in_its_batch():
    gate = threading.Event()
    run = Recorder(fail_on="bad", gate=gate)
    b = RequestBatcher(run, max_batch_size=4, max_queue=10, gather_s=0.0)
    try:
        first = b.submit("k", "warm")
        while not run.calls:
            time.sleep(0.01)
        jobs = [b.submit("k", p) for p in ("x", "bad", "y")]
        gate.set()
        wait_all([first, *jobs])
        after = b.submit("k", "z")  # the worker survived
        wait_all([after])
    finally:
        b.close()
    assert ("k", ["x", "bad", "y"]) in run.calls  # tried together, then one by one
    assert [j.result for j in jobs] == ["k:x", None, "k:y"]
    assert isinstance(jobs[1].error, ValueError) and "cannot do bad" in str(jobs[1].error)
    assert jobs[0].error is None and after.result == "k:z"


def test_a_wrong_number_of_results_is_an_error_not_a_mixup():
    b = RequestBatcher(lambda key, payloads, progress: ["only one"], max_batch_size=2, gather_s=0.3)
    try:
        jobs = [b.submit("k", 1), b.submit("k", 2)]
        wait_all(jobs)
    finally:
        b.close()
    # run one by one after the mismatch: each gets its own single answer
    assert [j.result for j in jobs] == ["only one", "only one"] and all(j.batch_size == 1 for j in jobs)


def test_close_fails_the_waiting_jobs_and_refuses_new_ones():
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = RequestBatcher(run, max_batch_size=1, max_queue=5, gather_s=0.0)
    running = b.submit("k", 0)
    while not run.calls:
        time.sleep(0.01)
    waiting = b.submit("k", 1)
    threading.Timer(0.2, gate.set).start()
    b.close()
    assert running.wait(5) and running.result == "k:0"
    assert waiting.wait(0) and "shutting down" in str(waiting.error)
    with pytest.raises(RuntimeError, match="closed"):
        b.submit("k", 2)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        RequestBatcher(Recorder(), max_batch_size=0)


class Heavy:
    """A payload that must never be compared (an upload of large images): comparing it fails the test."""

    def __eq__(self, other):
        raise AssertionError("a payload was compared")

    __hash__ = object.__hash__


def test_jobs_are_told_apart_by_identity_and_payloads_are_never_compared():
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = RequestBatcher(run, max_batch_size=1, max_queue=8, gather_s=0.0)
    try:
        first = b.submit("k", Heavy())
        while not run.calls:
            time.sleep(0.01)
        same = Heavy()
        jobs = [b.submit("k", same) for _ in range(3)]  # identical requests: three places in line
        assert [b.position(j) for j in jobs] == [0, 1, 2]
        assert b.position(first) == -1
        gate.set()
        wait_all([first, *jobs])
    finally:
        gate.set()
        b.close()


def test_the_queue_is_bounded_by_the_pixels_it_holds():
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = RequestBatcher(run, max_batch_size=1, max_queue=10, gather_s=0.0, max_queued_cost=100)
    try:
        running = b.submit("k", 0, cost=500)  # taken by the worker at once: it no longer counts
        while not run.calls:
            time.sleep(0.01)
        b.submit("k", 1, cost=60)
        with pytest.raises(QueueFull, match="memory budget"):
            b.submit("k", 2, cost=60)
        b.submit("k", 3, cost=40)  # still fits
        gate.set()
        assert running.wait(10)
    finally:
        gate.set()
        b.close()


@pytest.mark.parametrize(
    "error", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")]
)
def test_out_of_memory_fails_that_request_with_a_message_and_the_worker_goes_on(error):
    from inference.request_batcher import describe_error

    def run(key, payloads, progress):
        if "big" in payloads:
            raise error
        return payloads

    b = RequestBatcher(run, max_batch_size=4, gather_s=0.2)
    try:
        jobs = [b.submit("k", "small"), b.submit("k", "big"), b.submit("k", "small2")]
        wait_all(jobs)
        after = b.submit("k", "later")
        wait_all([after])
    finally:
        b.close()
    assert jobs[1].error is error and "ran out of memory" in describe_error(jobs[1].error)
    assert [jobs[0].result, jobs[2].result, after.result] == ["small", "small2", "later"]
