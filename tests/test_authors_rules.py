"""--protocol authors reads replies and repeats requests as the authors' evaluators do (eval/judge/rules.py):
their parsers, checked against independent reimplementations written here from their documented behaviour,
Scone's first-digit presence rule on verbose replies, and OmniGen2's three sends with the last answer kept."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from eval import omnicontext, sconeeval
from eval.judge.authors_parsing import authors_presence, authors_score_reason
from eval.judge.parsing import parse_binary
from tests.fake_judge_server import FakeJudgeServer, Reply, prompt_text
from tests.test_authors_protocol import CASES, make_bench, run, standins  # noqa: F401 - fixture


# ------------------------------------------------------------------ independent reimplementations
def their_presence(s):
    s = str(s).strip()
    if s in ("0", "1"):
        return int(s)
    for i, ch in enumerate(s):  # the first 0/1 with no word character on either side
        if ch in "01":
            before = s[i - 1] if i else " "
            after = s[i + 1] if i + 1 < len(s) else " "
            if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
                return int(ch)
    raise ValueError


def their_fix(blob):
    out = re.sub(r"(\w+):", r'"\1":', blob)

    def one(m):
        v = m.group(2).strip()
        if re.match(r"^-?\d+(\.\d+)?$", v):
            v = "[" + v + "]"
        elif v.lower() not in ("true", "false", "null"):
            v = '"' + v + '"'
        return m.group(1) + ": " + v + m.group(3)

    return re.sub(r'(".*?"):(.*?)(,|})', one, out)


def their_score(s):
    a, b = s.find("{"), s.rfind("}") + 1
    if a == -1 or b == 0:
        n = int(s)  # ValueError when it is not a number
        if not 0 <= n <= 10:
            raise ValueError
        return float(n)
    blob = s[a:b].strip().replace("\n", "")
    try:
        d = json.loads(blob)
    except ValueError:
        d = json.loads(their_fix(blob))
    v = d["score"]
    v = v[0] if isinstance(v, list) else v
    if isinstance(v, bool) or not 0 <= v <= 10:
        raise ValueError
    return float(v)


PRESENCE = [
    "1", " 0\n", "0.", "Yes, 1", "The subject from image 1 is not present. Answer: 0", "Answer: 0",
    "In image 2 the cat is present: 1", "no", "10 of them", "score 1.5", "-1", "image1 0", "[1]", "(0)",
]  # fmt: skip
SCORES = [
    '{"score": 7, "reasoning": "ok"}', "```json\n{\n \"score\": 3,\n \"reasoning\": \"x\"}\n```", "8", " 9\n",
    "11", "{score: 6, reasoning: fine}", "{'score': 4}", "Sure! {\"score\": 10}", '{"score": "7"}', "none",
    '{"reasoning": "no score"}', '{"score": 5.5}', "} {", '{"score": true}', "{score: 12}",
]  # fmt: skip


@pytest.mark.parametrize("text", PRESENCE)
def test_presence_parser_matches_the_reimplementation(text):
    try:
        expected = their_presence(text)
    except ValueError:
        with pytest.raises(ValueError):
            authors_presence(text)
        return
    assert authors_presence(text) == expected


@pytest.mark.parametrize("text", SCORES)
def test_score_parser_matches_the_reimplementation(text):
    try:
        expected = their_score(text)
    except (ValueError, KeyError, TypeError):
        with pytest.raises(ValueError):
            authors_score_reason(text)
        return
    assert authors_score_reason(text)[0] == expected


def test_verbose_presence_reads_differently_in_the_two_protocols():
    reply = "The subject from image 1 is not present. Answer: 0"
    assert authors_presence(reply) == 1 and parse_binary(reply) == 0


def verbose(payload):
    """PF/SC scored; every presence reply verbose: 'absent' in its final answer, '1' first (the image number)."""
    text = prompt_text(payload)
    if "description of one subject" in text or "Subject description" in text:  # ours / the stand-in's
        return Reply("Looking at image 1, the subject is not there. Answer: 0")
    return Reply(json.dumps({"score": 8, "reasoning": "r"}))


def test_sconeeval_dis_follows_the_protocols_parser(tmp_path, standins):  # noqa: F811
    """The same verbose replies: our parser reads the final answer (0: absent), the authors' the first digit."""
    cases = [c for c in CASES if c["task_type"].startswith("distinction")]
    bench, res = make_bench(tmp_path, cases)
    preds = {}
    with FakeJudgeServer(verbose) as srv:
        for protocol in ("ours", "authors"):
            extra = ["--protocol", protocol] + (
                ["--authors_repo", str(standins["scone"])] if protocol == "authors" else []
            )
            out = tmp_path / protocol
            assert run(sconeeval.main, bench, res, out, srv, *extra) == 0
            recs = [
                json.loads(x) for x in (out / "round0" / "scoring0" / "score.jsonl").read_text().splitlines()
            ]
            preds[protocol] = {r["key"]: r["DIS_pred"] for r in recs}
    assert preds["ours"] and all(v == 0 for p in preds["ours"].values() for row in p for v in row)
    assert all(v == 1 for p in preds["authors"].values() for row in p for v in row)


