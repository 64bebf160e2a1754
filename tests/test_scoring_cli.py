"""End-to-end scoring CLIs (SconeEval, OmniContext) against the scripted local judge server:
expected tables, failures listed, cache makes reruns free, quota stop and kill -9 both resume."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from eval import omnicontext, sconeeval
from tests.fake_judge_server import FakeJudgeServer, Reply, image_urls, prompt_text

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-cli-test-key"

# one valid case per SconeEval task type, plus one whose reference path escapes the folder
SCONE_CASES = [
    {
        "key": "cs",
        "task_type": "composition_single",
        "instruction": "put it on a table",
        "input_images": ["img/a.png"],
    },
    {
        "key": "cs2",
        "task_type": "composition_single",
        "instruction": "hold it",
        "input_images": ["img/b.png"],
    },
    {
        "key": "cm",
        "task_type": "composition_multi",
        "instruction": "both in a park",
        "case_type": "S2",
        "input_images": ["img/a.png", "img/b.png"],
    },
    {
        "key": "dc",
        "task_type": "distinction_single_cross",
        "instruction": "the red one",
        "input_images": ["img/b.png"],
        "subject_list": [["red cup", "blue dog"]],
        "subject_label": [[1, 0]],
    },
    {
        "key": "di",
        "task_type": "distinction_single_intra",
        "instruction": "the left one",
        "input_images": ["img/b.png"],
        "subject_list": [["blue cup", "green cup"]],
        "subject_label": [[0, 1]],
    },
    {
        "key": "dmc",
        "task_type": "distinction_multi_cross",
        "instruction": "x",
        "input_images": ["img/a.png", "img/b.png"],
        "subject_list": [["blue hat"], ["red car", "green car"]],
        "subject_label": [[0], [1, 1]],
    },
    {
        "key": "dmi",
        "task_type": "distinction_multi_intra",
        "instruction": "y",
        "input_images": ["img/a.png", "img/b.png"],
        "subject_list": [["blue hat"], ["blue cap"]],
        "subject_label": [[0], [0]],
    },
    {"key": "bad", "task_type": "composition_single", "instruction": "z", "input_images": ["../outside.png"]},
]


def judge_reply(payload):
    """PF -> 8, SC -> 6 (scene rubric -> 4), presence -> 1 for red/green subjects, 0 otherwise."""
    text = prompt_text(payload)
    if "PROMPT FOLLOWING" in text:
        return Reply(json.dumps({"score": 8, "reasoning": "pf"}))
    if "SUBJECT AND SCENE CONSISTENCY" in text:
        return Reply(json.dumps({"score": 4, "reasoning": "scene"}))
    if "SUBJECT CONSISTENCY" in text:
        return Reply('```json\n{"score": 6, "reasoning": "sc"}\n```')
    assert len(image_urls(payload)) == 2
    return Reply("1" if ("red" in text or "green" in text) else "0")


def make_bench(tmp_path, cases, rounds=2, missing=("round1", "composition_single", "cs")):
    bench = tmp_path / "bench"
    (bench / "img").mkdir(parents=True)
    Image.new("RGB", (48, 32), (255, 0, 0)).save(bench / "img/a.png")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(bench / "img/b.png")
    Image.new("RGB", (40, 40), (0, 255, 0)).save(tmp_path / "outside.png")
    (bench / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    res = tmp_path / "results"
    for r in range(rounds):
        for i, c in enumerate(cases):
            p = res / f"round{r}" / c["task_type"] / f"{c['key']}.png"
            if (f"round{r}", c["task_type"], c["key"]) == tuple(missing):
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (r * 50, 10 * i, 0)).save(p)  # distinct pixels per image
    return bench, res


def cli_args(bench, res, out, base_url, *extra):
    return [
        "--benchmark_dir",
        str(bench),
        "--result_dir",
        str(res),
        "--output_dir",
        str(out),
        "--base_url",
        base_url,
        "--backoff_base",
        "0.001",
        "--backoff_max",
        "0.01",
        "--timeout",
        "5",
        "--no_progress",
        *extra,
    ]


def expected_requests(cases, groups):
    per = sum(2 + sum(len(s) for s in c.get("subject_list", [])) for c in cases if c["key"] != "bad")
    return per * groups


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_sconeeval_cli_table_failures_and_free_rerun(tmp_path, api_key):
    bench, res = make_bench(tmp_path, SCONE_CASES)
    out = tmp_path / "scores"
    with FakeJudgeServer(judge_reply) as srv:
        code = sconeeval.main(cli_args(bench, res, out, srv.base_url, "--scorings", "2", "--method", "Tiny"))
        n_first = len(srv.requests)
        # 2 rounds x 2 scorings; round1 lacks cs.png (its 2 calls never happen in 2 scorings)
        assert n_first == expected_requests(SCONE_CASES, 4) - 2 * 2
        data = json.loads((out / "scores.json").read_text())
        md1 = (out / "scores.md").read_text()
        assert code == 1  # failures exist -> non-zero exit
        code2 = sconeeval.main(cli_args(bench, res, out, srv.base_url, "--scorings", "2", "--method", "Tiny"))
        assert code2 == 1 and len(srv.requests) == n_first  # zero new calls
        assert (out / "scores.md").read_text() == md1
    assert data["n_groups"] == 4 and data["cases"] == {"scored": 4 * 7 - 2, "failed": 4 + 2}
    reasons = sorted({f["reason"].split(":")[0] for g in data["groups"] for f in g["failures"]})
    assert reasons == ["missing output image", "reference image"]
    m = data["mean"]
    assert m["tasks.composition_single.COM"] == pytest.approx(math.sqrt(48))
    assert m["tasks.composition_multi.SC"] == 4.0  # case_type contains "S" -> scene rubric
    assert m["tasks.distinction_single_cross.DIS_overall"] == 10.0  # preds [[1, 0]] == labels
    assert m["tasks.distinction_single_intra.DIS_acc"] == 10.0
    assert m["tasks.distinction_multi_cross.DIS_recall"] == 10.0
    assert m["tasks.distinction_multi_intra.DIS_overall"] == 5.0  # all-negative case
    assert data["task_counts"]["composition_single"] == {"n": 4 + 2, "failed": 2 + 4}
    avg_com = (5 * math.sqrt(48) + math.sqrt(32)) / 6
    avg_dis = (10 + 10 + 10 + 5) / 4
    assert m["leaderboard.overall"] == pytest.approx((avg_com + avg_dis) / 2)
    assert data["std"]["leaderboard.overall"] == pytest.approx(0.0)
    rec = [json.loads(x) for x in (out / "round0/scoring1/score.jsonl").read_text().splitlines()]
    dmc = next(r for r in rec if r["key"] == "dmc")
    assert dmc["DIS_pred"] == [[0], [1, 1]] and dmc["PF_score_reason"] == "pf" and dmc["SC_score"] == 6.0
    assert "| 6/32 |" in md1 and "Scored 26 of 32 cases (4 group(s)" in md1
    usage = [json.loads(x) for x in (out / "usage.jsonl").read_text().splitlines()]
    assert usage[0]["requests"] == n_first and usage[1]["requests"] == 0 and usage[1]["cache_hits"] > 0
    assert KEY not in (out / "scores.json").read_text() + (out / "usage.jsonl").read_text()


def test_quota_stop_then_resume(tmp_path, api_key):
    cases = [c for c in SCONE_CASES if c["key"] != "bad"]
    bench, res = make_bench(tmp_path, cases, rounds=1)
    out = tmp_path / "scores"
    total = expected_requests(cases, 1)
    lock, count = threading.Lock(), {"n": 0}

    def until_quota(payload):
        with lock:
            count["n"] += 1
            if count["n"] > 7:
                return Reply(
                    status=429, error_code="insufficient_quota", error_message="You exceeded your quota"
                )
        return judge_reply(payload)

    args = ["--max_concurrency", "1"]
    with FakeJudgeServer(until_quota) as srv:
        assert sconeeval.main(cli_args(bench, res, out, srv.base_url, *args)) == 2
        assert len(srv.requests) == 8 and not (out / "scores.json").exists()
    with FakeJudgeServer(judge_reply) as srv:
        assert sconeeval.main(cli_args(bench, res, out, srv.base_url, *args)) == 0
        assert len(srv.requests) == total - 7
    assert json.loads((out / "scores.json").read_text())["cases"] == {"scored": 7, "failed": 0}


def test_kill_and_rerun_resumes_with_same_table(tmp_path, api_key):
    cases = [c for c in SCONE_CASES if c["key"] != "bad"]
    bench, res = make_bench(tmp_path, cases, rounds=1)
    total = expected_requests(cases, 2)
    slow = lambda p: Reply(judge_reply(p).content, delay=0.05)  # noqa: E731
    out = tmp_path / "killed"
    with FakeJudgeServer(slow) as srv:
        args = cli_args(bench, res, out, srv.base_url, "--scorings", "2", "--max_concurrency", "2")
        env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "eval.sconeeval", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60

        def live_requests() -> int:
            for f in out.glob(".usage-live-*.json"):
                try:
                    return json.loads(f.read_text())["requests"]
                except (OSError, ValueError, KeyError):
                    return 0
            return 0

        while (
            (len(srv.requests) < 10 or live_requests() == 0)
            and time.time() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = len(srv.requests)
        spent = live_requests()  # what the killed run had recorded of its spend
        assert spent > 0 and not (out / "usage.jsonl").exists()
        assert 10 <= before < total
        cached = sum(1 for f in (out / "judge_cache").rglob("*.json"))
        assert 0 < cached <= before
        assert not list((out / "judge_cache").rglob("*.tmp"))
        assert sconeeval.main(args) == 0
        assert len(srv.requests) - before == total - cached  # only unfinished calls are made again
        ledger = [json.loads(x) for x in (out / "usage.jsonl").read_text().splitlines()]
        assert [e.get("interrupted", False) for e in ledger] == [True, False]  # the killed run is recorded
        assert ledger[0]["requests"] >= spent and not list(out.glob(".usage-live-*.json"))
    with FakeJudgeServer(judge_reply) as srv:
        fresh = tmp_path / "fresh"
        assert sconeeval.main(cli_args(bench, res, fresh, srv.base_url, "--scorings", "2")) == 0
    assert (out / "scores.md").read_text() == (fresh / "scores.md").read_text()


def test_omnicontext_cli_flat_layout_and_language_filter(tmp_path, api_key):
    cases = [
        {
            "key": "0",
            "task_type": "single_character",
            "instruction": "a",
            "input_images": ["img/a.png"],
            "instruction_language": "en",
        },
        {
            "key": "1",
            "task_type": "scene_object",
            "instruction": "b",
            "input_images": ["img/a.png", "img/b.png"],
            "instruction_language": "en",
        },
        {
            "key": "2",
            "task_type": "multi_object",
            "instruction": "c",
            "input_images": ["img/b.png"],
            "instruction_language": "zh",
        },
    ]
    bench, res = make_bench(tmp_path, cases, rounds=1)
    flat = res / "round0"  # upstream layout: {result_dir}/{task_type}/{key}.png, no round folders
    out = tmp_path / "scores"
    with FakeJudgeServer(judge_reply) as srv:
        code = omnicontext.main(cli_args(bench, flat, out, srv.base_url, "--language", "en"))
        assert len(srv.requests) == 4
        n_imgs = [len(image_urls(p)) for p in srv.requests]
        assert sorted(n_imgs) == [2, 2, 3, 3]  # references + generated image
    assert code == 0
    data = json.loads((out / "scores.json").read_text())
    assert data["mean"]["tasks.single_character.COM"] == pytest.approx(math.sqrt(48))
    assert data["mean"]["tasks.scene_object.SC"] == 4.0  # scene rubric for scene task types
    assert data["mean"]["tasks.multi_object.COM"] is None  # filtered out (zh)
    assert data["mean"]["leaderboard.overall"] is None
    md = (out / "scores.md").read_text()
    assert md.splitlines()[2].startswith("| Method | S-Char | S-Obj |") and "| Average |" in md


def test_prompt_dir_overrides_templates(tmp_path, api_key):
    cases = [
        {"key": "0", "task_type": "single_character", "instruction": "wave", "input_images": ["img/a.png"]}
    ]
    bench, res = make_bench(tmp_path, cases, rounds=1)
    pdir = tmp_path / "prompts"
    pdir.mkdir()
    (pdir / "omnicontext_pf.txt").write_text(
        "PROMPT FOLLOWING, authors' wording. Instruction: ${instruction}"
    )
    with FakeJudgeServer(judge_reply) as srv:
        out = tmp_path / "scores"
        # a partial set is an error (it would mix two rubrics), and no request is made
        assert omnicontext.main(cli_args(bench, res, out, srv.base_url, "--prompt_dir", str(pdir))) == 2
        assert srv.requests == []
        for name in ("omnicontext_sc", "omnicontext_sc_scene"):
            shutil.copy(ROOT / "eval" / "prompts" / f"{name}.txt", pdir / f"{name}.txt")
        assert omnicontext.main(cli_args(bench, res, out, srv.base_url, "--prompt_dir", str(pdir))) == 0
        texts = sorted(prompt_text(p) for p in srv.requests)
    assert "PROMPT FOLLOWING, authors' wording. Instruction: wave" in texts
    src = json.loads((out / "scores.json").read_text())["prompts"]
    assert src["omnicontext_pf"]["path"] == str(pdir / "omnicontext_pf.txt")
    assert src["omnicontext_sc"]["path"] == str(pdir / "omnicontext_sc.txt")


def test_sigterm_writes_the_usage_line(tmp_path, api_key):
    cases = [c for c in SCONE_CASES if c["key"] != "bad"]
    bench, res = make_bench(tmp_path, cases, rounds=1)
    slow = lambda p: Reply(judge_reply(p).content, delay=0.05)  # noqa: E731
    out = tmp_path / "termed"
    with FakeJudgeServer(slow) as srv:
        args = cli_args(bench, res, out, srv.base_url, "--scorings", "2", "--max_concurrency", "2")
        env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "eval.sconeeval", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 60
        while len(srv.requests) < 6 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    (line,) = [json.loads(x) for x in (out / "usage.jsonl").read_text().splitlines()]
    assert line["requests"] >= 6 and "interrupted" not in line
    assert not list(out.glob(".usage-live-*.json"))


def test_a_hostile_judge_gives_the_clean_table(tmp_path, api_key):
    """A quarter of the replies are faults: proxy HTML pages and malformed bodies with status 200, 5xx,
    rate limits; presence answers come as prose with an explicit final answer. The table equals the clean
    judge's, nothing crashes, and every fault is counted in the usage ledger."""
    import random
    import threading

    cases = [c for c in SCONE_CASES if c["key"] != "bad"]
    bench, res = make_bench(tmp_path, cases, rounds=1)
    rng, lock = random.Random(7), threading.Lock()
    faults = [
        Reply(raw=b"<html>502 Bad Gateway</html>", content_type="text/html"),
        Reply(raw=b'{"choices": [{"index": 0, "message": null}]}'),
        Reply(raw=b"[1, 2, 3]"),
        Reply(status=500, error_code="server_error"),
        Reply(status=429, error_code="rate_limit_exceeded", headers={"retry-after": "0.001"}),
    ]

    def hostile(payload):
        with lock:
            roll, fault = rng.random(), rng.choice(faults)
        if roll < 0.25:
            return fault
        good = judge_reply(payload)
        if good.content in ("0", "1"):  # a talkative local judge
            return Reply(f"The subject from image 1 is considered. Answer: {good.content}")
        return good

    with FakeJudgeServer(judge_reply) as srv:
        clean = tmp_path / "clean"
        assert sconeeval.main(cli_args(bench, res, clean, srv.base_url, "--scorings", "2")) == 0
    with FakeJudgeServer(hostile) as srv:
        noisy = tmp_path / "noisy"
        args = cli_args(bench, res, noisy, srv.base_url, "--scorings", "2", "--max_retries", "10")
        assert sconeeval.main(args) == 0
    assert (noisy / "scores.md").read_text() == (clean / "scores.md").read_text()
    (usage,) = [json.loads(x) for x in (noisy / "usage.jsonl").read_text().splitlines()]
    assert usage["failures"] == 0 and usage["retries"] == sum(usage["errors"].values()) > 0
    assert {"malformed", "http_500", "rate_limit"} <= set(usage["errors"])


def test_dry_run_counts_the_requests_a_real_run_makes(tmp_path, capsys, monkeypatch):
    bench, res = make_bench(tmp_path, SCONE_CASES)
    out = tmp_path / "scores"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a dry run needs no key
    with FakeJudgeServer(judge_reply) as srv:
        args = cli_args(bench, res, out, srv.base_url, "--scorings", "2")
        assert sconeeval.main([*args, "--dry_run", "--price_input", "2", "--price_output", "8"]) == 0
        assert srv.requests == []
        planned = capsys.readouterr().out
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        sconeeval.main(args)
        sent = len(srv.requests)
        assert sconeeval.main([*args, "--dry_run"]) == 0
        again = capsys.readouterr().out.splitlines()[-1]
    assert f" {sent} request(s) to send, 0 cached" in planned and "$" in planned
    assert again.split(": ", 1)[1].startswith(f"0 request(s) to send, {sent} cached")
