"""PSRBench report: per-subset and overall table of subject consistency, semantic alignment (VLM,
0-10), position alignment (geometric, 0-1) and aesthetics (HPSv3), with every failure, fallback and
skip counted. Written as summary.json, summary.md, summary.csv next to per_case.jsonl.

Per-case records (dicts) produced by evaluate.py carry: uid, subset, id, error (case-level, e.g. no
generated image), sc / position / semantic (result dicts or None), sc_error, position_error,
aesthetics, aesthetics_error.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

from data.psrbench_cases import SUBSETS
from eval.judge.provenance import provenance_markdown


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def subset_stats(records: list[dict], skipped: dict[str, str]) -> dict:
    """Aggregate the per-case records of one subset (or of all subsets for counts)."""
    s: dict = {"n_cases": len(records), "n_missing_output": sum(1 for r in records if r.get("error"))}

    sc = [r["sc"] for r in records if r.get("sc")]
    kinds: Counter = Counter()
    for x in sc:
        kinds.update(c["fallback"] for c in x["crops"] if c["fallback"])
    s.update(
        sc=_mean([x["score"] for x in sc]),
        sc_n=len(sc),
        sc_failed=sum(1 for r in records if r.get("sc_error")),
        sc_crops=sum(len(x["crops"]) for x in sc),
        sc_fallback_crops=sum(kinds.values()),
        sc_fallback_cases=sum(1 for x in sc if any(c["fallback"] for c in x["crops"])),
        sc_fallback_kinds=dict(sorted(kinds.items())),
    )

    sem = [r["semantic"] for r in records if r.get("semantic")]
    sem_scored = [x["score"] for x in sem if x["status"] in ("scored", "defaulted")]
    s.update(
        semantic=_mean(sem_scored),
        semantic_n=sum(1 for x in sem if x["status"] == "scored"),
        semantic_failed=sum(1 for x in sem if x["status"] == "failed"),
        semantic_defaulted=sum(1 for x in sem if x["status"] == "defaulted"),
    )

    pos = [r["position"] for r in records if r.get("position")]
    status = Counter(x["status"] for x in pos)
    words: Counter = Counter()
    for x in pos:
        words.update(x["unknown_words"])
    s.update(
        # protocol value: missing subject / zero union score 0; no-relation cases have no score
        position=_mean([x["score"] for x in pos if x["score"] is not None]),
        position_detected=_mean([x["score"] for x in pos if x["status"] == "scored"]),
        position_n=sum(1 for x in pos if x["score"] is not None),
        position_missing_subject=status["missing_subject"],
        position_zero_union=status["zero_union"],
        position_no_relation=status["no_relation"],
        position_failed=sum(1 for r in records if r.get("position_error")),
        position_unknown_words=dict(sorted(words.items())),
    )

    aes = [r["aesthetics"] for r in records if r.get("aesthetics") is not None]
    s.update(
        aesthetics=_mean(aes),
        aesthetics_n=len(aes),
        aesthetics_failed=sum(1 for r in records if r.get("aesthetics_error")),
    )
    s["skipped"] = dict(skipped)
    return s


def summarize(records: list[dict], meta: dict, skipped: dict[str, str] | None = None) -> dict:
    """-> {"meta", "subsets": {name: stats}, "overall": stats}. Overall means are unweighted means of
    the subset means (each subset has 50 cases in the release); counts are summed."""
    skipped = dict(skipped or {})
    present = [s for s in SUBSETS if any(r["subset"] == s for r in records)]
    per = {s: subset_stats([r for r in records if r["subset"] == s], skipped) for s in present}
    overall = subset_stats(records, skipped)
    for metric in ("sc", "semantic", "position", "position_detected", "aesthetics"):
        overall[metric] = _mean([per[s][metric] for s in present if per[s][metric] is not None])
    overall["mean_over"] = "unweighted mean of subset means"
    return {"meta": meta, "subsets": per, "overall": overall}


def _fmt(x: float | None, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _metric_cell(stats: dict, metric: str, nd: int) -> str:
    if metric in stats["skipped"]:
        return "skipped"
    return _fmt(stats[metric], nd)


def to_markdown(summary: dict) -> str:
    meta = summary["meta"]
    lines = ["# PSRBench results", ""]
    cov = meta.get("coverage")
    if cov:
        lines += [f"Scored {cov['scored_cases']} of the benchmark's {cov['benchmark_cases']} cases."]
        bad = {k: len(cov.get(k, [])) for k in ("missing", "extra", "edited", "malformed") if cov.get(k)}
        if bad:
            lines += [
                "**Results files do not match the benchmark:** "
                + ", ".join(f"{n} {k}" for k, n in bad.items())
                + " (listed in summary.json, meta.coverage)."
            ]
        lines += [""]
    if meta.get("protocol") == "authors":
        lines += [
            "**AUTHORS' PROTOCOL** (the PSR scripts' scoring): judge replies without a score count 5 "
            "(column 'sem. default 5'); non-RGB images are not detected; unclamped crops; box 0 for "
            "repeated categories but the 2-subject rule; case-sensitive relation phrases.",
            "",
        ]
    head = (
        "| subset | cases | no output | SC | SC fallback crops | semantic (0-10) | sem. failed | "
        "sem. default 5 | position (0-1) | pos. missing subj. | pos. no relation | aesthetics | aes. failed |"
    )
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    rows = list(summary["subsets"].items()) + [("Overall", summary["overall"])]
    for name, s in rows:
        is_pos = name == "Position"
        lines.append(
            f"| {name} | {s['n_cases']} | {s['n_missing_output']} | {_metric_cell(s, 'sc', 4)} | "
            f"{s['sc_fallback_crops']}/{s['sc_crops']} | "
            f"{'n/a' if is_pos else _metric_cell(s, 'semantic', 2)} | {s['semantic_failed']} | "
            f"{s['semantic_defaulted']} | "
            f"{_metric_cell(s, 'position', 4) if is_pos or name == 'Overall' else 'n/a'} | "
            f"{s['position_missing_subject']} | {s['position_no_relation']} | "
            f"{_metric_cell(s, 'aesthetics', 3)} | {s['aesthetics_failed']} |"
        )
    o = summary["overall"]
    lines.append("")
    for metric, reason in o["skipped"].items():
        lines.append(f"- {metric}: skipped: {reason}")
    if o["sc_fallback_kinds"]:
        lines.append(f"- SC crops that fell back to the whole image, by reason: {o['sc_fallback_kinds']}")
    if o["sc_failed"] or o["position_failed"]:
        lines.append(
            f"- cases that could not be scored: SC {o['sc_failed']}, position {o['position_failed']}"
        )
    if o["position_unknown_words"]:
        lines.append(
            f"- position cases without a known relation phrase; spatial words found: {o['position_unknown_words']}"
        )
    if o["position_zero_union"]:
        lines.append(f"- position cases with zero box union (scored 0): {o['position_zero_union']}")
    if o["position_detected"] is not None:
        lines.append(
            f"- position mean over cases where both subjects were detected: {o['position_detected']:.4f}"
        )
    for k in ("detector", "feature_model", "judge_model", "judge_base_url", "box_rule"):
        if meta.get(k) is not None:
            lines.append(f"- {k}: {meta[k]}")
    if meta.get("judge"):
        lines.append(provenance_markdown(meta["judge"]).strip())
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "subset n_cases n_missing_output sc sc_n sc_failed sc_crops sc_fallback_crops sc_fallback_cases "
    "semantic semantic_n semantic_failed semantic_defaulted position position_detected position_n "
    "position_missing_subject position_zero_union position_no_relation position_failed aesthetics "
    "aesthetics_n aesthetics_failed"
).split()


def to_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    rows = list(summary["subsets"].items()) + [("Overall", summary["overall"])]
    for name, s in rows:
        w.writerow([name] + ["" if s.get(f) is None else s[f] for f in CSV_FIELDS[1:]])
    return buf.getvalue()


def write_report(summary: dict, records: list[dict], save_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_case": out / "per_case.jsonl",
        "json": out / "summary.json",
        "markdown": out / "summary.md",
        "csv": out / "summary.csv",
    }
    paths["per_case"].write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    paths["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(summary), encoding="utf-8")
    paths["csv"].write_text(to_csv(summary), encoding="utf-8")
    return paths
