"""Benchmark generation runner: file tree, per-sample seeds (independent of world size and of resuming),
atomic writes, bad cases reported while the rest completes. Fake pipeline for the logic, the tiny
fixture checkpoint for the real thing (in-process ranks and a torchrun gloo run)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.benchmark_cases import PathEscapeError, read_cases, resolve_in_dir
from inference import benchmark
from inference.benchmark import build_jobs, sample_seed, shard

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/bagel-tiny"


class Out:
    def __init__(self, image):
        self.image = image


class FakePipe:
    """Image pixels = hash of (seed, prompt, number of references): any seed mix-up changes the bytes."""

    def __init__(self, fail_on=None, interrupt_after=None):
        self.calls, self.made = [], 0
        self.fail_on, self.interrupt_after = fail_on, interrupt_after

    def generate_batch(self, requests, **settings):
        self.calls.append([r.prompt for r in requests])
        outs = []
        for r in requests:
            if self.fail_on and self.fail_on in r.prompt:
                raise RuntimeError(f"cannot draw {r.prompt}")
            if self.interrupt_after is not None and self.made >= self.interrupt_after:
                raise KeyboardInterrupt
            assert all(Path(p).is_file() for p in r.images)
            h = hashlib.sha256(f"{r.seed}|{r.prompt}|{len(r.images)}".encode()).digest()
            px = np.frombuffer(h * 8, dtype=np.uint8)[: 8 * 8 * 3].reshape(8, 8, 3)
            outs.append(Out(Image.fromarray(px.copy())))
            self.made += 1
        return outs


OMNI = [
    {"key": "a1", "task_type": "single_character", "instruction": "one", "input_images": ["imgs/a.png"]},
    {
        "key": "a2",
        "task_type": "multi_object",
        "instruction": "two",
        "input_images": ["imgs/a.png", "imgs/b.png"],
        "instruction_language": "en",
    },
    {"key": "a3", "task_type": "scene_object", "instruction": "three", "input_images": ["imgs/b.png"]},
]
SCONE = [
    {
        "key": "s1",
        "task_type": "composition_single",
        "instruction": "four",
        "input_images": ["imgs/a.png"],
        "case_type": "C1",
    },
    {
        "key": "s2",
        "task_type": "distinction_single_cross",
        "instruction": "five",
        "input_images": ["imgs/b.png"],
        "case_type": "DS",
        "subject_list": [["x", "y"]],
        "subject_label": [[1, 0]],
    },
    {
        "key": "esc",
        "task_type": "composition_single",
        "instruction": "six",
        "input_images": ["../secret.png"],
    },
    {
        "key": "abs",
        "task_type": "composition_single",
        "instruction": "seven",
        "input_images": ["/etc/passwd"],
    },
    {
        "key": "gone",
        "task_type": "composition_multi",
        "instruction": "eight",
        "input_images": ["imgs/missing.png"],
    },
]


def make_bench(tmp_path, records, name="bench"):
    bench = tmp_path / name
    (bench / "imgs").mkdir(parents=True)
    Image.new("RGB", (48, 32), (250, 0, 0)).save(bench / "imgs/a.png")
    Image.new("RGB", (32, 48), (0, 0, 250)).save(bench / "imgs/b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (bench / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return bench


def args(bench, out, *extra):
    return [
        "--model_path",
        "unused",
        "--benchmark_dir",
        str(bench),
        "--output_dir",
        str(out),
        "--no_progress",
        "--height",
        "64",
        "--width",
        "64",
        "--num_timesteps",
        "3",
        *extra,
    ]


def tree(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.fixture(autouse=True)
def single_process_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def test_seeds_and_sharding_helpers(tmp_path):
    assert sample_seed(1234, "t", "k", 0) == sample_seed(1234, "t", "k", 0)
    seeds = {sample_seed(1234, "t", "k", r) for r in range(3)} | {sample_seed(1, "t", "k", 0)}
    assert len(seeds) == 4 and all(0 <= s < 2**31 for s in seeds)
    cases, problems = read_cases(make_bench(tmp_path, OMNI) / "data.jsonl")
    jobs = build_jobs(cases, tmp_path, 2, 7)
    assert [j.out_path.relative_to(tmp_path).as_posix() for j in jobs[:2]] == [
        "round0/single_character/a1.png",
        "round0/multi_object/a2.png",
    ]
    parts = [shard(jobs, r, 4) for r in range(4)]
    assert sorted(id(j) for p in parts for j in p) == sorted(id(j) for j in jobs)
    with pytest.raises(ValueError):
        shard(jobs, 2, 2)


@pytest.mark.parametrize(
    "rel", ["../x.png", "a/../../x.png", "/abs.png", "C:\\x.png", "~/x.png", "a\\..\\..\\x", ""]
)
def test_path_escapes_rejected(tmp_path, rel):
    with pytest.raises(PathEscapeError):
        resolve_in_dir(tmp_path, rel)
    assert resolve_in_dir(tmp_path, "sub/dir/x.png") == tmp_path / "sub/dir/x.png"


def test_file_tree_rounds_log_and_failures(tmp_path, caplog):
    caplog.set_level("INFO")
    bench = make_bench(tmp_path, OMNI + SCONE)
    out = tmp_path / "out"
    pipe = FakePipe()
    code = benchmark.main(args(bench, out, "--rounds", "2", "--seed", "99"), pipe=pipe)
    assert code == 1  # the three bad cases failed
    expected = {f"round{r}/{c['task_type']}/{c['key']}.png" for r in (0, 1) for c in OMNI + SCONE[:2]}
    assert set(tree(out)) == expected
    assert tree(out)["round0/single_character/a1.png"] != tree(out)["round1/single_character/a1.png"]
    assert not list(out.rglob("*.tmp"))
    log_lines = [json.loads(x) for x in (out / "generation_log.rank0.jsonl").read_text().splitlines()]
    assert len(log_lines) == 10
    first = next(x for x in log_lines if x["key"] == "a2" and x["round"] == 1)
    assert first["seed"] == sample_seed(99, "multi_object", "a2", 1) and first["height"] == 64
    assert first["input_images"] == ["imgs/a.png", "imgs/b.png"] and first["cfg_interval"] == [0.0, 1.0]
    text = caplog.text
    for key, reason in (("esc", "leaves the benchmark folder"), ("abs", "absolute"), ("gone", "not found")):
        assert (
            sum(1 for r in caplog.records if f"/{key}:" in r.getMessage() and reason in r.getMessage()) == 2
        )
    assert "generated 10, skipped 0, regenerated 0, failed 6" in text


def test_same_images_one_or_two_ranks_and_after_interrupt(tmp_path, monkeypatch):
    bench = make_bench(tmp_path, OMNI + SCONE[:2])
    one = tmp_path / "one"
    assert benchmark.main(args(bench, one, "--rounds", "2"), pipe=FakePipe()) == 0
    two = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):  # order does not matter
        monkeypatch.setenv("RANK", str(rank))
        assert benchmark.main(args(bench, two, "--rounds", "2"), pipe=FakePipe()) == 0
    assert tree(one) == tree(two) and len(tree(one)) == 10
    assert {p.name for p in two.glob("generation_log.*")} == {
        "generation_log.rank0.jsonl",
        "generation_log.rank1.jsonl",
    }
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    # interrupted run, then resume: only the missing images are made, with the same result
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(args(bench, cut, "--rounds", "2"), pipe=FakePipe(interrupt_after=3))
    assert len(tree(cut)) == 3 and not list(cut.rglob("*.tmp"))
    again = FakePipe()
    assert benchmark.main(args(bench, cut, "--rounds", "2"), pipe=again) == 0
    assert sum(len(c) for c in again.calls) == 7
    assert tree(cut) == tree(one)


def test_resume_skips_valid_and_regenerates_broken(tmp_path):
    bench = make_bench(tmp_path, OMNI)
    out = tmp_path / "out"
    assert benchmark.main(args(bench, out), pipe=FakePipe()) == 0
    good = tree(out)
    broken = out / "round0/multi_object/a2.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    pipe = FakePipe()
    assert benchmark.main(args(bench, out), pipe=pipe) == 0
    assert pipe.calls == [["two"]] and tree(out) == good


def test_batches_and_failing_case_in_batch(tmp_path, caplog):
    bench = make_bench(tmp_path, OMNI + SCONE[:2])
    ref = tmp_path / "ref"
    assert benchmark.main(args(bench, ref), pipe=FakePipe()) == 0
    out = tmp_path / "out"
    pipe = FakePipe()
    assert benchmark.main(args(bench, out, "--batch_size", "3"), pipe=pipe) == 0
    assert [len(c) for c in pipe.calls] == [3, 2] and tree(out) == tree(ref)
    out2 = tmp_path / "out2"
    pipe = FakePipe(fail_on="two")
    assert benchmark.main(args(bench, out2, "--batch_size", "3"), pipe=pipe) == 1
    assert [len(c) for c in pipe.calls] == [3, 1, 1, 1, 2]  # failed batch retried case by case
    assert len(tree(out2)) == 4 and "multi_character" not in str(tree(out2))
    assert "cannot draw two" in caplog.text


def test_json_metadata_and_bad_records(tmp_path, caplog):
    bench = make_bench(tmp_path, [])
    recs = [
        {"key": "j1", "task_type": "single_object", "instruction": "x", "input_image": "imgs/a.png"},
        {"key": "j2", "task_type": "single_object", "input_images": ["imgs/a.png"]},  # no instruction
        {"key": "j1", "task_type": "single_object", "instruction": "dup", "input_images": ["imgs/a.png"]},
        {"key": "../j3", "task_type": "single_object", "instruction": "x", "input_images": ["imgs/a.png"]},
    ]
    (bench / "meta.json").write_text(json.dumps(recs))
    out = tmp_path / "out"
    code = benchmark.main(args(bench, out, "--metadata_file", str(bench / "meta.json")), pipe=FakePipe())
    assert code == 1 and set(tree(out)) == {"round0/single_object/j1.png"}
    assert "missing field 'instruction'" in caplog.text and "duplicate case" in caplog.text
    assert "cannot be used as a file name" in caplog.text
    (bench / "bad.txt").write_text("")
    with pytest.raises(ValueError, match="unsupported benchmark file type"):
        benchmark.main(args(bench, out, "--metadata_file", str(bench / "bad.txt")), pipe=FakePipe())


# ----------------------------------------------------------------------------- the tiny real model
TINY_ARGS = [
    "--vae_transform",
    "64",
    "32",
    "16",
    "--vit_transform",
    "56",
    "28",
    "14",
    "--model_path",
    str(TINY / "checkpoint"),
]


@pytest.fixture(scope="module")
def tiny_pipe():
    from inference.pipeline import SconePipeline

    return SconePipeline.from_pretrained(
        str(TINY / "checkpoint"),
        device="cpu",
        dtype=torch.float32,
        vae_transform=(64, 32, 16),
        vit_transform=(56, 28, 14),
    )


def test_tiny_model_one_vs_two_ranks(tmp_path, tiny_pipe, monkeypatch):
    recs = [OMNI[0], SCONE[1], SCONE[2]]
    bench = make_bench(tmp_path, recs)
    one = tmp_path / "one"
    assert benchmark.main(args(bench, one, *TINY_ARGS), pipe=tiny_pipe) == 1  # SCONE[2] escapes
    imgs = tree(one)
    assert set(imgs) == {"round0/single_character/a1.png", "round0/distinction_single_cross/s2.png"}
    assert Image.open(one / "round0/single_character/a1.png").size == (64, 64)
    two = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        benchmark.main(args(bench, two, *TINY_ARGS), pipe=tiny_pipe)
    assert tree(two) == imgs


@pytest.mark.slow
def test_tiny_model_torchrun_gloo(tmp_path, tiny_pipe):
    recs = [OMNI[0], SCONE[1], SCONE[4]]
    bench = make_bench(tmp_path, recs)
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun runs each worker with OMP_NUM_THREADS=1; CPU sums depend on it
    try:
        benchmark.main(args(bench, one, *TINY_ARGS), pipe=tiny_pipe)
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "eval.generate",
        *args(bench, two, *TINY_ARGS),
    ]
    # own process group, so that a hang cannot leave orphaned workers behind
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0  # the missing image is a failure on one rank -> non-zero exit
    assert "imgs/missing.png" in output and "FAILED" in output
    assert tree(two) == tree(one) and len(tree(one)) == 2