def test_omnigen2_sends_each_request_three_times_and_keeps_the_last_readable(tmp_path, standins):  # noqa: F811
    """Per request kind, the k-th send gets the k-th scripted reply. PF: 7, 5, unreadable; SC: 6, 4, 3.
    Their loop reads PF then SC in each try and an unreadable PF ends that try's reading: PF 5, SC 4."""
    script = {
        "PF": ['{"score": 7}', '{"score": 5}', "no idea"],
        "SC": ['{"score": 6}', '{"score": 4}', '{"score": 3}'],
    }
    seen = Counter()

    def reply(payload):
        kind = "PF" if "Original PF" in prompt_text(payload) else "SC"
        seen[kind] += 1
        return Reply(script[kind][seen[kind] - 1])

    cases = [
        {"key": "o1", "task_type": "single_object", "instruction": "on a desk", "input_images": ["a.jpg"]}
    ]
    bench, res = make_bench(tmp_path, cases)
    with FakeJudgeServer(reply) as srv:
        code = run(omnicontext.main, bench, res, tmp_path / "out", srv, "--protocol", "authors",
                   "--authors_repo", str(standins["omnigen2"]), "--authors_upstream", "omnigen2")  # fmt: skip
        sent = len(srv.requests)
    assert code == 0 and sent == 6 and seen == {"PF": 3, "SC": 3}
    rec = json.loads((tmp_path / "out" / "round0" / "scoring0" / "score.jsonl").read_text())
    assert (rec["PF_score"], rec["SC_score"]) == (5.0, 4.0)
    # a rerun answers the readable sends from the cache (each send has its own entry) and asks again only
    # the unreadable one (failures are not cached); unreadable again, the record stays the same
    with FakeJudgeServer(lambda payload: Reply("still no idea")) as srv:
        assert run(omnicontext.main, bench, res, tmp_path / "out", srv, "--protocol", "authors",
                   "--authors_repo", str(standins["omnigen2"]), "--authors_upstream", "omnigen2") == 0  # fmt: skip
        assert len(srv.requests) == 1
    assert json.loads((tmp_path / "out" / "round0" / "scoring0" / "score.jsonl").read_text()) == rec


# ------------------------------------------------------------------ Scone's whole-case tries
def their_scone_case(ask, dis_subjects):
    """Scone's BenchScore.evaluate as documented: up to 3 tries; each sends PF and SC, reads both, then asks
    each presence question in turn and reads it; any unreadable reply starts the next try with every
    request again; the first try whose replies all read ends the loop. ask(kind) -> reply text."""
    for _ in range(3):
        try:
            pf, sc = ask("PF"), ask("SC")
            values = {"PF": their_score(pf), "SC": their_score(sc)}
            values["DIS"] = [their_presence(ask(f"DIS/{s}")) for s in dis_subjects]
            return values
        except (ValueError, KeyError, TypeError):
            continue
    return None  # their assertion fails: the case has no scores


SCONE_SCRIPTS = {  # per request kind, the k-th time it is asked gets the k-th reply
    "dis_unreadable_once": {"PF": ["7", "8"], "SC": ["6", "5"], "DIS/red": ["1", "1"], "DIS/blue": ["?", "0"]},
    "sc_unreadable_twice": {"PF": ["7", "8", "9"], "SC": ["x", "y", "4"], "DIS/red": ["0"], "DIS/blue": ["1"]},
    "never_readable": {"PF": ["x", "y", "z"], "SC": ["6", "6", "6"], "DIS/red": [], "DIS/blue": []},
}  # fmt: skip


