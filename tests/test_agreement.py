"""eval.agreement: two judges' scores of the same generations compared (planted relationships are recovered;
two passes of one deterministic judge through the real scoring CLI agree exactly)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from eval import agreement, sconeeval
from eval.agreement import compare, kendall_tau_b, load_judged, main, model_ranking, spearman
from tests.fake_judge_server import FakeJudgeServer, Reply, image_urls, prompt_text
from tests.test_scoring_cli import SCONE_CASES, api_key, cli_args, make_bench  # noqa: F401 - fixture

TASKS = ("composition_single", "composition_multi")


def write_folder(path, pf: np.ndarray, sc: np.ndarray, failed: set[int] = frozenset()):
    """A judged folder in the scoring CLI's layout: one round, one pass, case i of task i % 2."""
    f = path / "round0" / "scoring0" / "score.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (p, s) in enumerate(zip(pf, sc)):
        rec = {"key": f"k{i}", "task_type": TASKS[i % 2]}
        rec.update({"failed": "judge error"} if i in failed else {"PF_score": float(p), "SC_score": float(s)})
        lines.append(json.dumps(rec))
    f.write_text("\n".join(lines) + "\n")
    return path


def test_statistics_against_definitions():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert kendall_tau_b(x, x) == 1.0 and kendall_tau_b(x, -x) == -1.0
    # one swapped pair of 10: tau = (10 - 2) / 10
    assert kendall_tau_b(x, np.array([2.0, 1.0, 3.0, 4.0, 5.0])) == pytest.approx(0.8)
    assert spearman(x, x**3) == pytest.approx(1.0)  # monotone, not linear
    assert kendall_tau_b(x, np.ones(5)) is None  # constant: undefined, not 0


def test_planted_offset_and_noise_are_recovered(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    pf = rng.uniform(2, 8, n)
    sc = rng.uniform(3, 7, n)
    a = load_judged(write_folder(tmp_path / "a", pf, sc, failed={3}))
    b = load_judged(write_folder(tmp_path / "b", pf + 1.0, sc + rng.normal(0.5, 0.5, n)))
    r = compare(a, b)
    assert r["paired_cases"] == n - 1 and r["failed_a"] == 1 and r["failed_b"] == 0
    pf_r, sc_r = r["metrics"]["PF"], r["metrics"]["SC"]
    assert pf_r["pearson"] == pytest.approx(1.0) and pf_r["mean_diff"] == pytest.approx(1.0)
    assert pf_r["mean_diff_ci95"] == pytest.approx([1.0, 1.0])
    # sc ~ U(3, 7): var 4/3; noise var 1/4 -> planted correlation sqrt((4/3) / (4/3 + 1/4)) = 0.918
    assert sc_r["pearson"] == pytest.approx(0.918, abs=0.03)
    lo, hi = sc_r["mean_diff_ci95"]
    assert lo < 0.5 < hi and hi - lo < 0.15
    assert set(r["by_task"]) == set(TASKS)


def test_models_ranked_the_same_or_reversed(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 2, 60)
    same, reversed_ = [], []
    for m, level in enumerate((4.0, 5.0, 6.0)):
        a = load_judged(write_folder(tmp_path / f"a{m}", base + level, base + level))
        b = load_judged(write_folder(tmp_path / f"b{m}", base + level + 0.7, base + level))
        c = load_judged(write_folder(tmp_path / f"c{m}", base + 10 - level, base + level))
        same.append((a, b))
        reversed_.append((a, c))
    r = model_ranking(same)
    assert r["PF"]["kendall_tau_b"] == 1.0 and r["PF"]["same_order"]
    r = model_ranking(reversed_)
    assert r["PF"]["kendall_tau_b"] == -1.0 and not r["PF"]["same_order"]
    assert r["SC"]["kendall_tau_b"] == 1.0


def varied_judge(payload):
    """Deterministic, and different per image: the score is a hash of the request's images."""
    text = prompt_text(payload)
    h = int(hashlib.sha256("".join(image_urls(payload)).encode()).hexdigest(), 16)
    if "PROMPT FOLLOWING" in text or "SUBJECT" in text:
        return Reply(json.dumps({"score": h % 11, "reasoning": "r"}))
    return Reply(str(h % 2))


def test_two_passes_of_one_deterministic_judge_agree_exactly(tmp_path, api_key, capsys):  # noqa: F811
    bench, res = make_bench(tmp_path, SCONE_CASES, missing=())
    first, second = tmp_path / "first", tmp_path / "second"
    with FakeJudgeServer(varied_judge) as srv:
        for out in (first, second):  # separate caches: the second pass really asks again
            assert sconeeval.main(cli_args(bench, res, out, srv.base_url)) in (0, 1)
    code = main([str(first), str(second), "--output", str(tmp_path / "agree.json")])
    assert code == 0
    r = json.loads((tmp_path / "agree.json").read_text())
    assert r["paired_cases"] > 5
    for m in ("PF", "SC", "COM", "DIS_overall"):
        fig = r["metrics"][m]
        assert fig["identical"] == 1.0 and fig["mean_diff"] == 0.0, m
        assert fig["pearson"] in (None, pytest.approx(1.0))
    assert r["metrics"]["PF"]["pearson"] == pytest.approx(1.0)
    assert "| PF |" in capsys.readouterr().out


def test_folders_without_common_cases_or_records_are_errors(tmp_path):
    a = write_folder(tmp_path / "a", np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    (tmp_path / "empty").mkdir()
    assert main([str(a), str(tmp_path / "empty")]) == 2
    b = tmp_path / "b" / "round0" / "scoring0"
    b.mkdir(parents=True)
    (b / "score.jsonl").write_text(
        '{"key": "other", "task_type": "composition_single", "PF_score": 1, "SC_score": 1}\n'
    )
    assert main([str(a), str(tmp_path / "b")]) == 2
    (b / "score.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="score.jsonl:1"):
        agreement.load_judged(tmp_path / "b")
