"""Quality and speed of the fast-inference modes, in ONE run: ShapeWorld Overall ± std per mode, same cases,
same seeds, rounds interleaved (round 0 of every mode, then round 1, ...) so that machine noise hits all
modes alike.

    python bench/quality_bench.py                              # tiny model, first 150 held-out cases, 2 rounds
    python bench/quality_bench.py --modes none taylorseer int8 taylorseer+int8 --num_cases 30

A mode is ``+``-joined parts: ``none`` (exact), ``taylorseer`` / ``taylorseer_uncond`` (step cache, default
settings), ``int8`` / ``fp8`` (weights), ``compile`` (``--compile``; compiled before the timed rounds, on a batch of
the first cases and one a case shorter, so that the graphs are dynamic in the batch size), ``interval=N`` / ``order=N`` / ``warmup=N`` / ``final=N`` (cache
settings). Prints one Markdown table: Overall ± std over rounds, Avg COM / DIS, network evaluations
(CFG-branch forwards) per image, seconds per image and the speed-up over the first mode.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

log = logging.getLogger("quality_bench")

CACHE_KEYS = {
    "interval": "cache_interval",
    "order": "cache_order",
    "warmup": "cache_warmup_steps",
    "final": "cache_final_steps",
}


@dataclass
class Mode:
    name: str
    weights: str | None = None
    compile: bool = False
    sampling: dict = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0
    evaluations: int = 0


def parse_mode(text: str) -> Mode:
    mode = Mode(text)
    for part in text.split("+"):
        if part in ("none", "taylorseer", "taylorseer_uncond"):
            mode.sampling["cache"] = part
        elif part in ("int8", "fp8", "int8_und", "bf16", "fp16", "fp32"):
            mode.weights = part
        elif part == "compile":
            mode.compile = True
        elif "=" in part and part.split("=")[0] in CACHE_KEYS:
            k, v = part.split("=")
            mode.sampling[CACHE_KEYS[k]] = int(v)
        else:
            raise SystemExit(f"unknown mode part {part!r} in {text!r}")
    return mode


class Counting:
    """A pipeline whose generate_batch also counts images and network evaluations."""

    def __init__(self, pipe, mode: Mode):
        self.pipe, self.mode, self.sampling = pipe, mode, pipe.sampling

    def generate_batch(self, requests, **kwargs):
        outs = self.pipe.generate_batch(requests, **kwargs)
        self.mode.images += len(outs)
        self.mode.evaluations += sum(o.evaluations for o in outs)
        return outs


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=os.path.join(ROOT, "ckpts", "scone-tiny"))
    p.add_argument(
        "--modes", nargs="+", default=["none", "taylorseer", "taylorseer_uncond", "int8", "taylorseer+int8"]
    )
    p.add_argument("--num_cases", type=int, default=150, help="first N held-out cases of world seed 0")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    from data.synthetic.make_shapeworld import make_shapeworld
    from eval.shapeworld import score_benchmark
    from inference.benchmark import generate_benchmark, load_cases
    from inference.pipeline import SconePipeline
    from modeling.weight_formats import compute_dtype

    work = Path(args.work or tempfile.mkdtemp(prefix="quality_bench_"))
    world = work / f"world0_{args.num_cases}"
    if not (world / "bench" / "data.jsonl").is_file():
        make_shapeworld(str(world), num_train=0, num_eval=args.num_cases, seed=0, overwrite=True)
    bench = world / "bench"
    cases, problems, _ = load_cases("jsonl", bench)
    if problems:
        raise SystemExit(f"bad benchmark lines: {problems}")
    modes = [parse_mode(m) for m in args.modes]
    dtype = compute_dtype("auto", torch.device(args.device).type)
    pipes = {}
    for m in modes:
        if (m.weights, m.compile) not in pipes:
            pipes[m.weights, m.compile] = SconePipeline.from_pretrained(
                args.model_path, device=args.device, dtype=dtype, weights=m.weights, compile=m.compile
            )
    for (_, compiled), pipe in pipes.items():
        for n in (args.batch_size, args.batch_size - 1) if compiled else ():
            warm = work / "warmup" / str(n)
            generate_benchmark(pipe, cases[:n], bench, warm, rounds=1, seed=0, batch_size=n, progress=False)
    for r in range(1, args.rounds + 1):  # one more round of every mode per pass: modes interleaved in time
        for m in modes:
            pipe = pipes[m.weights, m.compile]
            out = work / "gen" / m.name
            start = time.monotonic()
            report = generate_benchmark(
                Counting(pipe, m),
                cases,
                bench,
                out,
                rounds=r,
                seed=0,
                batch_size=args.batch_size,
                sampling=pipe.sampling.replace(**m.sampling),
                progress=False,
            )
            m.seconds += time.monotonic() - start
            if report.failures:
                raise SystemExit(f"{m.name}: generation failed: {report.failures[:3]}")
            log.info("%s round %d: %.1f s", m.name, r - 1, time.monotonic() - start)
    rows = []
    for m in modes:
        res = score_benchmark(str(bench), str(work / "gen" / m.name), rounds=args.rounds, progress=False)
        mean, std = res["mean"], res["std"]
        rows.append(
            (
                m,
                mean["leaderboard.overall"],
                std["leaderboard.overall"],
                mean["leaderboard.avg_COM"],
                mean["leaderboard.avg_DIS"],
            )
        )
    base = modes[0].seconds / max(1, modes[0].images)
    base_eval = modes[0].evaluations / max(1, modes[0].images)
    print(
        f"\nShapeWorld, {os.path.basename(os.path.normpath(args.model_path))}, first {args.num_cases} held-out cases, "
        f"{args.rounds} rounds, {args.device}, batch {args.batch_size}\n"
    )
    print("| mode | Overall ± std | Avg COM | Avg DIS | evaluations / image | s / image | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for m, overall, sd, com, dis in rows:
        per = m.seconds / max(1, m.images)
        ev = m.evaluations / max(1, m.images)
        print(
            f"| {m.name} | {overall:.2f} ± {sd:.2f} | {com:.2f} | {dis:.2f} | {ev:.1f} ({base_eval / ev:.2f}x fewer) "
            f"| {per:.3f} | {base / per:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
