"""Training configuration in typed sections (train/config.py): the generated CLI, --config files, the resolved
configuration in every step folder, and resuming a step folder written before the configuration was typed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling.lora import ADAPTER_WEIGHTS
from tests.test_lora_training import LORA
from tests.test_train_loop import CKPT, GEN_ONLY, SYN, args_for, losses
from train.config import (
    CHECKPOINT,
    CONFIG_FILE,
    IGNORED,
    TrainConfig,
    UpstreamSection,
    build_parser,
    parse_config,
)
from train.pretrain import train

ROOT = Path(__file__).resolve().parents[1]
OLD_STEP = ROOT / "tests" / "fixtures" / "lora_step_folder_v1"


def test_help_is_grouped_by_section():
    parser = build_parser()
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    for section in fields(TrainConfig):
        cls = TrainConfig.__dataclass_fields__[section.name].default_factory
        title = cls.__doc__.partition(":")[0].strip()
        assert {f.name for f in fields(cls)} == groups[title], title
    out = subprocess.run(
        [sys.executable, "-m", "train.pretrain", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    order = [text.index(t) for t in ("model:", "data:", "optimizer and schedule:", "LoRA", "upstream compat")]
    assert order == sorted(order)
    body = text[text.index("\noptions:") :]  # after the usage lines
    assert body.index("  --lr ") > body.index("optimizer and schedule:") > body.index("  --num_workers ")


def test_config_file_by_section_or_flat_and_flags_override(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        f"model:\n  model_path: {CKPT}\ndata:\n  synthetic_data: true\n  num_workers: 2\n"
        "optimizer:\n  lr: 3.0e-4\n  total_steps: 7\nlog_every: 3\nfreeze_vit: 'True'\n"
    )
    cfg = parse_config(["--config", str(yaml_file), "--total_steps", "9"])
    assert cfg.model.model_path == CKPT and cfg.data.synthetic_data is True and cfg.data.num_workers == 2
    assert cfg.optimizer.lr == 3e-4 and cfg.optimizer.total_steps == 9  # the flag wins over the file
    assert cfg.metrics.log_every == 3 and cfg.freeze.freeze_vit is True
    for text, match in [
        ("optimizer:\n  num_workers: 2\n", "section 'optimizer' has no option 'num_workers'"),
        ("learning_rate: 1\n", "unknown option or section 'learning_rate'"),
        ("optimizer:\n  lr: fast\n", "lr"),
        ("data: [1, 2\n", "run.yaml"),
        ("- 1\n", "expected a mapping"),
    ]:
        yaml_file.write_text(text)
        with pytest.raises(SystemExit, match=match):
            parse_config(["--config", str(yaml_file), "--model_path", CKPT, "--synthetic_data"])
    with pytest.raises(SystemExit, match="no such file"):
        parse_config(["--config", str(tmp_path / "missing.json")])


def test_written_config_reruns_the_same_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(args_for(first, *SYN, GEN_ONLY, *LORA, "--total_steps", "3"))
    written = first / "ckpt" / "0000002" / CONFIG_FILE
    saved = json.loads(written.read_text())
    assert set(saved) == {f.name for f in fields(TrainConfig)}
    assert saved["lora"]["lora_rank"] == 2 and saved["optimizer"]["total_steps"] == 3
    assert saved["data"]["synthetic_spec"] == json.loads(GEN_ONLY)

    cfg = parse_config(
        ["--config", str(written), "--results_dir", str(second), "--checkpoint_dir", str(second / "ckpt")]
    )
    rerun = cfg.to_dict()
    for d in (saved, rerun):
        d["metrics"].pop("results_dir"), d["checkpoint"].pop("checkpoint_dir")
    assert rerun == saved
    train(cfg)
    assert losses(second) == losses(first)
    a = load_file(str(first / "ckpt" / "0000002" / ADAPTER_WEIGHTS))
    b = load_file(str(second / "ckpt" / "0000002" / ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_step_folder_written_before_typed_config(tmp_path):
    """The fixture folder was written by the trainer with the flat namespace; the typed one continues it
    exactly where the old code's own 5-step run went (losses recorded then)."""
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    shutil.copytree(OLD_STEP / "0000002", ckpt_dir / "0000002")
    expected = {
        int(k): tuple(v) for k, v in json.loads((OLD_STEP / "expected_losses.json").read_text()).items()
    }
    train(args_for(tmp_path, *SYN, GEN_ONLY, *LORA, "--total_steps", "5", "--auto_resume", "True"))
    got = losses(tmp_path)
    assert sorted(got) == [3, 4]  # resumed after the saved step 2
    for s in (3, 4):
        assert got[s] == pytest.approx(expected[s], rel=1e-5, abs=1e-6), (s, got[s], expected[s])
    assert (ckpt_dir / "0000004" / CONFIG_FILE).is_file()


def test_upstream_flags_are_one_table_in_the_docs():
    """Every upstream-only flag says what it must equal, and docs/training.md lists exactly those flags."""
    names = {f.name: f.metadata["must_equal"] for f in fields(UpstreamSection)}
    assert len(names) == 21
    doc = (ROOT / "docs" / "training.md").read_text()
    table = next(
        b for b in doc[doc.index("### Upstream-only flags") :].split("\n\n") if b.startswith("| flag")
    )
    rows = {line.split("|")[1].strip().strip("`").removeprefix("--") for line in table.splitlines()[2:]}
    assert rows == set(names)
    with pytest.raises(SystemExit, match="--vit_rope True is not supported"):
        parse_config(["--model_path", CKPT, "--synthetic_data", "--vit_rope", "True"])
    assert parse_config(["--model_path", CKPT, "--synthetic_data", "--copy_init_moe", "False"])  # IGNORED
    assert {v for v in names.values()} >= {CHECKPOINT, IGNORED}
