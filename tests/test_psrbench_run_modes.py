"""eval.psrbench.evaluate has the run modes of the other judge-based benchmarks: --dry_run counts the
semantic judge's requests (cached ones excluded), --batch_api submits, collects and then scores from the
cache, with the same per-case scores as a live run."""

from __future__ import annotations

import json

from PIL import Image

from data.psrbench_cases import case_output_path, load_psrbench_cases, write_results_json
from eval.psrbench.evaluate import main as evaluate_main
from tests.fake_judge_server import FakeJudgeServer, Reply
from tests.synthetic_psrbench import make_synthetic_psrbench

SUBSETS = ("Attribute", "Three")


def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("PSR_JUDGE_API_KEY", "psr")
    root = make_synthetic_psrbench(tmp_path / "PSRBench", SUBSETS, n_per_subset=2)
    cases = load_psrbench_cases(root, list(SUBSETS))
    out = tmp_path / "outputs"
    for i, c in enumerate(cases[:-1]):  # the last case has no image: no request for it
        p = case_output_path(c, out)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), (40 * i, 90, 10)).save(p)
    write_results_json(cases, out)
    return root, out, len(cases) - 1


def run(root, out, srv, save, *extra):
    args = ["--data_root", str(root), "--results_dir", str(out), "--subsets", *SUBSETS, "--metrics", "semantic",
            "--judge_base_url", srv.base_url, "--save_dir", str(save), "--no_progress", *extra]  # fmt: skip
    return evaluate_main(args)


def judge(payload):
    return Reply("[Thought]: fine [Score]: 7")


def scores(save):
    return {
        r["uid"]: r["semantic"] and r["semantic"]["score"]
        for r in map(json.loads, (save / "per_case.jsonl").read_text().splitlines())
    }


def test_dry_run_counts_what_a_run_sends(tmp_path, monkeypatch, capsys):
    root, out, n = setup(tmp_path, monkeypatch)
    save = tmp_path / "eval"
    with FakeJudgeServer(judge) as srv:
        assert run(root, out, srv, save, "--dry_run") == 0
        assert f"{n} request(s) to send, 0 cached" in capsys.readouterr().out
        assert not srv.requests and not (save / "summary.json").exists()
        assert run(root, out, srv, save) == 0  # the case without an image is reported as no output
        assert len(srv.requests) == n
        assert run(root, out, srv, save, "--dry_run") == 0
        assert f"0 request(s) to send, {n} cached" in capsys.readouterr().out


def test_batch_api_collects_then_scores_like_a_live_run(tmp_path, monkeypatch):
    root, out, n = setup(tmp_path, monkeypatch)
    batch, live = tmp_path / "batch", tmp_path / "live"
    with FakeJudgeServer(judge) as srv:
        assert run(root, out, srv, batch, "--batch_api") == 3  # submitted, running
        assert not srv.requests and not (batch / "summary.json").exists()
        state = json.loads((batch / "batch_api.json").read_text())
        assert len(state["batches"]) == 1 and len(state["batches"][0]["keys"]) == n
        assert srv.finish_batches() == n
        assert run(root, out, srv, batch, "--batch_api") == 0  # collected; scored from the cache
        assert len(srv.requests) == n  # every judgement went through the batch
        assert run(root, out, srv, live) == 0
    assert scores(batch) == scores(live) and sum(v == 7.0 for v in scores(batch).values()) == n
    usage = [json.loads(x) for x in (batch / "usage.jsonl").read_text().splitlines()]
    assert len(usage) == 2 and sum(u["requests"] for u in usage) == n  # one ledger line per run


def test_usage_ledger_survives_a_kill_like_the_other_benchmarks(tmp_path, monkeypatch):
    """A killed run leaves its live ledger file; the next run folds it into usage.jsonl (marked
    interrupted) before appending its own line, and removes its own live file when done."""
    root, out, n = setup(tmp_path, monkeypatch)
    save = tmp_path / "eval"
    save.mkdir()
    (save / ".usage-live-4242.json").write_text(json.dumps({"judge_model": "x", "requests": 3}))
    with FakeJudgeServer(judge) as srv:
        assert run(root, out, srv, save) == 0
    lines = [json.loads(x) for x in (save / "usage.jsonl").read_text().splitlines()]
    assert lines[0] == {"judge_model": "x", "requests": 3, "interrupted": True}
    assert lines[1]["judge_model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and lines[1]["requests"] == n
    assert not list(save.glob(".usage-live-*"))
