"""The docs are executable: every shell and Python block of README.md, CONTRIBUTING.md, ckpts/README.md and
docs/*.md runs on the shipped tiny model (with the substitutions its note states) or says next to it why it
cannot run here; and every flag a documented command uses exists on its entry point."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.doc_blocks import DOCS, ROOT, all_blocks, all_commands, read_blocks, script_entry_points

# Writable folders of a doc's workspace; everything else is a link into the checkout.
WRITABLE = ("outputs", "results", "datasets", "ckpts")


# The summary's headings for the reasons written in the docs (first match wins).
REASONS = [
    ("outline", "an outline or synopsis of an API, not a program"),
    ("synopsis", "an outline or synopsis of an API, not a program"),
    ("test suite", "the install or the test suite itself (.ci/run runs them)"),
    ("tests/test_", "a named test runs the same command and checks its output"),
    ("network", "needs the network"),
    ("hours", "hours of training on 2 cores"),
    ("judge", "needs a judge"),
    ("server", "starts a server"),
    ("GPU", "needs a GPU and the real weights"),
    ("weights", "needs the real weights or data sets"),
    ("data", "needs the real weights or data sets"),
]


def reason_heading(reason: str) -> str:
    return next((head for key, head in REASONS if key in reason), "other")


def test_every_block_runs_or_says_why_not(capsys):
    blocks = all_blocks()
    assert blocks, "no doc blocks found"
    skipped = collections.Counter(reason_heading(b.skip_reason) for b in blocks if b.skip_reason)
    run = [b for b in blocks if not b.skip_reason]
    with capsys.disabled():
        print(
            f"\ndoc blocks: {len(blocks)} found in {len(DOCS)} files, {len(run)} run, {sum(skipped.values())} skipped"
        )
        for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
            print(f"  skipped {n}: {reason}")
    assert "other" not in skipped, [b.skip_reason for b in blocks if b.skip_reason]
    for b in blocks:
        b.runnable_text  # every substitution must apply  # noqa: B018


def probe(entries: list[str]) -> dict:
    """{entry: sorted option strings, or an error text} from one subprocess (tests/doc_blocks.py)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "doc_blocks.py")],
        input=json.dumps(sorted(entries)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_documented_flags_exist_on_their_entry_points():
    commands = all_commands()
    assert len(commands) > 20
    via_script: dict[str, tuple[set[str], str]] = {}
    entries: set[str] = set()
    for c in commands:
        if c.entry.startswith("bash:"):
            via_script[c.entry] = script_entry_points(c.entry.split(":", 1)[1])
            entries |= via_script[c.entry][0]
        else:
            entries.add(c.entry)
    flags = probe(sorted(entries))
    broken = {e: v for e, v in flags.items() if not isinstance(v, list)}
    assert not broken, f"entry points whose flags could not be read: {broken}"
    missing = []
    for c in commands:
        if c.entry.startswith("bash:"):
            runs, text = via_script[c.entry]
            known = set().union(*(flags[e] for e in runs)) if runs else set()
            for var in c.env:
                if f"${var}" not in text and f"${{{var}" not in text:
                    missing.append(f"{c.where}: {c.entry} does not read ${var}")
        else:
            known = set(flags[c.entry])
        missing += [f"{c.where}: {c.entry} has no {f}" for f in c.flags if f not in known]
    assert not missing, "documented flags that no entry point defines:\n" + "\n".join(missing)


def make_workspace(path) -> str:
    """A folder that looks like the checkout (links) with its own writable outputs, results, datasets and
    ckpts (the latter holding links to the shipped models)."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name in (".git", *WRITABLE) or entry.name.startswith(".venv"):
            continue
        (path / entry.name).symlink_to(entry)
    for name in WRITABLE:
        (path / name).mkdir()
    for model in (ROOT / "ckpts").iterdir():
        (path / "ckpts" / model.name).symlink_to(model)
    return str(path)


def run_block(block, workspace: str, groups: list[int]) -> subprocess.CompletedProcess:
    """Run one block in its own process group (recorded in ``groups``, so that a server it leaves running
    in the background is stopped when the doc's test ends)."""
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": workspace,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    if block.lang == "shell":
        cmd = ["bash", "-euo", "pipefail", "-c", block.runnable_text]
    else:
        script = os.path.join(workspace, f"_doc_block_{block.line}.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(block.runnable_text)
        cmd = [sys.executable, script]
    # output to a file, not a pipe: a server the block starts in the background keeps its copy of the
    # output open, and reading a pipe to its end would wait for that server
    log_path = os.path.join(workspace, f"_doc_block_{block.line}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        groups.append(proc.pid)
        try:
            proc.wait(timeout=800)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with open(log_path, errors="replace") as f:
        return subprocess.CompletedProcess(cmd, proc.returncode, f.read(), "")


RUNNABLE_DOCS = [d for d in DOCS if any(not b.skip_reason for b in read_blocks(d))]


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUNNABLE_DOCS)
def test_doc_blocks_run(doc, tmp_path):
    """The doc's runnable blocks, in order, in one workspace (a later block may use an earlier one's files)."""
    workspace = make_workspace(tmp_path / "repo")
    groups: list[int] = []
    try:
        for block in read_blocks(doc):
            if block.skip_reason:
                continue
            done = run_block(block, workspace, groups)
            assert done.returncode == 0, (
                f"{block.name} failed (exit {done.returncode}):\n{block.runnable_text}\n--- output:\n"
                f"{done.stdout[-4000:]}"
            )
    finally:
        stop_groups(groups)


def stop_groups(groups: list[int], grace_s: float = 15.0) -> None:
    """Stop whatever the blocks left running (a server started with &) and wait until it is gone, so that
    the next doc's server finds its port free."""
    alive = list(groups)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in alive:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [g for g in alive if _group_exists(g)]
            time.sleep(0.1)
        if not alive:
            return


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
