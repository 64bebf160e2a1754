"""One flag vocabulary: every entry point that loads a model takes the same model-loading flags (one shared
definition, inference/cli_common.py add_model_args), and they do what they say."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
from PIL import Image

from inference import single_case
from inference.cli_common import MODEL_FLAGS, add_model_args
from tests.test_docs import probe
from tests.test_lora import REFS, SHIPPED, TEXT, adapter  # noqa: F401 - the fixture

# Every front end that loads a model (eval.generate is an alias of inference.benchmark).
MODEL_ENTRY_POINTS = [
    "module:inference.single_case",
    "module:inference.understand",
    "module:inference.app",
    "module:eval.generate",
    "module:inference.benchmark",
    "module:inference.serve",
]


def _reference_actions() -> dict[str, tuple]:
    p = argparse.ArgumentParser()
    add_model_args(p)
    return {
        s: (a.default, tuple(a.choices) if a.choices else None, a.type)
        for a in p._actions
        for s in a.option_strings
        if s in MODEL_FLAGS
    }


def test_the_model_group_is_the_documented_vocabulary():
    assert set(_reference_actions()) == set(MODEL_FLAGS)


def test_every_model_entry_point_accepts_the_same_loading_flags():
    flags = probe(MODEL_ENTRY_POINTS)
    for entry in MODEL_ENTRY_POINTS:
        assert isinstance(flags[entry], list), (entry, flags[entry])
        missing = sorted(set(MODEL_FLAGS) - set(flags[entry]))
        assert not missing, f"{entry} lacks {missing}"


@pytest.mark.parametrize(
    "module", ["inference.single_case", "inference.understand", "inference.app", "eval.generate"]
)
def test_loading_flags_have_one_definition(module, monkeypatch):
    """The same defaults, choices and types everywhere: the parser of each entry point, captured."""
    import importlib

    captured = {}
    real = argparse.ArgumentParser.parse_known_args

    def capture(self, *a, **k):
        captured["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", real)
    got = {
        s: (a.default, tuple(a.choices) if a.choices else None, a.type)
        for a in captured["parser"]._actions
        for s in a.option_strings
        if s in MODEL_FLAGS
    }
    assert got == _reference_actions()


def test_lora_on_the_command_line_applies_the_adapter(adapter, tmp_path):  # noqa: F811
    folder, _ = adapter
    base = [
        "--model_path",
        SHIPPED,
        "--input_image_paths",
        *REFS,
        "--instruction",
        TEXT,
        "--num_timesteps",
        "6",
    ]
    paths = {}
    for name, extra in (
        ("base", []),
        ("lora", ["--lora", str(folder)]),
        ("off", ["--lora", str(folder), "--lora_scale", "0"]),
    ):
        paths[name] = tmp_path / f"{name}.png"
        assert single_case.main([*base, *extra, "--output", str(paths[name])]) == 0
    px = {n: np.asarray(Image.open(p), dtype=int) for n, p in paths.items()}
    assert np.abs(px["lora"] - px["base"]).max() > 2  # the adapter acts
    assert np.abs(px["off"] - px["base"]).max() <= 1  # at scale 0 it does nothing


JUDGE_FLAGS = ("--judge_model", "--base_url", "--api_key_env", "--max_concurrency", "--max_retries", "--timeout",
               "--cache_dir", "--temperature", "--max_tokens", "--prompt_dir", "--protocol", "--authors_repo",
               "--dry_run", "--batch_api", "--batch_max_submissions", "--price_input", "--no_progress", "--seed",
               "--image_format", "--backoff_base", "--backoff_max", "--retry_after_max")  # fmt: skip


@pytest.mark.parametrize("module", ["eval.sconeeval", "eval.omnicontext", "eval.psrbench.evaluate"])
def test_judge_based_benchmarks_share_the_judge_flags(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    missing = [f for f in JUDGE_FLAGS if not re.search(rf"(^|[\s,]){re.escape(f)}([\s,=]|$)", text, re.M)]
    assert not missing, f"{module} lacks {missing}"
