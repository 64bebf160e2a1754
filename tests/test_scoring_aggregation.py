"""Aggregation: hand-computed tables for synthetic records, DIS zero-division cases, the published row."""

import csv
import io
import json
import math

import pytest

from eval.aggregation import (
    OMNICONTEXT,
    SCONEEVAL,
    aggregate,
    aggregate_group,
    binary_metrics,
    case_metrics,
    render_csv,
    render_markdown,
    summarize_task_means,
    write_outputs,
)

approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-12)  # noqa: E731


def rec(key, task, pf, sc, labels=None, preds=None, failed=None):
    r = {"key": key, "task_type": task, "PF_score": pf, "SC_score": sc}
    if labels is not None:
        r["subject_label"], r["DIS_pred"] = labels, preds
    if failed:
        r = {"key": key, "task_type": task, "failed": failed}
    return r


def sconeeval_group():
    return [
        rec("k1", "composition_single", 9, 4),  # COM 6
        rec("k2", "composition_single", 4, 1),  # COM 2
        rec("k3", "composition_multi", 8, 8),
        rec("k4", "composition_multi", None, None, failed="PF: unparseable reply"),
        rec("k5", "distinction_single_cross", 1, 9, [[1, 0]], [[1, 0]]),  # perfect
        rec("k6", "distinction_single_cross", 9, 9, [[0, 0]], [[0, 0]]),  # all negative: prec=rec=f1=0
        rec("k7", "distinction_single_intra", 4, 9, [[1, 0, 0]], [[0, 1, 0]]),  # tp 0, fp 1, fn 1
        rec("k8", "distinction_multi_cross", 2, 8, [[1], [1, 0]], [[1], [1, 1]]),  # tp 2, fp 1
        rec("k9", "distinction_multi_intra", 0, 10, [[1, 1]], [[1, 0]]),  # tp 1, fn 1
    ]


def test_binary_metrics_zero_division():
    assert binary_metrics([0, 0], [0, 0]) == {
        "DIS_acc": 10.0,
        "DIS_prec": 0.0,
        "DIS_recall": 0.0,
        "DIS_f1": 0.0,
    }
    assert binary_metrics([1, 0], [0, 0]) == {
        "DIS_acc": 5.0,
        "DIS_prec": 0.0,
        "DIS_recall": 0.0,
        "DIS_f1": 0.0,
    }
    assert binary_metrics([0, 0], [1, 0]) == {
        "DIS_acc": 5.0,
        "DIS_prec": 0.0,
        "DIS_recall": 0.0,
        "DIS_f1": 0.0,
    }
    m = binary_metrics([1, 1, 0, 1], [1, 0, 1, 1])  # tp 2, fp 1, fn 1
    assert m == {
        "DIS_acc": approx(5.0),
        "DIS_prec": approx(20 / 3),
        "DIS_recall": approx(20 / 3),
        "DIS_f1": approx(20 / 3),
    }
    with pytest.raises(ValueError):
        binary_metrics([1], [1, 0])


def test_case_metrics_validation():
    m = case_metrics(rec("a", "distinction_single_cross", 9, 4, [[0, 0]], [[0, 0]]), with_dis=True)
    assert m["COM"] == 6.0 and m["DIS_overall"] == 5.0  # upstream's all-negative quirk, kept
    with pytest.raises(ValueError, match="nesting"):
        case_metrics(rec("a", "distinction_single_cross", 1, 1, [[1, 0]], [[1], [0]]), with_dis=True)
    with pytest.raises(ValueError, match="PF_score"):
        case_metrics(rec("a", "composition_single", 11, 1), with_dis=False)
    with pytest.raises(ValueError, match="0 or 1"):
        case_metrics(rec("a", "distinction_single_cross", 1, 1, [[1, 2]], [[1, 0]]), with_dis=True)
    with pytest.raises(ValueError, match="needs subject_label"):
        case_metrics(rec("a", "distinction_single_cross", 1, 1), with_dis=True)


