"""--batch_api: requests go out as OpenAI Batch API jobs (scripted local server), are collected on later
runs, rejected replies are asked again in the next batch, and the final tables equal a live run's."""

from __future__ import annotations

import json
import threading

from PIL import Image

from eval import sconeeval
from tests.fake_judge_server import FakeJudgeServer, Reply, prompt_text

CASES = [
    {"key": "c1", "task_type": "composition_single", "instruction": "on a table", "input_images": ["a.png"]},
    {"key": "c2", "task_type": "composition_multi", "instruction": "in a park", "input_images": ["a.png", "b.png"]},
    {"key": "d1", "task_type": "distinction_single_cross", "instruction": "the red one", "input_images": ["b.png"],
     "subject_list": [["red cup", "blue dog"]], "subject_label": [[1, 0]]},
]  # fmt: skip
N_REQUESTS = 2 + 2 + 2 + 2  # PF + SC per case, 2 presence questions


def make_bench(tmp_path):
    bench, res = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    Image.new("RGB", (48, 32), (255, 0, 0)).save(bench / "a.png")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(bench / "b.png")
    (bench / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CASES))
    for i, c in enumerate(CASES):
        p = res / c["task_type"] / f"{c['key']}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10 * i, 100, 0)).save(p)
    return bench, res


class Judge:
    """PF 8, SC 6, presence 1 for red; the first PF question of c1 is answered with garbage once."""

    def __init__(self, garbage: int = 1):
        self.garbage, self.lock = garbage, threading.Lock()

    def __call__(self, payload):
        text = prompt_text(payload)
        if "on a table" in text and "PROMPT FOLLOWING" in text:
            with self.lock:
                if self.garbage:
                    self.garbage -= 1
                    return Reply("I cannot rate this.")
        if "PROMPT FOLLOWING" in text:
            return Reply(json.dumps({"score": 8, "reasoning": "pf"}))
        if "CONSISTENCY" in text:
            return Reply(json.dumps({"score": 6, "reasoning": "sc"}))
        return Reply("1" if "red" in text else "0")


def run(bench, res, out, srv, *extra):
    return sconeeval.main(["--benchmark_dir", str(bench), "--result_dir", str(res), "--output_dir", str(out),
                           "--base_url", srv.base_url, "--no_progress", "--backoff_max", "0.01", *extra])  # fmt: skip


def test_batch_api_submits_collects_resubmits_and_matches_a_live_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-batch-test")
    bench, res = make_bench(tmp_path)
    out = tmp_path / "scores"
    with FakeJudgeServer(Judge()) as srv:
        assert run(bench, res, out, srv, "--dry_run") == 0
        assert f"{N_REQUESTS} request(s) to send" in capsys.readouterr().out
        assert run(bench, res, out, srv, "--batch_api") == 3  # submitted, running
        assert run(bench, res, out, srv, "--batch_api") == 3  # still running: nothing new submitted
        state = json.loads((out / "batch_api.json").read_text())
        assert len(state["batches"]) == 1 and len(state["batches"][0]["keys"]) == N_REQUESTS
        assert not srv.requests  # nothing was sent live
        lines = srv.files[state["batches"][0]["input_file_id"]].decode().splitlines()
        assert {json.loads(x)["url"] for x in lines} == {"/v1/chat/completions"}
        assert srv.finish_batches() == N_REQUESTS
        assert run(bench, res, out, srv, "--batch_api") == 3  # 7 collected; the garbage one asked again
        state = json.loads((out / "batch_api.json").read_text())
        assert [len(b["keys"]) for b in state["batches"]] == [N_REQUESTS, 1]
        assert srv.finish_batches() == 1
        assert run(bench, res, out, srv, "--batch_api") == 0  # all collected: tables from the cache
        assert len(srv.requests) == N_REQUESTS + 1  # every request went through a batch
        batch = json.loads((out / "scores.json").read_text())
        live_out = tmp_path / "live"
        assert run(bench, res, live_out, srv) == 0
    live = json.loads((live_out / "scores.json").read_text())
    assert batch["mean"] == live["mean"] and batch["cases"] == {"scored": 3, "failed": 0}
    usage = [json.loads(x) for x in (out / "usage.jsonl").read_text().splitlines()]
    assert sum(u["requests"] for u in usage) == N_REQUESTS + 1 and len(usage) == 4  # one per --batch_api run


def test_batch_api_gives_up_after_max_submissions(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-batch-test")
    bench, res = make_bench(tmp_path)
    out = tmp_path / "scores"
    with FakeJudgeServer(Judge(garbage=99)) as srv:
        assert run(bench, res, out, srv, "--batch_api", "--batch_max_submissions", "1") == 3
        srv.finish_batches()
        assert run(bench, res, out, srv, "--batch_api", "--batch_max_submissions", "1") == 1  # a failed case
        n = len(srv.requests)
    scores = json.loads((out / "scores.json").read_text())
    assert n == N_REQUESTS and scores["cases"] == {"scored": 2, "failed": 1}
    reasons = [f["reason"] for g in scores["groups"] for f in g["failures"]]
    assert reasons and "no valid Batch API reply" in reasons[0]
