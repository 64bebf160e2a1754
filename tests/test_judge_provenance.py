"""Every score file and table names its judge: the model requested and the model the replies say answered;
a table whose judgements come from several models says so."""

from __future__ import annotations

import json

from eval import sconeeval
from tests.fake_judge_server import FakeJudgeServer
from tests.test_scoring_cli import SCONE_CASES, api_key, cli_args, judge_reply, make_bench  # noqa: F401


def answered_by(name):
    def reply(payload):
        r = judge_reply(payload)
        r.served_model = name
        return r

    return reply


def test_scores_record_the_answering_model_and_flag_a_mix(tmp_path, api_key):  # noqa: F811
    bench, res = make_bench(tmp_path, SCONE_CASES, missing=())
    out = tmp_path / "out"
    with FakeJudgeServer(answered_by("gpt-4.1-2025-04-14")) as srv:
        assert sconeeval.main(cli_args(bench, res, out, srv.base_url)) in (0, 1)
        sent = len(srv.requests)
    scores = json.loads((out / "scores.json").read_text())
    judge = scores["judge"]
    assert judge["model"] == "gpt-4.1" and judge["served_models"] == {"gpt-4.1-2025-04-14": sent}
    assert judge["protocol"] == "ours" and judge["date"].endswith("Z")
    assert set(judge["prompt_sha256"]) == set(scores["prompts"]) and all(judge["prompt_sha256"].values())
    md = (out / "scores.md").read_text()
    assert "answered by gpt-4.1-2025-04-14" in md and "Warning" not in md

    # half of the cache thrown away, the rest judged by another model behind the same name: mixed table
    entries = sorted((out / "judge_cache").rglob("*.json"))
    for f in entries[: len(entries) // 2]:
        f.unlink()
    with FakeJudgeServer(answered_by("some-other-model")) as srv:
        assert sconeeval.main(cli_args(bench, res, out, srv.base_url)) in (0, 1)
    judge = json.loads((out / "scores.json").read_text())["judge"]
    assert set(judge["served_models"]) == {"gpt-4.1-2025-04-14", "some-other-model"}
    assert sum(judge["served_models"].values()) == sent
    assert "Warning: these scores come from 2 different judge models" in (out / "scores.md").read_text()
