"""The fenced shell and Python blocks of the user docs, their test annotations, and the commands in them.

A block is followed (on the line right after its closing fence) by an optional annotation that the reader
sees too:

    <sub>doc test: skipped (needs a GPU and the 7B weights)</sub>
    <sub>doc test: runs with `ckpts/Scone` → `ckpts/scone-tiny`, `photo.png` → `assets/examples/ref1.png`</sub>

Without one, the block runs exactly as written. ``runs with`` replaces each quoted text by the other before
running (plain text replacement, in order). Used by tests/test_docs.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    "README.md",
    "CONTRIBUTING.md",
    "ckpts/README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*\n(?:<sub>doc test: (.*?)</sub>[ \t]*\n)?", re.M | re.S)
SUBSTITUTION = re.compile(r"`([^`]+)` → `([^`]*)`")


@dataclass
class Block:
    doc: str
    line: int
    lang: str  # "shell" or "python"
    text: str  # as written in the doc
    note: str | None  # the annotation, None when absent
    substitutions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        if self.note and self.note.startswith("skipped"):
            return self.note.removeprefix("skipped").strip(" :()—-") or "no reason given"
        return None

    @property
    def runnable_text(self) -> str:
        text = self.text
        for old, new in self.substitutions:
            if old not in text:
                raise AssertionError(f"{self.name}: substitution `{old}` does not occur in the block")
            text = text.replace(old, new)
        return text


def read_blocks(doc: str) -> list[Block]:
    """Every shell / Python block of ``doc`` (a path relative to the repository root)."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        kind = "shell" if lang in SHELL else "python" if lang in PYTHON else None
        if kind is None:
            continue
        note = m.group(3)
        block = Block(doc, text[: m.start()].count("\n") + 1, kind, m.group(2), note)
        if note and note.startswith("runs with"):
            block.substitutions = SUBSTITUTION.findall(note)
            if not block.substitutions:
                raise AssertionError(f"{block.name}: 'runs with' names no `old` → `new` substitution")
        elif note and not (note.startswith("skipped") or note == "runs"):
            raise AssertionError(
                f"{block.name}: a doc test note starts with 'runs', 'runs with' or 'skipped'"
            )
        blocks.append(block)
    return blocks


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in read_blocks(doc)]


# ----------------------------------------------------------------------------- commands and their flags
@dataclass
class Command:
    where: str  # doc:line
    entry: str  # "module:eval.generate", "script:scripts/x.py" or "bash:scripts/x.sh"
    flags: list[str]
    env: list[str]  # VAR=... assignments before a bash script


def _logical_lines(text: str) -> list[str]:
    """Shell text -> commands (continuation lines joined, comments dropped)."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(cur)
            cur = ""
    return [c for c in out if c.strip()]


def parse_command(line: str, where: str) -> Command | None:
    """The entry point and the ``--flags`` of one shell command, or None for anything that is not one of
    this repository's entry points (pip, export, vllm ...)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    env = []
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        env.append(words.pop(0).split("=", 1)[0])
    if not words:
        return None
    entry, rest = None, []
    if words[0] in ("python", "python3"):
        if len(words) > 2 and words[1] == "-m":
            entry, rest = f"module:{words[2]}", words[3:]
        elif len(words) > 1 and words[1].endswith(".py"):
            entry, rest = f"script:{words[1]}", words[2:]
    elif words[0] == "torchrun":
        for i, w in enumerate(words):
            if w == "-m" and i + 1 < len(words):
                entry, rest = f"module:{words[i + 1]}", words[i + 2 :]
                break
            if w.endswith(".py"):
                entry, rest = f"script:{w}", words[i + 1 :]
                break
    elif words[0] == "bash" and len(words) > 1 and words[1].endswith(".sh"):
        entry, rest = f"bash:{words[1]}", words[2:]
    if entry is None:
        return None
    name = entry.split(":", 1)[1]
    if entry.startswith("module:") and not (ROOT / (name.replace(".", "/") + ".py")).is_file():
        return None  # another project's module (sglang, vllm)
    if entry.startswith(("script:", "bash:")) and not (ROOT / name).is_file():
        return None
    flags = [w.split("=", 1)[0] for w in rest if re.match(r"^--[A-Za-z]", w)]
    return Command(where, entry, flags, env)


INLINE = re.compile(
    r"`((?:[A-Z_]+=\S+ )*(?:python3? (?:-m |scripts/|bench/|train/)|bash scripts/|torchrun )[^`]+)`"
)


def all_commands() -> list[Command]:
    """The repository commands of every shell block (run or skipped) and of inline code in the prose."""
    cmds = []
    for doc in DOCS:
        for block in read_blocks(doc):
            if block.lang != "shell":
                continue
            for line in _logical_lines(block.text):
                cmd = parse_command(line, block.name)
                if cmd:
                    cmds.append(cmd)
        text = (ROOT / doc).read_text(encoding="utf-8")
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for m in INLINE.finditer(prose):
            cmd = parse_command(m.group(1), f"{doc}:{prose[: m.start()].count(chr(10)) + 1}")
            if cmd:
                cmds.append(cmd)
    return cmds


def script_entry_points(script: str, seen: set | None = None) -> tuple[set[str], str]:
    """(python entry points a bash script runs, its text with every script it sources), for the flags
    that it passes on with "$@"."""
    seen = seen if seen is not None else set()
    if script in seen:
        return set(), ""
    seen.add(script)
    text = (ROOT / script).read_text(encoding="utf-8")
    entries = {
        f"module:{m}"
        for m in re.findall(r"-m ([A-Za-z_][\w.]*)", text)
        if (ROOT / (m.replace(".", "/") + ".py")).is_file()
    }
    entries |= {
        f"script:{m}" for m in re.findall(r"(?:\$ROOT/|\./)?((?:train|scripts|bench)/[\w/]+\.py)", text)
    }
    for src in re.findall(
        r'(?:source|\.) "?(?:\$\(dirname "\$0"\)|\$ROOT|\$HERE|[\w$"{}()/.-]*?)/?([\w/]+\.sh)"?', text
    ):
        cand = next((p for p in (src, f"scripts/{src}", f"scripts/tiny/{src}") if (ROOT / p).is_file()), None)
        if cand:
            more, more_text = script_entry_points(cand, seen)
            entries |= more
            text += "\n" + more_text
    return entries, text


# ----------------------------------------------------------------------------- an entry point's flags
class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def probe_flags() -> None:
    """Run in a subprocess: read entry points (JSON list) from stdin, start each as ``__main__`` with
    argparse's parsing replaced by a capture of the parser, and print {entry: [option strings] | error}."""
    import argparse
    import contextlib
    import io
    import json
    import runpy
    import sys

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    sys.path.insert(0, str(ROOT))
    out = {}
    for entry in json.load(sys.stdin):
        kind, name = entry.split(":", 1)
        sys.argv = [name]
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if kind == "module":
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(ROOT / name), run_name="__main__")
            out[entry] = []  # ran to the end without argparse: it takes no --flags
        except _Captured as c:
            out[entry] = sorted(c.parser._option_string_actions)
        except SystemExit:  # stopped on its own argument check, without argparse: no --flags either
            out[entry] = []
        except BaseException as e:  # noqa: BLE001 - reported as the entry's error
            out[entry] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    probe_flags()
