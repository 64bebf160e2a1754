"""The shipped tiny ShapeWorld model (ckpts/scone-tiny): the README quick start, and a re-score of the
recorded held-out numbers (docs/shapeworld.md §4)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "ckpts" / "scone-tiny"


def readme_quickstart_command(module: str = "inference.single_case") -> list[str]:
    """The README quick start's command of ``module``, as argv (line continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    cmds = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if module in c]
    assert len(cmds) == 1, cmds
    return shlex.split(cmds[0])


def test_readme_quickstart_generates_with_the_shipped_model(tmp_path, monkeypatch):
    from inference import single_case

    argv = readme_quickstart_command()
    assert argv[:3] == ["python", "-m", "inference.single_case"]
    assert "--model_path" not in argv  # the point of the quick start: the shipped default
    for path in argv[argv.index("--input_image_paths") + 1 :]:
        if path.startswith("--"):
            break
        assert (ROOT / path).is_file(), path
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SCONE_MODEL_PATH", raising=False)
    out = tmp_path / "quick.png"
    args = [a for a in argv[3:]]
    if "--output" in args:
        i = args.index("--output")
        del args[i : i + 2]
    assert single_case.main([*args, "--output", str(out)]) == 0
    img = Image.open(out)
    assert img.size == (96, 96)
    # not a blank canvas: the model draws something
    assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_shipped_folder_is_small_and_half_precision():
    from safetensors import safe_open

    total = sum(p.stat().st_size for p in SHIPPED.iterdir() if p.is_file())
    assert total < 20e6, total
    with safe_open(str(SHIPPED / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes <= {"F16", "BF16", "I64"}, dtypes


def test_shipped_model_rescores_within_noise(tmp_path):
    """Rebuild the first held-out cases (the generator is prefix-stable), generate with the shipped model
    and judge: the numbers recorded in ckpts/scone-tiny/shapeworld_scores.json must come back within the
    recorded tolerance (max of 0.5 and the seed-to-seed spread measured when they were recorded)."""
    from eval.shapeworld_run import KEYS, generate_and_judge

    sub = json.loads((SHIPPED / "shapeworld_scores.json").read_text())["rescore_subset"]
    result = generate_and_judge(
        str(SHIPPED), str(tmp_path), sub["num_cases"], sub["world_seed"], sub["sampling_seed"]
    )
    assert result["cases"]["failed"] == 0
    for key in KEYS:
        got, want = result["mean"][key], sub["overall"][key]
        assert got == pytest.approx(want, abs=sub["tolerance"]), (key, got, want)


def test_readme_understand_command_answers_right_without_a_warning(monkeypatch, capsys, caplog):
    """The shipped model was trained to answer (the understanding stage, docs/shapeworld.md §4.1): the
    quick start's question about the first example reference (an orange dotted cross left of a green solid
    cross) gets the right answer, and no generation-only warning."""
    import logging

    from inference import understand

    argv = readme_quickstart_command("inference.understand")
    assert argv[:3] == ["python", "-m", "inference.understand"] and "--model_path" not in argv
    assert argv[argv.index("--images") + 1] == "assets/examples/ref1.png"
    assert argv[argv.index("--question") + 1] == "How many shapes are in the image?"
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SCONE_MODEL_PATH", raising=False)
    with caplog.at_level(logging.WARNING):
        assert understand.main(argv[3:]) == 0
    assert capsys.readouterr().out.strip() == "2"
    assert not any("generation only" in r.getMessage() for r in caplog.records)
    assert "generation_only" not in json.loads((SHIPPED / "scone_config.json").read_text())


def test_a_generation_only_model_says_so(tmp_path, caplog):
    import logging
    import shutil

    from inference.pipeline import SconePipeline

    folder = tmp_path / "m"
    shutil.copytree(SHIPPED, folder)
    cfg = json.loads((folder / "scone_config.json").read_text())
    (folder / "scone_config.json").write_text(json.dumps({**cfg, "generation_only": True}))
    pipe = SconePipeline.from_pretrained(str(folder))
    assert pipe.config.extra["generation_only"] is True
    with caplog.at_level(logging.WARNING):
        pipe.understand(images=[str(ROOT / "assets" / "examples" / "ref1.png")], prompt="What colour?",
                        max_new_tokens=2)  # fmt: skip
    assert any("generation only" in r.getMessage() for r in caplog.records)


def test_generation_only_must_be_a_boolean(tmp_path):
    import shutil

    from inference.pipeline import SconePipeline

    folder = tmp_path / "m"
    shutil.copytree(SHIPPED, folder)
    cfg = json.loads((folder / "scone_config.json").read_text())
    cfg["generation_only"] = "yes"
    (folder / "scone_config.json").write_text(json.dumps(cfg))
    from modeling.errors import CheckpointError

    with pytest.raises(CheckpointError, match="'generation_only' must be true or false"):
        SconePipeline.from_pretrained(str(folder))
