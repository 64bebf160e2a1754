"""The bridge probe (eval/bridge_probe.py): truth tokens, the random floor, and the probe on a real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eval.bridge_probe import (
    auroc,
    markdown,
    packing_config,
    probe_record,
    subject_pixels,
    summarise,
    token_truth,
)

ROOT = Path(__file__).resolve().parents[1]


def test_truth_tokens_are_the_patches_a_subject_touches():
    pixels = np.zeros((96, 96), dtype=bool)
    pixels[0:10, 50:60] = True  # top row, columns 50..59 of 96
    truth = token_truth(pixels, (6, 6)).reshape(6, 6)  # 16-pixel patches: columns 3 (48..63)
    assert truth.sum() == 1 and truth[0, 3]
    truth = token_truth(pixels, (5, 5)).reshape(5, 5)  # 19.2-pixel patches: 38.4..57.6, 57.6..76.8
    assert truth.sum() == 2 and truth[0, 2] and truth[0, 3]


def test_subject_pixels_cover_the_subject_only():
    from data.synthetic.render import Placement, Subject

    p = Placement(Subject("square", "red", "solid", "large"), 0.25, 0.5)
    pixels = subject_pixels(96, [p])
    ys, xs = np.nonzero(pixels)
    side = 0.28 * 96
    assert abs(xs.mean() - 24) < 1 and abs(ys.mean() - 48) < 1
    assert side**2 <= pixels.sum() <= (side + 2) ** 2


def test_auroc():
    truth = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2]), truth) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8]), truth) == 0.0
    assert auroc(torch.zeros(4), truth) == 0.5
    assert auroc(torch.zeros(4), torch.zeros(4, dtype=torch.bool)) is None


def test_precision_recall_and_their_random_floor():
    # one reference: 4 ViT + 4 VAE tokens; truth = tokens 0, 4; kept = tokens 0, 1 (ViT) and 5 (VAE)
    row = {
        "task_type": "distinction_single_cross",
        "n_vit": 4,
        "similarity": torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3, 0.95, 0.1, 0.1]),
        "kept": torch.tensor([1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool),
        "truth": torch.tensor([1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.bool),
    }
    s = summarise([row])["all"]
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)
    # random: ViT keeps 2 of 4 with 1 truth -> 0.5 expected hits; VAE keeps 1 of 4 -> 0.25
    assert s["random_precision"] == pytest.approx(0.75 / 3) and s["random_recall"] == pytest.approx(0.75 / 2)
    assert s["kept_share"] == pytest.approx(3 / 8) and s["truth_share"] == pytest.approx(2 / 8)
    assert "33.3% (25.0%)" in markdown(summarise([row]))
    # top-|truth| (2 tokens: 0.95 at 5, 0.9 at 0): one hit of 2; random 2 * 2 / 8 of 2
    assert s["precision_at_truth"] == pytest.approx(0.5) and s["random_precision_at_truth"] == pytest.approx(
        0.25
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from data.synthetic.make_shapeworld import make_shapeworld
    from eval.shapeworld import load_bench

    out = tmp_path_factory.mktemp("probe") / "w"
    make_shapeworld(str(out), 0, 6, seed=0)
    return str(out / "bench"), [
        r for r in load_bench(str(out / "bench")) if r["task_type"].startswith("distinction")
    ]


def test_probe_on_the_shipped_model_follows_the_bridge_threshold(bench):
    from inference.pipeline import SconePipeline

    bench_dir, records = bench
    pipe = SconePipeline.from_pretrained(str(ROOT / "ckpts" / "scone-tiny"))
    packing = packing_config(pipe)
    rows = [r for rec in records for r in probe_record(pipe, packing, rec, bench_dir)]
    subject_refs = sum(
        1 for rec in records for ref in rec["shapeworld"]["references"] if ref["kind"] == "subjects"
    )
    assert len(rows) == subject_refs
    for r in rows:
        assert r["truth"].any() and not r["truth"].all()  # one candidate of 2-3, never the whole image
        assert r["n_vit"] == 25 and r["similarity"].numel() == 25 + 36  # 70 px ViT (5x5), 96 px VAE (6x6)
        thr = torch.tensor(pipe.config.semantic_threshold, dtype=torch.bfloat16)
        assert torch.equal(r["kept"], r["similarity"].to(torch.bfloat16) >= thr)
    # a threshold below every similarity keeps everything: recall 1, precision = the truth share = random
    assert pipe.model.config is pipe.config  # this test's own pipeline: changing it affects no other test
    pipe.config.semantic_threshold = -2.0
    all_kept = summarise([r for rec in records for r in probe_record(pipe, packing, rec, bench_dir)])["all"]
    assert all_kept["kept_share"] == 1.0 and all_kept["recall"] == 1.0
    assert all_kept["precision"] == pytest.approx(all_kept["truth_share"])
    assert all_kept["random_precision"] == pytest.approx(all_kept["precision"])


def _ablation_table():
    """scripts/tiny/ablation_table.py as a module (scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ablation_table", ROOT / "scripts" / "tiny" / "ablation_table.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_table_pairs_seeds_and_gives_a_t_interval(tmp_path):
    import json

    mod = _ablation_table()
    overall = {
        ("mask", 0): 7.0,
        ("nomask", 0): 6.5,
        ("mask", 1): 7.2,
        ("nomask", 1): 7.0,
        ("mask", 2): 6.8,
        ("nomask", 2): 6.9,
    }
    for (arm, seed), v in overall.items():
        d = tmp_path / "eval" / f"ablation_{arm}_s{seed}" / "shapeworld_scores"
        d.mkdir(parents=True)
        mean = {"leaderboard.avg_COM": v + 0.1, "leaderboard.avg_DIS": v - 0.1, "leaderboard.overall": v}
        (d / "scores.json").write_text(json.dumps({"mean": mean}))
    diffs = [0.5, 0.2, -0.1]  # mean 0.2, sd 0.3: half width 4.303 * 0.3 / sqrt(3) = 0.745
    mean, half = mod.paired_ci(diffs)
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.303 * 0.3 / 3**0.5)
    assert mod.main(["--work", str(tmp_path), "--seeds", "0", "1", "2"]) == 0
    with pytest.raises(ValueError, match="need 2"):
        mod.paired_ci([0.1])
    with pytest.raises(ValueError, match="no leaderboard value"):
        mod.run_value({"mean": {"leaderboard.overall": None}}, "overall")


def test_ablation_table_text():
    mod = _ablation_table()
    values = {
        "mask": {s: {"Avg COM": 7.0 + s, "Avg DIS": 6.0, "Overall": 6.5 + s / 2} for s in (0, 1)},
        "nomask": {s: {"Avg COM": 7.0, "Avg DIS": 6.0, "Overall": 6.5} for s in (0, 1)},
    }
    text = mod.table(values, [0, 1])
    assert "| semantic mask on (2 seeds) | 7.50 ± 0.71 | 6.00 ± 0.00 | 6.75 ± 0.35 |" in text
    # COM diffs 0, 1: mean 0.5, half width 12.706 * 0.7071 / 1.414 = 6.35
    assert "+0.50 [-5.85, +6.85]" in text
