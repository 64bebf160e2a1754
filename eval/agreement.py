"""How far two judges agree on the same generations: ``python -m eval.agreement A B``.

``A`` and ``B`` are judged result folders of one set of generated images (``--output_dir`` of
``eval.sconeeval`` / ``eval.omnicontext`` / ``eval.shapeworld``: ``round{r}/scoring{s}/score.jsonl``), for
example GPT-4.1's and a local Qwen2.5-VL's, or two passes of one judge. Cases are paired by (round, task
type, key); a case's metric is its mean over the folder's judging passes; failed judgements are left out
and counted. Per metric (PF, SC, COM and, on distinction cases, DIS_overall): Pearson, Spearman and Kendall
τ-b over the paired cases, the mean difference B − A with a bootstrap 95% interval, and a table per task
type. With ``--pair A2 B2`` (repeatable) for more models, it also says whether the two judges rank the
models the same: Kendall τ over the models' mean scores.

A score is only comparable to another made by the same judge; this is how to calibrate one judge against
results another has already judged (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.aggregation import case_metrics

log = logging.getLogger("eval.agreement")
METRICS = ("PF", "SC", "COM", "DIS_overall")
CaseKey = tuple[int, str, str]  # (round, task_type, key)


@dataclass
class JudgedFolder:
    """Per-case metrics of one judged result folder, averaged over its judging passes."""

    path: Path
    cases: dict[CaseKey, dict[str, float]]
    failed: int
    judge: dict  # scores.json's "judge" record, when there is one

    @property
    def label(self) -> str:
        served = self.judge.get("served_models") or {}
        name = self.judge.get("model", "?")
        return f"{self.path} ({name}{' -> ' + ', '.join(served) if served else ''})"


def load_judged(folder: str | Path) -> JudgedFolder:
    """Read ``folder/round*/scoring*/score.jsonl``. ValueError when there is none or a line is broken."""
    folder = Path(folder)
    files = sorted(folder.glob("round*/scoring*/score.jsonl"))
    if not files:
        raise ValueError(f"{folder}: no round*/scoring*/score.jsonl (a judged result folder is expected)")
    sums: dict[CaseKey, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    failed = 0
    for f in files:
        rnd = int(f.parent.parent.name.removeprefix("round"))
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (rnd, rec["task_type"], str(rec["key"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{f}:{n}: not a judged case record ({e})") from None
            if rec.get("failed"):
                failed += 1
                continue
            for name, value in case_metrics(rec, "DIS_pred" in rec).items():
                if name in METRICS:
                    sums[key][name].append(value)
    cases = {k: {m: sum(v) / len(v) for m, v in per.items()} for k, per in sums.items()}
    judge = {}
    scores = folder / "scores.json"
    if scores.is_file():
        judge = json.loads(scores.read_text(encoding="utf-8")).get("judge", {}) or {}
    return JudgedFolder(folder, cases, failed, judge)


# ------------------------------------------------------------------------------------------ statistics
def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """None when either side is constant (no correlation is defined)."""
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    return pearson(ranks(x), ranks(y))


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float | None:
    """Kendall's τ-b (ties in either variable corrected); None when either side is constant."""
    n = len(x)
    if n < 2:
        return None
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(n, 1)
    dx, dy = dx[upper], dy[upper]
    concordant_minus_discordant = float((dx * dy).sum())
    tx, ty = float((dx != 0).sum()), float((dy != 0).sum())
    if tx == 0 or ty == 0:
        return None
    return concordant_minus_discordant / math.sqrt(tx * ty)


def bootstrap_mean_ci(d: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``d`` over case resamples (fixed seed: reproducible)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(len(d), 1))  # resamples per draw: bounded memory for large folders
    means = np.concatenate(
        [
            d[rng.integers(0, len(d), size=(min(chunk, reps - i), len(d)))].mean(axis=1)
            for i in range(0, reps, chunk)
        ]
    )
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """All agreement figures of two paired score vectors."""
    d = b - a
    lo, hi = bootstrap_mean_ci(d) if len(d) else (None, None)
    return {
        "n": len(d),
        "pearson": pearson(a, b),
        "spearman": spearman(a, b),
        "kendall_tau_b": kendall_tau_b(a, b),
        "mean_a": float(a.mean()) if len(a) else None,
        "mean_b": float(b.mean()) if len(b) else None,
        "mean_diff": float(d.mean()) if len(d) else None,
        "mean_diff_ci95": [lo, hi],
        "identical": float((d == 0).mean()) if len(d) else None,
    }


