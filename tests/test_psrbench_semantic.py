"""Semantic alignment against a scripted OpenAI-compatible server on 127.0.0.1 (stdlib http.server),
score parsing, retries, failures, upstream-compat default, and the report counts."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from data.psrbench_cases import case_output_path, load_psrbench_cases, write_results_json
from eval.judge.client import JudgeClient
from eval.judge.rules import AUTHORS
from eval.judge.settings import JudgeSettings
from eval.psrbench.detection import Box
from eval.psrbench.evaluate import run_evaluation
from eval.psrbench.report import summarize, to_markdown
from eval.psrbench.semantic import (
    SEMANTIC_PROMPTS,
    build_prompt,
    load_prompt_templates,
    parse_bracket_score,
    semantic_alignment,
)
from tests.synthetic_psrbench import make_synthetic_psrbench


class ScriptedServer:
    """POST /v1/chat/completions -> next scripted reply for the case whose instruction is in the prompt."""

    def __init__(self, scripts, status=200):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.status = status
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(payload)
                    text = "".join(p.get("text", "") for p in payload["messages"][0]["content"])
                    key = next(k for k in outer.scripts if k in text)
                    script = outer.scripts[key]
                    reply = script.pop(0) if len(script) > 1 else script[0]
                if outer.status != 200:
                    body = {"error": {"message": "model not found", "type": "NotFound", "code": 404}}
                else:
                    body = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": payload["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                data = json.dumps(body).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def client_for(url, **kw):
    c = JudgeClient(
        JudgeSettings(model="Qwen/Qwen2.5-VL-7B-Instruct", base_url=url, max_retries=2, **kw), api_key="psr"
    )
    c._sleep = lambda s: None  # no real backoff waits in tests
    return c


@pytest.mark.parametrize(
    "reply, score",
    [
        ("[Thought]: fine.\n[Score]: 7.5", 7.5),
        ("[Score]:8", 8.0),
        ("[Thought]: x [Score]: 3 ... later [Score]: 9", 3.0),  # first match
        ("[Score]: 10.", 10.0),
        ("[Score]: 0", 0.0),
    ],
)
def test_parse_bracket_score(reply, score):
    assert parse_bracket_score(reply) == score


@pytest.mark.parametrize(
    "reply", ["", "Score: 7", "[Score]: eight", "[Score]: 11", "[Score]: .", "[Score]: 1.2.3"]
)
def test_parse_bracket_score_rejects(reply):
    with pytest.raises(ValueError):
        parse_bracket_score(reply)


def test_prompt_templates_cover_vlm_subsets(tmp_path):
    t = load_prompt_templates()
    assert set(t) == set(SEMANTIC_PROMPTS) and "Position" not in t
    p = build_prompt(t["Attribute"], "  a red {cat} and a dog ")
    assert "a red {cat} and a dog" in p and "{instruction}" not in p and "[Score]:" in p
    assert "ATTRIBUTES" in t["Attribute"] and "ACTIONS" in t["Action"] and "BACKGROUND" in t["Background"]
    (tmp_path / "attribute.txt").write_text("{instruction}")
    with pytest.raises(FileNotFoundError, match="action.txt"):
        load_prompt_templates(tmp_path)
    for name in SEMANTIC_PROMPTS.values():
        (tmp_path / f"{name}.txt").write_text("no placeholder")
    with pytest.raises(ValueError, match="placeholder"):
        load_prompt_templates(tmp_path)


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    root = make_synthetic_psrbench(
        tmp_path / "PSRBench", subsets=("Attribute", "Position", "Three"), n_per_subset=2
    )
    cases = load_psrbench_cases(root, ["Attribute", "Position", "Three"])
    monkeypatch.chdir(tmp_path)
    for i, c in enumerate(cases):
        p = case_output_path(c, "outputs")
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10 * i, 50, 90)).save(p)
    write_results_json(cases, "outputs")
    return load_psrbench_cases(root, ["Attribute", "Position", "Three"], json_dir="outputs")


SCRIPTS = {
    # keyed by a fragment of each case's instruction (synthetic bench)
    "attribute scene with a cat, a dog": ["[Thought]: good\n[Score]: 8"],
    "attribute scene with a dog, a teddy bear": ["I think it is fine", "[Thought]: ok [Score]: 6.5"],
    "three scene with a cat": ["no score at all"],  # never parses
    "three scene with a dog": ["[Score]: 42", "[Score]: 4"],  # out of range, then fine
}


def test_semantic_alignment_scores_retries_and_failures(bench):
    items = [(c, c.result_path) for c in bench if c.subset != "Position"]
    server = ScriptedServer(SCRIPTS)
    with server as url:
        client = client_for(url)
        res = semantic_alignment(items, client, load_prompt_templates(), progress=False)
    assert [r.status for r in res] == ["scored", "scored", "failed", "scored"]
    assert [r.score for r in res] == [8.0, 6.5, None, 4.0]
    assert [r.attempts for r in res] == [1, 2, 3, 2]  # max_retries=2 -> 3 attempts for the failure
    assert "unparseable" in res[2].error and res[2].raw == "no score at all"
    assert len(server.requests) == 8
    req = server.requests[0]
    assert req["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    content = req["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    texts = [r["messages"][0]["content"][0]["text"] for r in server.requests]
    assert any("ATTRIBUTES" in t for t in texts) and any("three subjects" in t for t in texts)


def test_authors_reading_defaults_to_5_keeps_out_of_range_and_never_reasks(bench):
    items = [(c, c.result_path) for c in bench if c.subset == "Three"]
    templates = {"Three": "Rate this: {}"}
    with ScriptedServer(SCRIPTS) as url:
        res = semantic_alignment(
            items, client_for(url, retry_unparseable=False), templates, rules=AUTHORS["psr"], progress=False
        )
    # no score -> 5 at once; "[Score]: 42" is taken as it is (upstream had no range check)
    assert [(r.status, r.score, r.attempts) for r in res] == [("defaulted", 5.0, 1), ("scored", 42.0, 1)]


class PlantedDetector:
    def detect(self, image, query):
        # cat left, dog right, everything else missing
        return {"cat": [Box(0, 0, 10, 10)], "dog": [Box(20, 0, 30, 10)]}.get(query, [])


class MeanColour:
    def embed(self, images):
        return torch.tensor(
            np.stack([np.asarray(im.convert("RGB"), np.float64).mean((0, 1)) + 1 for im in images])
        )


def test_run_evaluation_report_counts_failures(bench):
    with ScriptedServer(SCRIPTS) as url:
        records, skipped = run_evaluation(
            bench,
            metrics=("sc", "position", "semantic"),
            detector=PlantedDetector(),
            features=MeanColour(),
            judge_client=client_for(url),
            progress=False,
        )
    summary = summarize(records, {"judge_model": "m"}, skipped)
    attr, three, pos = (summary["subsets"][s] for s in ("Attribute", "Three", "Position"))
    assert attr["semantic"] == pytest.approx((8 + 6.5) / 2) and attr["semantic_failed"] == 0
    assert (
        three["semantic"] == pytest.approx(4.0) and three["semantic_failed"] == 1 and three["semantic_n"] == 1
    )
    assert pos["semantic_n"] == 0  # Position is scored geometrically only
    # synthetic Position cases: "cat to the left of dog" (cat box left of dog box -> 1) and
    # "dog on the right of teddy bear" (teddy bear never detected -> missing subject, protocol 0)
    assert [r["position"]["status"] for r in records if r["subset"] == "Position"] == [
        "scored",
        "missing_subject",
    ]
    assert pos["position"] == pytest.approx(0.5) and pos["position_detected"] == pytest.approx(1.0)
    assert pos["position_missing_subject"] == 1
    # SC fallbacks: every subject other than cat/dog falls back (gen and ref) and is counted
    assert three["sc_fallback_kinds"] == {"no_box": 6}
    assert summary["overall"]["semantic_failed"] == 1
    md = to_markdown(summary)
    assert "| Three | 2 | 0 |" in md and "aesthetics: skipped: not requested" in md


def test_fatal_judge_error_marks_semantic_skipped(bench):
    with ScriptedServer(SCRIPTS, status=404) as url:
        records, skipped = run_evaluation(
            bench, metrics=("semantic",), judge_client=client_for(url), progress=False
        )
    assert skipped["semantic"].startswith("judge stopped")
    assert all(r["semantic"] is None for r in records)