def test_sconeeval_group_hand_computed():
    t = aggregate_group(sconeeval_group(), SCONEEVAL)
    tasks = t["tasks"]
    assert tasks["composition_single"] == {"n": 2, "failed": 0, "PF": 6.5, "SC": 2.5, "COM": 4.0}
    assert tasks["composition_multi"] == {"n": 1, "failed": 1, "PF": 8.0, "SC": 8.0, "COM": 8.0}
    dc = tasks["distinction_single_cross"]
    assert (dc["PF"], dc["SC"], dc["COM"]) == (5.0, 9.0, 6.0)
    assert (dc["DIS_acc"], dc["DIS_prec"], dc["DIS_recall"], dc["DIS_f1"], dc["DIS_overall"]) == (
        10,
        5,
        5,
        5,
        7.5,
    )
    di = tasks["distinction_single_intra"]
    assert (
        di["DIS_acc"] == approx(10 / 3) and di["DIS_f1"] == 0 and di["DIS_overall"] == 1.667
    )  # rounded per case
    dcc = tasks["distinction_multi_cross"]
    assert (dcc["DIS_acc"], dcc["DIS_prec"], dcc["DIS_recall"], dcc["DIS_f1"]) == (
        approx(20 / 3),
        approx(20 / 3),
        10.0,
        approx(8.0),
    )
    assert dcc["DIS_overall"] == 7.333
    dci = tasks["distinction_multi_intra"]
    assert (dci["COM"], dci["DIS_prec"], dci["DIS_recall"], dci["DIS_overall"]) == (0.0, 10.0, 5.0, 5.833)
    avg = t["average"]
    assert avg["PF"] == approx(25.5 / 6) and avg["SC"] == approx(46.5 / 6) and avg["COM"] == approx(28 / 6)
    assert avg["DIS_acc"] == approx(25 / 4) and avg["DIS_recall"] == approx(5.0)
    avg_dis = (7.5 + 1.667 + 7.333 + 5.833) / 4
    board = t["leaderboard"]
    assert board["avg_COM"] == approx(28 / 6) and board["avg_DIS"] == approx(avg_dis)
    assert board["overall"] == approx((28 / 6 + avg_dis) / 2)
    assert board["distinction_multi_cross/DIS"] == 7.333 and "composition_single/DIS" not in board
    assert (t["n"], t["failed"]) == (8, 1)
    assert t["failures"] == [
        {"key": "k4", "task_type": "composition_multi", "reason": "PF: unparseable reply"}
    ]


def test_task_with_only_failures_gives_no_numbers():
    recs = [r for r in sconeeval_group() if r["task_type"] != "composition_single"]
    recs.append(rec("k1", "composition_single", None, None, failed="missing output image"))
    t = aggregate_group(recs, SCONEEVAL)
    assert t["tasks"]["composition_single"]["COM"] is None
    assert t["leaderboard"]["avg_COM"] is None and t["leaderboard"]["overall"] is None
    assert t["leaderboard"]["avg_DIS"] is not None
    md = render_markdown(aggregate({(0, 0): recs}, SCONEEVAL))
    assert "| - |" in md and "2/8" in md  # failed / total shown in the leaderboard row


def test_bad_groups_raise():
    with pytest.raises(ValueError, match="not a SconeEval task type"):
        aggregate_group([rec("x", "single_character", 1, 1)], SCONEEVAL)
    with pytest.raises(ValueError, match="twice"):
        aggregate_group([rec("x", "composition_single", 1, 1)] * 2, SCONEEVAL)


def omni_group(v):
    return [rec(f"{t}-{i}", t, v, v) for t in OMNICONTEXT.task_types for i in range(2)]


def test_omnicontext_rounds_and_scorings_mean_std():
    recs = omni_group(4.0)
    recs[0] = rec(recs[0]["key"], "single_character", 9, 1)  # overall 3, PF 9, SC 1
    groups = {(0, 0): recs, (0, 1): omni_group(6.0), (1, 0): omni_group(8.0)}
    res = aggregate(groups, "omnicontext")
    assert res["n_groups"] == 3
    g0 = res["groups"][0]
    assert g0["tasks"]["single_character"] == {"n": 2, "failed": 0, "PF": 6.5, "SC": 2.5, "COM": 3.5}
    g0_overall = (3.5 + 4 * 7) / 8
    assert g0["leaderboard"]["overall"] == approx(g0_overall) and g0["average"]["PF"] == approx(
        (6.5 + 28) / 8
    )
    vals = [g0_overall, 6.0, 8.0]
    mean = sum(vals) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert res["mean"]["leaderboard.overall"] == approx(mean)
    assert res["std"]["leaderboard.overall"] == approx(std)
    assert res["mean"]["tasks.single_object.COM"] == approx(6.0)
    assert res["std"]["tasks.single_object.COM"] == approx(2.0)
    md = render_markdown(res, method="Tiny")
    assert (
        f"| Tiny | {(3.5 + 6 + 8) / 3:.2f} ± " in md
        and "3 group(s) = 2 sampling round(s) x 2 judging pass(es)" in md
    )
    single = aggregate({(0, 0): omni_group(5.0)}, OMNICONTEXT)
    assert single["std"]["leaderboard.overall"] == 0.0 and "±" not in render_markdown(single)


