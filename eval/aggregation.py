"""Score aggregation for OmniContext and SconeEval (docs/evaluation.md), shared by every judge.

Input: per-case records, one list per (sampling round, judging pass) group:
    {"key", "task_type", "PF_score", "SC_score",
     "subject_label": nested 0/1 lists, "DIS_pred": same nesting   (distinction tasks only),
     "failed": "reason"                                           (judging/generation failed: excluded)}
Per case COM = sqrt(PF*SC); distinction cases add binary presence metrics (positive class 1, zero
division -> 0, all x10) and DIS_overall = round((acc + F1)/2, 3) as the benchmark authors do.
Per task type: means over non-failed cases. Average: unweighted mean over task types (DIS over the
distinction types). SconeEval Overall = (Average COM + Average DIS)/2. Across groups: mean and sample
std (ddof=1; 0 for a single group) of every number. A task type with no scored case gives None ("-"),
and None propagates to the averages: nothing is ever filled in with a default.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.judge.cache import atomic_write_text

DIS_METRICS = ("DIS_acc", "DIS_prec", "DIS_recall", "DIS_f1", "DIS_overall")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Task types in reporting order, which of them have DIS metrics, and short column labels."""

    name: str
    title: str
    task_types: tuple[str, ...]
    dis_task_types: tuple[str, ...]
    labels: tuple[str, ...]  # short label per task type, same order

    def label(self, task_type: str) -> str:
        return self.labels[self.task_types.index(task_type)]


OMNICONTEXT = BenchmarkSpec(
    name="omnicontext",
    title="OmniContext",
    task_types=(
        "single_character",
        "single_object",
        "multi_character",
        "multi_object",
        "multi_character_object",
        "scene_character",
        "scene_object",
        "scene_character_object",
    ),
    dis_task_types=(),
    labels=("S-Char", "S-Obj", "M-Char", "M-Obj", "M-Char+Obj", "Sc-Char", "Sc-Obj", "Sc-Char+Obj"),
)
SCONEEVAL = BenchmarkSpec(
    name="sconeeval",
    title="SconeEval",
    task_types=(
        "composition_single",
        "composition_multi",
        "distinction_single_cross",
        "distinction_single_intra",
        "distinction_multi_cross",
        "distinction_multi_intra",
    ),
    dis_task_types=(
        "distinction_single_cross",
        "distinction_single_intra",
        "distinction_multi_cross",
        "distinction_multi_intra",
    ),
    labels=("Comp-Single", "Comp-Multi", "Dist-Cross", "Dist-Intra", "D&C-Cross", "D&C-Intra"),
)
BENCHMARKS = {b.name: b for b in (OMNICONTEXT, SCONEEVAL)}


def get_benchmark(bench: BenchmarkSpec | str) -> BenchmarkSpec:
    if isinstance(bench, BenchmarkSpec):
        return bench
    if bench not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {bench!r}; expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[bench]


# ----------------------------------------------------------------------------- per case
def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def flatten_nested(x: object, what: str) -> list[int]:
    """[[1, 0], [1]] -> [1, 0, 1]; every leaf must be 0 or 1."""
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in flatten_nested(item, what)]
    if isinstance(x, bool) or x not in (0, 1):
        raise ValueError(f"{what}: leaf {x!r} is not 0 or 1")
    return [int(x)]


def _shape(x: object) -> object:
    return [_shape(i) for i in x] if isinstance(x, (list, tuple)) else None