def compare(a: JudgedFolder, b: JudgedFolder) -> dict:
    """Agreement of two judged folders: ``{"metrics": {m: figures}, "by_task": {task: {m: figures}}}``."""
    common = sorted(set(a.cases) & set(b.cases))
    out: dict = {"a": str(a.path), "b": str(b.path), "judge_a": a.judge, "judge_b": b.judge}
    out.update(paired_cases=len(common), only_a=len(set(a.cases) - set(b.cases)))
    out.update(only_b=len(set(b.cases) - set(a.cases)), failed_a=a.failed, failed_b=b.failed)

    def figures(keys: list[CaseKey]) -> dict:
        res = {}
        for m in METRICS:
            ks = [k for k in keys if m in a.cases[k] and m in b.cases[k]]
            if ks:
                va = np.array([a.cases[k][m] for k in ks])
                vb = np.array([b.cases[k][m] for k in ks])
                res[m] = agreement(va, vb)
        return res

    out["metrics"] = figures(common)
    tasks = sorted({k[1] for k in common})
    out["by_task"] = {t: figures([k for k in common if k[1] == t]) for t in tasks}
    return out


def model_ranking(pairs: list[tuple[JudgedFolder, JudgedFolder]]) -> dict:
    """Whether judges A and B order the models the same: per metric, each model's mean over its paired
    cases under either judge and Kendall τ over the models."""
    out = {}
    for m in METRICS:
        means_a, means_b = [], []
        for a, b in pairs:
            keys = [k for k in set(a.cases) & set(b.cases) if m in a.cases[k] and m in b.cases[k]]
            if not keys:
                break
            means_a.append(float(np.mean([a.cases[k][m] for k in keys])))
            means_b.append(float(np.mean([b.cases[k][m] for k in keys])))
        else:
            va, vb = np.array(means_a), np.array(means_b)
            same = list(np.argsort(-va, kind="stable")) == list(np.argsort(-vb, kind="stable"))
            out[m] = {"means_a": means_a, "means_b": means_b, "kendall_tau_b": kendall_tau_b(va, vb)}
            out[m]["same_order"] = same
    return out


# ------------------------------------------------------------------------------------------ report
def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_markdown(result: dict) -> str:
    lines = [
        f"A: {result['a']} ({result['judge_a'].get('model', 'judge not recorded')})",
        f"B: {result['b']} ({result['judge_b'].get('model', 'judge not recorded')})",
        f"paired cases: {result['paired_cases']} (only in A: {result['only_a']}, only in B: {result['only_b']}; "
        f"failed judgements left out: A {result['failed_a']}, B {result['failed_b']})",
        "",
        "| metric | n | Pearson | Spearman | Kendall τ-b | mean A | mean B | B − A [95% CI] | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in result["metrics"].items():
        lo, hi = r["mean_diff_ci95"]
        lines.append(
            f"| {m} | {r['n']} | {_f(r['pearson'])} | {_f(r['spearman'])} | {_f(r['kendall_tau_b'])} | "
            f"{_f(r['mean_a'], 2)} | {_f(r['mean_b'], 2)} | {_f(r['mean_diff'], 2)} [{_f(lo, 2)}, {_f(hi, 2)}] | "
            f"{_f(r['identical'], 2)} |"
        )
    lines += [
        "",
        "| task type | metric | n | Pearson | mean A | mean B | B − A |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, per in result["by_task"].items():
        for m, r in per.items():
            lines.append(
                f"| {task} | {m} | {r['n']} | {_f(r['pearson'])} | {_f(r['mean_a'], 2)} | {_f(r['mean_b'], 2)} | "
                f"{_f(r['mean_diff'], 2)} |"
            )
    if "ranking" in result:
        lines += ["", "| metric | models' means under A | under B | Kendall τ over models | same order |"]
        lines.append("|---|---|---|---|---|")
        for m, r in result["ranking"].items():
            ma = ", ".join(f"{v:.2f}" for v in r["means_a"])
            mb = ", ".join(f"{v:.2f}" for v in r["means_b"])
            lines.append(
                f"| {m} | {ma} | {mb} | {_f(r['kendall_tau_b'])} | {'yes' if r['same_order'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="judged result folder of judge A")
    p.add_argument("b", help="judged result folder of judge B (the same generations)")
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="another model's two folders (repeatable): adds the ranking of the models under either judge",
    )
    p.add_argument("--output", default=None, help="also write the figures as JSON to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folders = [(load_judged(a), load_judged(b)) for a, b in [(args.a, args.b), *args.pair]]
    except ValueError as e:
        log.error("%s", e)
        return 2
    result = compare(*folders[0])
    if result["paired_cases"] == 0:
        log.error("no case is judged in both %s and %s: are they the same generations?", args.a, args.b)
        return 2
    if args.pair:
        result["ranking"] = model_ranking(folders)
    print(render_markdown(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