@pytest.mark.parametrize("name", SCONE_SCRIPTS)
def test_scone_resends_the_whole_case_like_their_loop(tmp_path, standins, name):  # noqa: F811
    script = SCONE_SCRIPTS[name]

    def kind(payload):
        text = prompt_text(payload)
        if "Subject description" in text:
            return "DIS/red" if "red" in text else "DIS/blue"
        return "PF" if "Rate PF" in text else "SC"

    asked = Counter()

    def ask(k):
        asked[k] += 1
        return script[k][asked[k] - 1]

    expected = their_scone_case(ask, ["red", "blue"])
    expected_asked, seen = dict(asked), Counter()

    def reply(payload):
        k = kind(payload)
        seen[k] += 1
        return Reply(script[k][seen[k] - 1])

    case = {"key": "d1", "task_type": "distinction_single_cross", "instruction": "a red cat",
            "input_images": ["a.jpg"], "subject_list": [["red", "blue"]], "subject_label": [[1, 0]]}  # fmt: skip
    bench, res = make_bench(tmp_path, [case])
    with FakeJudgeServer(reply) as srv:
        code = run(sconeeval.main, bench, res, tmp_path / "out", srv,
                   "--protocol", "authors", "--authors_repo", str(standins["scone"]))  # fmt: skip
    assert dict(seen) == expected_asked  # the same requests, the same number of times
    rec = json.loads((tmp_path / "out" / "round0" / "scoring0" / "score.jsonl").read_text())
    if expected is None:
        assert code == 1 and "failed" in rec
    else:
        assert code == 0 and (rec["PF_score"], rec["SC_score"]) == (expected["PF"], expected["SC"])
        assert rec["DIS_pred"] == [expected["DIS"]]


@pytest.mark.parametrize("name", ["dis_unreadable_once", "never_readable"])
def test_batch_api_follows_scones_whole_case_tries(tmp_path, standins, monkeypatch, name):  # noqa: F811
    """Through the Batch API, a try with an unreadable reply is followed by a batch holding the whole case
    again (never the one request): the same requests and values as their loop where it asks every
    presence question of a failing try anyway (here the unreadable reply is the last one)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-batch")
    script, seen = SCONE_SCRIPTS[name], Counter()

    def reply(payload):
        text = prompt_text(payload)
        k = ("DIS/red" if "red" in text else "DIS/blue") if "Subject description" in text else (
            "PF" if "Rate PF" in text else "SC")  # fmt: skip
        seen[k] += 1
        return Reply(script[k][seen[k] - 1] if seen[k] <= len(script[k]) else "unreadable")

    asked = Counter()
    expected = their_scone_case(lambda k: (asked.update([k]), script[k][asked[k] - 1])[1], ["red", "blue"])
    case = {"key": "d1", "task_type": "distinction_single_cross", "instruction": "a red cat",
            "input_images": ["a.jpg"], "subject_list": [["red", "blue"]], "subject_label": [[1, 0]]}  # fmt: skip
    bench, res = make_bench(tmp_path, [case])
    authors = ("--protocol", "authors", "--authors_repo", str(standins["scone"]))
    with FakeJudgeServer(reply) as srv:
        codes = []
        for _ in range(5):
            codes.append(run(sconeeval.main, bench, res, tmp_path / "out", srv, "--batch_api", *authors))
            if codes[-1] != 3:
                break
            srv.finish_batches()
        assert not srv.bodies  # nothing was sent live (batch requests are answered by finish_batches)
    rec = json.loads((tmp_path / "out" / "round0" / "scoring0" / "score.jsonl").read_text())
    if expected is None:  # three tries of four requests, each with an unreadable PF: a failed case
        assert codes == [3, 3, 3, 1] and "failed" in rec and dict(seen) == {k: 3 for k in script}
    else:
        assert codes == [3, 3, 0] and dict(seen) == dict(asked)
        assert (rec["PF_score"], rec["SC_score"], rec["DIS_pred"]) == (
            expected["PF"],
            expected["SC"],
            [expected["DIS"]],
        )