def binary_metrics(labels: Sequence[int], preds: Sequence[int]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 for positive class 1, zero division -> 0, each x10."""
    if len(labels) != len(preds) or not labels:
        raise ValueError(f"need equal, non-zero lengths (labels {len(labels)}, predictions {len(preds)})")
    tp = sum(1 for g, p in zip(labels, preds) if g == 1 and p == 1)
    fp = sum(1 for g, p in zip(labels, preds) if g == 0 and p == 1)
    fn = sum(1 for g, p in zip(labels, preds) if g == 1 and p == 0)
    acc = sum(1 for g, p in zip(labels, preds) if g == p) / len(labels)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"DIS_acc": acc * 10, "DIS_prec": prec * 10, "DIS_recall": rec * 10, "DIS_f1": f1 * 10}


def _score(record: dict, name: str) -> float:
    v = record.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
        raise ValueError(
            f"case {record.get('task_type')}/{record.get('key')}: {name}={v!r} is not a score in [0, 10]"
        )
    return float(v)


def case_metrics(record: dict, with_dis: bool) -> dict[str, float]:
    """PF, SC, COM (= sqrt(PF*SC)) and, if `with_dis`, the DIS metrics of one non-failed record."""
    pf, sc = _score(record, "PF_score"), _score(record, "SC_score")
    out = {"PF": pf, "SC": sc, "COM": math.sqrt(pf * sc)}
    if with_dis:
        where = f"case {record.get('task_type')}/{record.get('key')}"
        if "subject_label" not in record or "DIS_pred" not in record:
            raise ValueError(f"{where}: distinction case needs subject_label and DIS_pred")
        if _shape(record["subject_label"]) != _shape(record["DIS_pred"]):
            raise ValueError(f"{where}: DIS_pred nesting differs from subject_label")
        m = binary_metrics(
            flatten_nested(record["subject_label"], f"{where} subject_label"),
            flatten_nested(record["DIS_pred"], f"{where} DIS_pred"),
        )
        m["DIS_overall"] = round((m["DIS_acc"] + m["DIS_f1"]) / 2, 3)  # rounded per case, as upstream
        out.update(m)
    return out


# ----------------------------------------------------------------------------- one group
def summarize_task_means(bench: BenchmarkSpec | str, tasks: Mapping[str, Mapping[str, float | None]]) -> dict:
    """Per-task means -> {"average": {...}, "leaderboard": {...}}.

    `tasks[task_type]` holds "PF", "SC", "COM" (and DIS_* for distinction types). Leaderboard keys:
    "<task>/COM", "<task>/DIS" (= DIS_overall), "avg_COM", "avg_DIS" (SconeEval), "overall".
    """
    bench = get_benchmark(bench)

    def avg(metric: str, over: Sequence[str]) -> float | None:
        vals = [tasks.get(t, {}).get(metric) for t in over]
        return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)

    average = {m: avg(m, bench.task_types) for m in ("PF", "SC", "COM")}
    board: dict[str, float | None] = {}
    for t in bench.task_types:
        board[f"{t}/COM"] = tasks.get(t, {}).get("COM")
        if t in bench.dis_task_types:
            board[f"{t}/DIS"] = tasks.get(t, {}).get("DIS_overall")
    board["avg_COM"] = average["COM"]
    if bench.dis_task_types:
        for m in DIS_METRICS:
            average[m] = avg(m, bench.dis_task_types)
        board["avg_DIS"] = average["DIS_overall"]
        both = (board["avg_COM"], board["avg_DIS"])
        board["overall"] = None if None in both else (both[0] + both[1]) / 2
    else:
        board["overall"] = average["COM"]
    return {"average": average, "leaderboard": board}


def aggregate_group(records: Sequence[dict], bench: BenchmarkSpec | str) -> dict:
    """Table of one (round, scoring) group.

    Returns {"tasks": {task: {"n", "failed", "PF", "SC", "COM", [DIS_*]}}, "average", "leaderboard",
    "n" (scored cases), "failed" (count), "failures": [{"key", "task_type", "reason"}]}.
    """
    bench = get_benchmark(bench)
    per_task: dict[str, list[dict]] = {t: [] for t in bench.task_types}
    failed_count = {t: 0 for t in bench.task_types}
    failures, seen = [], set()
    for r in records:
        t, key = r.get("task_type"), r.get("key")
        if t not in per_task:
            raise ValueError(f"case {key!r}: task_type {t!r} is not a {bench.title} task type")
        if (t, key) in seen:
            raise ValueError(f"case {t}/{key}: appears twice in one group")
        seen.add((t, key))
        if r.get("failed"):
            failed_count[t] += 1
            failures.append({"key": key, "task_type": t, "reason": str(r["failed"])})
            continue
        per_task[t].append(case_metrics(r, with_dis=t in bench.dis_task_types))
    tasks = {}
    for t in bench.task_types:
        metrics = ("PF", "SC", "COM") + (DIS_METRICS if t in bench.dis_task_types else ())
        rows = per_task[t]
        tasks[t] = {"n": len(rows), "failed": failed_count[t]}
        tasks[t].update({m: _mean([row[m] for row in rows]) for m in metrics})
    out = {"tasks": tasks, **summarize_task_means(bench, tasks)}
    out.update(n=sum(v["n"] for v in tasks.values()), failed=len(failures), failures=failures)
    return out


# ----------------------------------------------------------------------------- across groups
def _numbers(table: dict) -> dict[str, float | None]:
    """Flatten the numeric cells of a group table to {"tasks.<t>.<m>" | "average.<m>" | "leaderboard.<k>"}."""
    flat = {}
    for t, row in table["tasks"].items():
        for m, v in row.items():
            if m not in ("n", "failed"):
                flat[f"tasks.{t}.{m}"] = v
    flat.update({f"average.{m}": v for m, v in table["average"].items()})
    flat.update({f"leaderboard.{k}": v for k, v in table["leaderboard"].items()})
    return flat


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    if not values or any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(groups: Mapping[tuple[int, int], Sequence[dict]], bench: BenchmarkSpec | str) -> dict:
    """Tables for every (round, scoring) group and their mean/std.

    Returns {"benchmark", "n_groups", "groups": [{"round", "scoring", **aggregate_group(...)}],
    "mean": {path: value}, "std": {path: value}, "cases": {"scored", "failed"} (summed over groups),
    "task_counts": {task: {"n", "failed"}} (summed)} where path is as in `_numbers`.
    """
    bench = get_benchmark(bench)
    if not groups:
        raise ValueError("no result groups to aggregate")
    tables = []
    for (rnd, scoring), records in sorted(groups.items()):
        tables.append({"round": int(rnd), "scoring": int(scoring), **aggregate_group(records, bench)})
    flats = [_numbers(t) for t in tables]
    mean, std = {}, {}
    for path in flats[0]:
        mean[path], std[path] = _mean_std([f[path] for f in flats])
    counts = {
        t: {
            "n": sum(tb["tasks"][t]["n"] for tb in tables),
            "failed": sum(tb["tasks"][t]["failed"] for tb in tables),
        }
        for t in bench.task_types
    }
    return {
        "benchmark": bench.name,
        "n_groups": len(tables),
        "groups": tables,
        "mean": mean,
        "std": std,
        "cases": {"scored": sum(tb["n"] for tb in tables), "failed": sum(tb["failed"] for tb in tables)},
        "task_counts": counts,
    }


# ----------------------------------------------------------------------------- rendering
def _fmt(mean: float | None, std: float | None, n_groups: int, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if n_groups < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def render_markdown(result: dict, method: str = "Scone", digits: int = 2) -> str:
    """Leaderboard row shaped like the Scone README table, then the per-task detail table."""
    bench = get_benchmark(result["benchmark"])
    mean, std, g = result["mean"], result["std"], result["n_groups"]

    def cell(path: str, d: int = digits) -> str:
        return _fmt(mean.get(path), std.get(path), g, d)

    head, row = ["Method"], [method]
    for t in bench.task_types:
        lab = bench.label(t)
        head.append(f"{lab} COM" if bench.dis_task_types else lab)
        row.append(cell(f"leaderboard.{t}/COM"))
        if t in bench.dis_task_types:
            head.append(f"{lab} DIS")
            row.append(cell(f"leaderboard.{t}/DIS"))
    if bench.dis_task_types:
        head += ["Avg COM", "Avg DIS", "Overall"]
        row += [cell("leaderboard.avg_COM"), cell("leaderboard.avg_DIS"), cell("leaderboard.overall")]
    else:
        head.append("Average")
        row.append(cell("leaderboard.overall"))
    head.append("failed")
    row.append(f"{result['cases']['failed']}/{result['cases']['scored'] + result['cases']['failed']}")
    lines = [f"## {bench.title}", "", _md_row(head), _md_row(["---"] * len(head)), _md_row(row), ""]

    metrics = ["PF", "SC", "COM" if bench.dis_task_types else "Overall"]
    dis = list(DIS_METRICS) if bench.dis_task_types else []
    head = ["Task", "n", "failed", *metrics, *[m.replace("DIS_", "DIS ") for m in dis]]
    lines += [_md_row(head), _md_row(["---"] * len(head))]
    for t in bench.task_types:
        c = result["task_counts"][t]
        cells = [t, str(c["n"]), str(c["failed"])] + [cell(f"tasks.{t}.{m}", 3) for m in ("PF", "SC", "COM")]
        cells += [cell(f"tasks.{t}.{m}", 3) if t in bench.dis_task_types else "" for m in dis]
        lines.append(_md_row(cells))
    avg = ["Average", "", ""] + [cell(f"average.{m}", 3) for m in ("PF", "SC", "COM", *dis)]
    lines.append(_md_row(avg))
    groups = sorted({(tb["round"], tb["scoring"]) for tb in result["groups"]})
    n_rounds, n_scorings = len({r for r, _ in groups}), len({s for _, s in groups})
    scored, failed = result["cases"]["scored"], result["cases"]["failed"]
    lines += [
        "",
        f"Scored {scored} of {scored + failed} cases ({g} group(s) = {n_rounds} sampling round(s) x "
        f"{n_scorings} judging pass(es)); the {failed} failed are excluded from the means (reasons in "
        "scores.json)." + (" Values are mean ± sample std across groups." if g > 1 else ""),
    ]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_csv(result: dict) -> str:
    """Long format: scope (group|mean|std), round, scoring, path, value (empty = not available)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scope", "round", "scoring", "metric", "value"])
    for tb in result["groups"]:
        for path, v in _numbers(tb).items():
            w.writerow(["group", tb["round"], tb["scoring"], path, "" if v is None else repr(v)])
        w.writerow(["group", tb["round"], tb["scoring"], "cases.failed", tb["failed"]])
    for scope in ("mean", "std"):
        for path, v in result[scope].items():
            w.writerow([scope, "", "", path, "" if v is None else repr(v)])
    return buf.getvalue()


def write_outputs(
    result: dict,
    out_dir: str | os.PathLike,
    method: str = "Scone",
    extra: dict | None = None,
    extra_markdown: str = "",
) -> str:
    """Write scores.json (result + `extra`), scores.csv and scores.md (the tables + `extra_markdown`, e.g. a
    judge's own diagnostics) into `out_dir`; return the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(result, method=method) + extra_markdown
    payload = {"method": method, **result, **(extra or {})}
    atomic_write_text(out / "scores.json", json.dumps(payload, indent=2, ensure_ascii=False))
    atomic_write_text(out / "scores.csv", render_csv(result))
    atomic_write_text(out / "scores.md", md)
    return md
