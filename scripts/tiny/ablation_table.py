"""The bridge ablation's table: the semantic mask's effect with a 95% confidence interval over training seeds.

    python scripts/tiny/ablation_table.py --work ckpts/tiny-work --seeds 0 1 2

Reads ``WORK/eval/ablation_{mask,nomask}_s<seed>/shapeworld_scores/scores.json`` (written by
scripts/tiny/ablation.sh). A run's value is its mean over sampling rounds. The mask's effect is paired by
seed (both arms of a seed share the data order and the noise): d_s = mask − no mask, reported as mean d
± t(0.975, n−1) · sd(d) / √n (Student's t, n seeds). With the probe of the starting model
(``WORK/eval/ablation_probe/probe.json``) when it exists.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

METRICS = {"Avg COM": "avg_COM", "Avg DIS": "avg_DIS", "Overall": "overall"}
# two-sided 95% quantiles of Student's t for 1..10 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def run_value(scores: dict, key: str) -> float:
    """The round-mean of a leaderboard number in an eval/aggregation scores.json."""
    value = scores["mean"].get(f"leaderboard.{key}")
    if value is None:
        raise ValueError(f"scores.json has no leaderboard value {key!r}")
    return float(value)


def paired_ci(diffs: list[float]) -> tuple[float, float]:
    """(mean, half width of the 95% CI) of paired differences; needs at least two."""
    n = len(diffs)
    if not 2 <= n <= len(T975) + 1:
        raise ValueError(f"need 2..{len(T975) + 1} seeds for a t interval, got {n}")
    return statistics.mean(diffs), T975[n - 2] * statistics.stdev(diffs) / math.sqrt(n)


def table(values: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> str:
    """``values[arm][seed][metric]`` → Markdown: per arm mean ± sd over seeds, then the paired effect."""
    lines = ["| | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for arm in ("mask", "nomask"):
        cells = []
        for m in METRICS:
            xs = [values[arm][s][m] for s in seeds]
            cells.append(f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}")
        label = "semantic mask on" if arm == "mask" else "mask off"
        lines.append(f"| {label} ({len(seeds)} seeds) | " + " | ".join(cells) + " |")
    cells = []
    for m in METRICS:
        mean, half = paired_ci([values["mask"][s][m] - values["nomask"][s][m] for s in seeds])
        cells.append(f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]")
    lines.append("| mask − no mask, 95% CI | " + " | ".join(cells) + " |")
    per_seed = ", ".join(
        f"seed {s}: {values['mask'][s]['Overall']:.2f} / {values['nomask'][s]['Overall']:.2f}" for s in seeds
    )
    return "\n".join(lines) + f"\n\nOverall with / without the mask per seed: {per_seed}."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    args = p.parse_args(argv)
    values: dict[str, dict[int, dict[str, float]]] = {"mask": {}, "nomask": {}}
    for arm in values:
        for s in args.seeds:
            path = Path(args.work) / "eval" / f"ablation_{arm}_s{s}" / "shapeworld_scores" / "scores.json"
            scores = json.loads(path.read_text())
            values[arm][s] = {m: run_value(scores, key) for m, key in METRICS.items()}
    out = table(values, args.seeds)
    probe = Path(args.work) / "eval" / "ablation_probe" / "probe.json"
    if probe.is_file():
        e = json.loads(probe.read_text())["task_types"]["all"]
        out += (
            f"\n\nBridge probe of the starting model (all distinction cases): kept {100 * e['kept_share']:.1f}% of "
            f"reference tokens, AUROC {e['auroc']:.3f}, similarity truth / other "
            f"{e['similarity_truth']:.3f} / {e['similarity_other']:.3f}."
        )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
