"""Judge client against a scripted OpenAI-compatible server on 127.0.0.1, driving the real `openai` SDK."""

import base64
import io
import json
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from eval.judge.client import JudgeClient, JudgeFatalError, JudgeJob
from eval.judge.images import resize_reference
from eval.judge.parsing import parse_binary, parse_score_json, parse_score_reason
from eval.judge.settings import JudgeSettings
from eval.scoring import Call, Scorer, Unit, score_units
from tests.fake_judge_server import FakeJudgeServer, Reply, ScriptedResponder, image_urls, prompt_text

KEY = "sk-test-SECRET-123456"
SCORE = '{"score": 7, "reasoning": "fine"}'


def _img(color=(200, 10, 10), size=(24, 16)):
    return Image.new("RGB", size, color)


class _Jobs(Scorer):
    """Each unit's case holds a JudgeJob: its one request, through the shared scoring driver."""

    def calls(self, case, prepared):
        return [Call("job", case.job.prompt, case.job.images, case.job.parse)]

    def record(self, case, prepared, results):
        return {"result": results["job"]}

    def failed(self, case, reason, result):
        return {"result": result}


def run_jobs(client, jobs):
    """JudgeResults of ``jobs`` in order, run concurrently by eval.scoring.score_units."""
    units = [
        Unit(0, Path("."), j.scoring_round, SimpleNamespace(uid=str(i), job=j)) for i, j in enumerate(jobs)
    ]
    return [r["result"] for r in score_units(units, _Jobs(), client, progress=False)]


def _client(server, tmp_path=None, api_key=KEY, **kw):
    opts = dict(base_url=server.base_url, backoff_base=0.001, backoff_max=0.01, timeout=5.0)
    opts.update(kw)
    cache = tmp_path / "cache" if tmp_path is not None else None
    return JudgeClient(JudgeSettings(**opts), api_key=api_key, cache_dir=cache)


# ----------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"score": 8, "reasoning": "ok"}', 8.0),
        ('```json\n{\n "score": 6.5,\n "reasoning": "multi\nline"\n}\n```', 6.5),
        ('Sure! {"score": 0, "reasoning": "bad"} thanks', 0.0),
        ("10", 10.0),
        (" 3 ", 3.0),
    ],
)
def test_parse_score_json_accepts(text, expected):
    assert parse_score_json(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no idea",
        "11",
        '{"score": 11}',
        '{"score": -1}',
        '{"score": "8"}',
        '{"score": true}',
        '{"reasoning": "x"}',
        "{score: 7}",
        '{"score": [7]}',
        '{"score": NaN}',
    ],
)
def test_parse_score_json_rejects(text):
    with pytest.raises(ValueError):
        parse_score_json(text)


def test_parse_score_reason_and_binary():
    assert parse_score_reason('{"score": 4, "reasoning": "meh"}') == (4.0, "meh")
    assert parse_binary(" 1 ") == 1 and parse_binary("0") == 0
    assert parse_binary("The answer is 0.") == 0
    assert parse_binary("Answer: 1 (present)") == 1
    for bad in ("", "yes", "10", "2"):
        with pytest.raises(ValueError):
            parse_binary(bad)


def test_resize_reference_protocol():
    assert resize_reference(_img(size=(100, 50))).size == (96, 48)
    big = resize_reference(_img(size=(2048, 1024)))  # scaled by sqrt(1/2) -> 1448x724 -> floor to 16
    assert big.size == (1440, 720)


# ----------------------------------------------------------------------------- request shape
def test_request_shape_images_and_ledger():
    img1, img2 = _img(), _img((0, 0, 255), (8, 8))
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv, seed=5)
        r = c.judge("rate it", [img1, img2], parse_score_json, scoring_round=2)
        assert r.ok and r.value == 7.0 and r.attempts == 1 and not r.cached
        payload = srv.requests[0]
        assert payload["model"] == "gpt-4.1" and payload["max_tokens"] == 1400
        assert payload["temperature"] == 0.0 and payload["seed"] == 7  # seed + scoring round
        assert prompt_text(payload) == "rate it"
        assert payload["messages"][0]["content"][0]["type"] == "text"  # text first, then images
        urls = image_urls(payload)
        assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
        back = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
        assert back.format == "PNG" and back.tobytes() == img1.tobytes()
        assert srv.headers[0]["Authorization"] == f"Bearer {KEY}"
        u = c.usage.as_dict()
        assert (u["requests"], u["prompt_tokens"], u["completion_tokens"], u["retries"]) == (1, 100, 10, 0)


