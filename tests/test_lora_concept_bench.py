"""bench/lora_concept.py end to end at a smoke size: heart world + replay mix, LoRA training through
train.pretrain, judged before/after, parameter and AdamW-state report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_lora_concept_bench_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("lora_concept", ROOT / "bench" / "lora_concept.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--work", str(tmp_path), "--steps", "2", "--save_every", "1", "--num_concept_train", "12",
            "--num_replay", "12", "--num_concept_eval", "6", "--num_heldout", "6", "--rounds", "1"]  # fmt: skip
    assert bench.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    p = summary["parameters"]
    assert 0 < p["trainable_fraction"] <= 0.02 and p["adam_bytes_full"] > 20 * p["adam_bytes_lora"]
    # two fp32 moments per adapter parameter (+ one step counter per tensor)
    assert 0 <= p["adam_bytes_lora"] - 2 * 4 * p["trainable"] < 1024
    for model in ("base", "base + LoRA"):
        r = summary["results"][model]
        assert r["concept"]["heart"]["subjects"] == 6 and r["heldout"]["heart"]["subjects"] == 0
        assert r["concept"]["failed"] == 0 == r["heldout"]["failed"]
    step = tmp_path / "lora" / "0000001"
    assert json.loads((step / "adapter_config.json").read_text())["r"] == 3
    mix = (tmp_path / "heart_mix.yaml").read_text()
    assert "shapeworld_heart_single_candidate" in mix and "shapeworld_multi_candidate" in mix
    assert "hearts drawn as hearts" in capsys.readouterr().out
    assert bench.main(args) == 0  # rerun: data and adapter reused, nothing trained again
    assert json.loads((tmp_path / "summary.json").read_text())["train_seconds"] == 0.0