def test_csv_and_json_outputs(tmp_path):
    res = aggregate({(0, 0): sconeeval_group(), (0, 1): sconeeval_group()}, SCONEEVAL)
    rows = list(csv.DictReader(io.StringIO(render_csv(res))))
    mean_overall = [r for r in rows if r["scope"] == "mean" and r["metric"] == "leaderboard.overall"]
    assert float(mean_overall[0]["value"]) == approx(res["mean"]["leaderboard.overall"])
    failed = [r for r in rows if r["metric"] == "cases.failed"]
    assert [r["value"] for r in failed] == ["1", "1"]
    md = write_outputs(res, tmp_path, method="X", extra={"judge": {"model": "m"}})
    data = json.loads((tmp_path / "scores.json").read_text())
    assert (
        data["method"] == "X"
        and data["judge"] == {"model": "m"}
        and data["cases"] == {"scored": 16, "failed": 2}
    )
    assert (tmp_path / "scores.md").read_text() == md and (tmp_path / "scores.csv").is_file()
    head = md.splitlines()[2]
    assert head.startswith("| Method | Comp-Single COM | Comp-Multi COM | Dist-Cross COM | Dist-Cross DIS |")
    assert head.endswith("| Avg COM | Avg DIS | Overall | failed |")


# Published SconeEval leaderboard (Scone README, docs/evaluation.md): per-task COM/DIS -> Avg/Overall
PUBLISHED = {
    # method: (C-S, C-M, DC COM, DC DIS, DI COM, DI DIS, DCC COM, DCC DIS, DCI COM, DCI DIS, avgCOM, avgDIS, overall)
    "Scone": (8.52, 7.40, 8.98, 9.73, 7.97, 7.74, 8.20, 9.25, 8.21, 8.44, 8.21, 8.79, 8.50),
    "Gemini-2.5-Flash-Image": (8.87, 7.94, 9.12, 9.15, 9.00, 8.50, 8.27, 8.87, 8.17, 8.85, 8.56, 8.84, 8.70),
    "BAGEL": (7.14, 5.55, 7.49, 7.95, 6.93, 6.21, 6.44, 7.38, 6.87, 7.27, 6.74, 7.20, 6.97),
    "Echo-4o": (8.58, 7.73, 8.36, 8.33, 7.74, 7.18, 7.87, 8.72, 8.01, 8.33, 8.05, 8.14, 8.09),
}


def _task_means(row):
    cs, cm, dc, dcd, di, did, dcc, dccd, dci, dcid = row[:10]
    t = SCONEEVAL.task_types
    return {
        t[0]: {"COM": cs},
        t[1]: {"COM": cm},
        t[2]: {"COM": dc, "DIS_overall": dcd},
        t[3]: {"COM": di, "DIS_overall": did},
        t[4]: {"COM": dcc, "DIS_overall": dccd},
        t[5]: {"COM": dci, "DIS_overall": dcid},
    }


def test_published_scone_row_reproduced():
    row = PUBLISHED["Scone"]
    board = summarize_task_means("sconeeval", _task_means(row))["leaderboard"]
    assert f"{board['avg_COM']:.2f}" == "8.21" and f"{board['avg_DIS']:.2f}" == "8.79"
    assert f"{board['overall']:.2f}" == "8.50"
    assert board["avg_COM"] == approx(49.28 / 6) and board["avg_DIS"] == approx(35.16 / 4)


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_published_rows_within_rounding(method):
    row = PUBLISHED[method]
    board = summarize_task_means(SCONEEVAL, _task_means(row))["leaderboard"]
    for got, want in zip((board["avg_COM"], board["avg_DIS"], board["overall"]), row[10:]):
        assert abs(got - want) <= 0.005 + 1e-9
