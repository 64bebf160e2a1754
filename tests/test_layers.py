"""The package layers import one way only: modeling <- data <- train, and modeling <- inference <- eval.

Checked statically (every import statement, including the lazy ones inside functions), so a cycle cannot
hide behind an import that only runs on some code path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling", "data", "train", "inference", "eval")
# What each package may import (besides itself). data/transforms is shared by inference for the same
# image preprocessing as training; nothing imports train, and eval is the top.
ALLOWED = {
    "modeling": set(),
    "data": {"modeling"},
    "train": {"modeling", "data"},
    "inference": {"modeling", "data"},
    "eval": {"modeling", "data", "inference"},
}


# Command-line aliases: ``python -m eval.generate`` is the evaluation scripts' name for the benchmark runner
# (inference/benchmark.py, the original repository's name). An alias obeys the layers like any module
# (no exemption here); nothing may import it.
ALIASES = ("eval/generate.py",)


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return out


def test_layers_import_one_way():
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for dep in imported_packages(path) - {pkg} - ALLOWED[pkg]:
                bad.append(f"{rel} imports {dep}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_a_command_line_alias():
    aliases = {a.removesuffix(".py").replace("/", ".") for a in ALIASES}
    bad = []
    files = [p for d in (*PACKAGES, "bench", "tests", "scripts") for p in sorted((ROOT / d).rglob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            bad += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n in aliases]
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages():
    # ALLOWED itself must be acyclic, so that the check above rules out every cycle.
    seen: dict[str, int] = {}

    def visit(p: str) -> None:
        assert seen.get(p) != 1, f"cycle through {p}"
        if seen.get(p) == 2:
            return
        seen[p] = 1
        for q in ALLOWED[p]:
            visit(q)
        seen[p] = 2

    for p in PACKAGES:
        visit(p)


def test_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from eval.scoring import x\n    import data.sequence_packing\n")
    assert imported_packages(f) == {"eval", "data"}


def test_no_module_over_600_lines():
    long = []
    for pkg in (*PACKAGES, "bench", "scripts"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > 600:
                long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, "\n".join(long)


def test_no_formatter_escapes_outside_tests():
    """Modules stay readable by splitting, not by lines the formatter is told to leave long."""
    marked = [
        f"{path.relative_to(ROOT)}:{i}"
        for pkg in (*PACKAGES, "bench", "scripts")
        for path in sorted((ROOT / pkg).rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert not marked, marked