def test_images_from_path_and_bytes(tmp_path):
    img = _img((1, 2, 3))
    img.save(tmp_path / "a.png")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv)
        assert c.judge("p", [tmp_path / "a.png", buf.getvalue(), img], parse_score_json).ok
        urls = image_urls(srv.requests[0])
        assert len(set(urls)) == 1  # the same pixels whatever the input form
        missing = c.judge("p", [tmp_path / "nope.png"], parse_score_json)
        assert not missing.ok and "not found" in missing.error and len(srv.requests) == 1


# ----------------------------------------------------------------------------- retries
@pytest.mark.parametrize(
    "first,kind",
    [
        (Reply(status=429, error_code="rate_limit_exceeded"), "rate_limit"),
        (Reply(status=500, error_code="server_error"), "http_500"),
        (Reply(status=503), "http_503"),
        (Reply(SCORE, delay=1.5), "timeout"),
        (Reply("I cannot comply"), "unparseable"),
    ],
)
def test_retry_then_success(first, kind):
    with FakeJudgeServer(ScriptedResponder([first], default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv, timeout=0.5)
        sleeps = []
        c._sleep = sleeps.append
        r = c.judge("p", [_img()], parse_score_json)
        assert r.ok and r.value == 7.0 and r.attempts == 2
        u = c.usage.as_dict()
        assert u["retries"] == 1 and u["errors"] == {kind: 1} and u["failures"] == 0 and u["requests"] == 2
        assert len(sleeps) == 1 and 0.0005 <= sleeps[0] <= 0.001


def test_connection_error_is_retried_then_reported():
    settings = JudgeSettings(base_url="http://127.0.0.1:9/v1", max_retries=2, backoff_base=0.001, timeout=1)
    c = JudgeClient(settings, api_key=KEY)
    r = c.judge("p", [_img()], parse_score_json)
    assert not r.ok and r.attempts == 3 and "connection" in r.error
    assert c.usage.as_dict()["errors"] == {"connection": 3}


def test_garbage_is_retried_then_failure_with_backoff_growth():
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply("garbage text, no score"))) as srv:
        c = _client(srv, max_retries=3, backoff_base=0.001, backoff_max=0.004)
        sleeps = []
        c._sleep = sleeps.append
        r = c.judge("p", [_img()], parse_score_json, tag="case1/PF")
        assert not r.ok and r.value is None and r.attempts == 4 and r.raw == "garbage text, no score"
        assert "unparseable" in r.error and len(srv.requests) == 4
        # exponential, jittered into [0.5, 1] x min(max, base * 2^k)
        for k, s in enumerate(sleeps):
            cap = min(0.004, 0.001 * 2**k)
            assert 0.5 * cap <= s <= cap
        u = c.usage.as_dict()
        assert u["failures"] == 1 and u["retries"] == 3 and u["successes"] == 0


def test_retry_after_header_is_honoured_over_backoff_max_up_to_its_ceiling():
    script = [
        Reply(status=429, error_code="rate_limit_exceeded", headers={"retry-after": "0.05"}),
        Reply(status=429, error_code="rate_limit_exceeded", headers={"retry-after": "3600"}),
    ]
    with FakeJudgeServer(ScriptedResponder(script, default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv, backoff_max=0.03, retry_after_max=0.2)
        sleeps = []
        c._sleep = sleeps.append
        assert c.judge("p", [_img()], parse_score_json).ok
        assert sleeps == [0.05, 0.2]  # the server's wait over backoff_max; an hour capped at the ceiling


_CHAT = b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": %s}'
MALFORMED_200 = {
    "html page": Reply(raw=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
    "message null": Reply(raw=_CHAT % b'[{"index": 0, "message": null, "finish_reason": "stop"}]'),
    "json array": Reply(raw=b'[{"choices": []}]'),
    "not json": Reply(raw=b'{"choices": [', content_type="application/json"),
    "choices not a list": Reply(raw=_CHAT % b'"none"'),
}


@pytest.mark.parametrize("name", list(MALFORMED_200))
def test_a_200_that_is_not_a_completion_is_retried_then_failed(name):
    bad = MALFORMED_200[name]
    with FakeJudgeServer(ScriptedResponder([bad], default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv)
        c._sleep = lambda s: None
        r = c.judge("p", [_img()], parse_score_json)
        assert r.ok and r.value == 7.0 and r.attempts == 2, (name, r)  # retried, then the good reply
    with FakeJudgeServer(ScriptedResponder(default=lambda p: bad)) as srv:
        c = _client(srv, max_retries=2)
        c._sleep = lambda s: None
        r = c.judge("p", [_img()], parse_score_json)
        assert not r.ok and r.attempts == 3 and c.usage.failures == 1, (name, r)  # failed, no crash


def test_content_as_a_list_of_parts_is_read_as_its_text():
    parts = b'[{"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": "{\\"score\\": "}, {"type": "text", "text": "7}"}]}, "finish_reason": "stop"}]'
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(raw=_CHAT % parts))) as srv:
        r = _client(srv).judge("p", [_img()], parse_score_json)
    assert r.ok and r.value == 7.0, r


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("The subject from image 1 does not appear in the image. Answer: 0", 0),
        ("**Answer:** 1", 1),
        ('{"answer": 0, "reason": "image 1 shows a cat"}', 0),
        ("I see it. Final answer: 1. (not 0)", 1),
        ("0.", 0),
    ],
)
def test_presence_takes_the_explicit_answer(reply, expected):
    assert parse_binary(reply) == expected


