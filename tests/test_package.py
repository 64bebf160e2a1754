"""The checkout is one installable package (pyproject.toml): its five packages import from any folder, the
console commands are the `python -m` commands, and no module edits sys.path to find its siblings."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_from_another_folder(tmp_path):
    code = "import modeling.bagel, data.packed_dataset, train.config, inference.pipeline, eval.scoring, inference\n"
    code += "print(inference.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().parent == ROOT / "inference"


def test_console_commands_are_the_module_commands(tmp_path):
    scripts = [e for e in distribution("scone").entry_points if e.group == "console_scripts"]
    assert len(scripts) >= 10
    for entry in scripts:
        module, func, target = entry.module, entry.attr, entry.value
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), target
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body), target
    exe = shutil.which("scone-train")
    assert exe, "the console commands are installed by the README's `pip install ... -e .`"
    out = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "--total_steps" in out.stdout, out.stderr


def test_no_module_edits_sys_path():
    bad = []
    for folder in ("modeling", "data", "train", "inference", "eval", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_readme_stays_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail to docs/"