@pytest.mark.parametrize(
    "reply", ["-1", "Answer: -1", "The subject from image 1 does not appear.", "1 or 0", "maybe", "1.5"]
)
def test_presence_that_is_ambiguous_is_unparseable(reply):
    with pytest.raises(ValueError):
        parse_binary(reply)


# ----------------------------------------------------------------------------- fatal stops
@pytest.mark.parametrize(
    "reply,needle",
    [
        (Reply(status=429, error_code="insufficient_quota"), "quota"),
        (Reply(status=401, error_code="invalid_api_key"), "authentication"),
        (Reply(status=404, error_code="model_not_found"), "not found"),
    ],
)
def test_fatal_errors_stop_at_once(reply, needle):
    with FakeJudgeServer(ScriptedResponder(default=lambda p: reply)) as srv:
        c = _client(srv)
        with pytest.raises(JudgeFatalError, match=needle):
            c.judge("p", [_img()], parse_score_json)
        assert len(srv.requests) == 1  # no retry storm
        with pytest.raises(JudgeFatalError):
            c.judge("p2", [_img()], parse_score_json)
        assert len(srv.requests) == 1  # later calls stop before the network
        assert needle in c.usage.as_dict()["fatal"]


def test_quota_in_concurrent_scoring_cancels_the_rest(tmp_path):
    n_ok = 3
    counter = {"n": 0}
    lock = threading.Lock()

    def respond(payload):
        with lock:
            counter["n"] += 1
            k = counter["n"]
        return Reply(SCORE) if k <= n_ok else Reply(status=429, error_code="insufficient_quota")

    jobs = [JudgeJob(f"prompt {i}", [_img()], parse_score_json) for i in range(40)]
    with FakeJudgeServer(respond) as srv:
        c = _client(srv, tmp_path, max_concurrency=2)
        with pytest.raises(JudgeFatalError):
            run_jobs(c, jobs)
        assert len(srv.requests) <= n_ok + 2  # at most the in-flight ones after the stop
    # rerun with credit again: only the unfinished jobs are asked, results complete and ordered
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(SCORE))) as srv2:
        c2 = _client(srv2, tmp_path, max_concurrency=2)
        res = run_jobs(c2, jobs)
        assert all(r.ok for r in res) and sum(r.cached for r in res) == n_ok
        assert len(srv2.requests) == len(jobs) - n_ok


def test_missing_key_is_fatal_only_when_a_call_is_needed(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(SCORE))) as srv:
        warm = _client(srv, tmp_path)
        assert warm.judge("p", [_img()], parse_score_json).ok
        cold = JudgeClient(
            JudgeSettings(base_url=srv.base_url, api_key_env="MY_JUDGE_KEY"), cache_dir=tmp_path / "cache"
        )
        assert cold.judge("p", [_img()], parse_score_json).cached  # cached: no key needed
        with pytest.raises(JudgeFatalError, match="MY_JUDGE_KEY"):
            cold.judge("other prompt", [_img()], parse_score_json)
        monkeypatch.setenv("MY_JUDGE_KEY", KEY)
        env = JudgeClient(
            JudgeSettings(base_url=srv.base_url, api_key_env="MY_JUDGE_KEY", backoff_base=0.001)
        )
        assert env.judge("other prompt", [_img()], parse_score_json).ok
        assert srv.headers[-1]["Authorization"] == f"Bearer {KEY}"


def test_unsupported_seed_is_dropped():
    script = [
        Reply(status=400, error_code="invalid_request_error", error_message="Unsupported parameter: 'seed'")
    ]
    with FakeJudgeServer(ScriptedResponder(script, default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv, max_retries=0)  # the dropped-parameter retry is free
        assert c.judge("p", [_img()], parse_score_json).ok
        assert c.judge("q", [_img()], parse_score_json).ok
        assert "seed" in srv.requests[0] and all("seed" not in r for r in srv.requests[1:])
        assert c.usage.as_dict()["dropped_params"] == ["seed"]


def test_other_bad_request_fails_item_without_retry():
    bad = Reply(status=400, error_code="content_policy_violation", error_message="refused")
    with FakeJudgeServer(ScriptedResponder([bad], default=lambda p: Reply(SCORE))) as srv:
        c = _client(srv)
        r = c.judge("p", [_img()], parse_score_json)
        assert not r.ok and r.attempts == 1 and "content_policy_violation" in r.error
        assert c.judge("q", [_img()], parse_score_json).ok  # the run goes on


# ----------------------------------------------------------------------------- cache, concurrency, secrecy
def test_cache_second_run_makes_zero_requests(tmp_path):
    jobs = [JudgeJob(f"p{i % 3}", [_img((i, 0, 0))], parse_score_json, scoring_round=i % 2) for i in range(6)]
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(SCORE))) as srv:
        first = run_jobs(_client(srv, tmp_path), jobs)
        assert len(srv.requests) == 6 and not any(r.cached for r in first)
        c2 = _client(srv, tmp_path)
        second = run_jobs(c2, jobs)
        assert len(srv.requests) == 6  # zero new calls
        assert all(r.cached for r in second) and [r.value for r in second] == [r.value for r in first]
        assert c2.usage.as_dict()["cache_hits"] == 6 and c2.usage.as_dict()["requests"] == 0
        # another scoring round is another judgement
        assert not c2.judge("p0", [_img((0, 0, 0))], parse_score_json, scoring_round=5).cached
        # another model is another judgement
        c3 = _client(srv, tmp_path, model="other-judge")
        assert not c3.judge("p0", [_img((0, 0, 0))], parse_score_json).cached


def test_failures_are_not_cached(tmp_path):
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply("garbage"))) as srv:
        assert not _client(srv, tmp_path, max_retries=0).judge("p", [_img()], parse_score_json).ok
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply(SCORE))) as srv:
        r = _client(srv, tmp_path).judge("p", [_img()], parse_score_json)
        assert r.ok and not r.cached and len(srv.requests) == 1


def test_bounded_concurrency_and_order():
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def respond(payload):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        n = int(prompt_text(payload).split()[-1])
        return Reply(json.dumps({"score": n % 11, "reasoning": ""}))

    jobs = [JudgeJob(f"case {i}", [_img()], parse_score_json) for i in range(12)]
    with FakeJudgeServer(respond) as srv:
        res = run_jobs(_client(srv, max_concurrency=3), jobs)
    assert [r.value for r in res] == [float(i % 11) for i in range(12)]
    assert 2 <= state["max"] <= 3


def test_api_key_never_logged_or_stored(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    script = [
        Reply(status=401, error_code="invalid_api_key", error_message=f"Incorrect API key provided: {KEY}")
    ]
    with FakeJudgeServer(ScriptedResponder([Reply(SCORE)] + script)) as srv:
        c = _client(srv, tmp_path)
        assert c.judge("p", [_img()], parse_score_json).ok
        with pytest.raises(JudgeFatalError) as e:
            c.judge("q", [_img()], parse_score_json)
    assert KEY not in str(e.value) and "***" in str(e.value)
    assert KEY not in caplog.text
    assert KEY not in json.dumps(c.usage.as_dict())
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text()


def test_optional_parameters_can_be_omitted():
    with FakeJudgeServer(ScriptedResponder(default=lambda p: Reply("1"))) as srv:
        c = _client(srv, max_tokens=None, temperature=None, seed=None)
        assert c.judge("present?", [_img()], parse_binary).value == 1
        assert sorted(srv.requests[0]) == ["messages", "model"]
