"""Benchmark image generation (OmniContext-jsonl / SconeEval / PSRBench layouts), one process per GPU.

    torchrun --nproc_per_node 4 -m inference.benchmark --model_path ckpts/Scone \\
        --benchmark_dir datasets/SconeEval --output_dir results/sconeeval/Scone --rounds 3
    python -m inference.benchmark ...  # one plain process works too; ``eval.generate`` is the same command

Writes `{output_dir}/round{i}/{task_type}/{key}.png` for i < --rounds, plus one settings line per image
in `{output_dir}/generation_log.rank{r}.jsonl`. Every image has its own seed derived from
(--seed, task_type, key, round), so it does not depend on the number of processes, on the order of work
or on resuming (`--seed_mode global` instead reproduces upstream's single seeded stream). Images are
written atomically (temp file + rename): rerunning the command skips every image already written and
regenerates only missing or unreadable ones. A failing case is reported at the end and does not stop
the others; the exit code is 1 if anything failed (0 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from data.benchmark_cases import BenchmarkCase, input_image_paths, read_cases
from inference.cli_common import (
    USER_ERRORS,
    add_model_args,
    add_think_args,
    default_model_path,
    load_pipeline,
    report_user_error,
    resolve_device_dtype,
)
from inference.sampling import SamplingConfig, add_sampling_args, sampling_overrides
from modeling.files import give_default_mode
from modeling.weight_formats import float_format_name

log = logging.getLogger("inference.benchmark")
_STARTED = time.time()  # temp files older than this process are left over from an interrupted run


@dataclass
class Job:
    """One image to generate: a case in one sampling round."""

    case: BenchmarkCase
    round: int
    out_path: Path
    seed: int | None


@dataclass
class RunReport:
    generated: int = 0
    skipped: int = 0  # already written and readable
    regenerated: int = 0  # existed but unreadable
    failures: list[dict] = field(default_factory=list)  # {"round", "case", "reason"}


def sample_seed(base_seed: int, task_type: str, key: str, rnd: int) -> int:
    """Per-image seed in [0, 2^31): a hash of (base seed, task type, key, round)."""
    digest = hashlib.sha256(f"{base_seed}|{task_type}|{key}|{rnd}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31)


def build_jobs(
    cases: list[BenchmarkCase], output_dir: Path, rounds: int, base_seed: int, per_sample_seed: bool = True
) -> list[Job]:
    """All (round, case) jobs, round-major in file order (the same list on every rank)."""
    return [
        Job(
            c,
            r,
            output_dir / f"round{r}" / c.task_type / f"{c.key}.png",
            sample_seed(base_seed, c.task_type, c.key, r) if per_sample_seed else None,
        )
        for r in range(rounds)
        for c in cases
    ]


def shard(jobs: list[Job], rank: int, world_size: int) -> list[Job]:
    """Strided split: independent of what is already done (every rank sees the same full list), and task
    types stay mixed across ranks so they finish at about the same time."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return jobs[rank::world_size]


def is_valid_image(path: Path) -> bool:
    """True if `path` decodes completely as an image."""
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def atomic_save_png(img: Image.Image, path: Path) -> None:
    """Save via a temp file in the same folder + os.replace, so a kill never leaves half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        give_default_mode(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_images(output_dir: Path, before: float) -> list[Path]:
    """Delete the ``.*.png.tmp`` files an interrupted write left under ``output_dir`` (older than ``before``,
    so that another rank's write in progress is never touched). Returns what was removed."""
    removed = []
    for tmp in output_dir.rglob(".*.png.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < before:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another rank removed it first
            pass
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run under %s", len(removed), output_dir)
    return removed


def run_jobs(
    pipe,
    jobs: list[Job],
    benchmark_dir: Path,
    settings: SamplingConfig,
    batch_size: int = 1,
    rank: int = 0,
    log_file: Path | None = None,
    log_extra: dict | None = None,
    progress: bool = True,
    think: dict | None = None,
) -> RunReport:
    """Generate this rank's `jobs` with `pipe` (anything with `generate_batch(requests, sampling=...)`).

    Existing readable outputs are skipped; cases whose inputs are bad (path escaping the benchmark
    folder, missing file) or whose generation raises are recorded in the report; the rest go on.
    ``think``: think-mode arguments of ``generate_batch`` (``{"think": True, "max_think_tokens": n}``);
    each case's reasoning is logged with it.
    """
    from inference.pipeline import GenerationRequest

    report = RunReport()
    todo: list[tuple[Job, list[Path]]] = []
    for job in jobs:
        if job.out_path.exists():
            if is_valid_image(job.out_path):
                report.skipped += 1
                continue
            log.warning("unreadable existing output %s: regenerating it", job.out_path)
            report.regenerated += 1
        try:
            todo.append((job, input_image_paths(job.case, benchmark_dir)))
        except (ValueError, OSError) as e:
            report.failures.append({"round": job.round, "case": job.case.uid, "reason": str(e)})

    def write_log(job: Job, seconds: float, thought: str | None) -> None:
        if log_file is None:
            return
        line = {
            "round": job.round,
            "task_type": job.case.task_type,
            "key": job.case.key,
            "image": str(job.out_path),
            "seed": job.seed,
            "instruction": job.case.instruction,
            "input_images": job.case.input_images,
            **settings.as_dict(),
            "batch_size": batch_size,
            "rank": rank,
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(log_extra or {}),
            **({"thought": thought} if thought is not None else {}),
        }
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    def generate(batch: list[tuple[Job, list[Path]]]) -> None:
        t0 = time.time()
        reqs = [
            GenerationRequest(images=list(paths), prompt=j.case.instruction, seed=j.seed)
            for j, paths in batch
        ]
        try:
            outs = pipe.generate_batch(reqs, sampling=settings, **(think or {}))
            if len(outs) != len(batch):
                raise RuntimeError(f"pipeline returned {len(outs)} images for {len(batch)} requests")
        except Exception as e:  # noqa: BLE001 -- one bad case must not kill the others
            if len(batch) > 1:
                log.warning(
                    "batch of %d failed (%s: %s); retrying its cases one by one",
                    len(batch),
                    type(e).__name__,
                    e,
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for item in batch:
                    generate([item])
                return
            job = batch[0][0]
            log.error("round%d %s failed: %s: %s", job.round, job.case.uid, type(e).__name__, e)
            report.failures.append(
                {"round": job.round, "case": job.case.uid, "reason": f"{type(e).__name__}: {e}"}
            )
            return
        dt = (time.time() - t0) / len(batch)
        for (job, _), out in zip(batch, outs):
            atomic_save_png(out.image, job.out_path)
            write_log(job, dt, getattr(out, "thought", None))
            report.generated += 1

    bar = tqdm(total=len(todo), desc=f"rank {rank}", position=rank, disable=not progress, dynamic_ncols=True)
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        generate(batch)
        bar.update(len(batch))
    bar.close()
    return report


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)  # --device auto: each rank's own GPU (LOCAL_RANK), else the CPU
    p.add_argument(
        "--benchmark",
        choices=("jsonl", "psrbench"),
        default="jsonl",
        help="jsonl: OmniContext-jsonl / SconeEval layout; psrbench: the 7 PSRBench subset JSON files",
    )
    p.add_argument(
        "--benchmark_dir",
        "--data_root",
        dest="benchmark_dir",
        required=True,
        help="folder holding data.jsonl (or PSRBench's subset JSONs) and the input images",
    )
    p.add_argument(
        "--metadata_file", default=None, help=".jsonl or .json (default {benchmark_dir}/data.jsonl)"
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument("--rounds", type=int, default=1, help="sampling rounds -> round0..round{N-1}")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--seed_mode",
        choices=("per_sample", "global"),
        default="per_sample",
        help="global: seed torch once before loading (upstream behaviour; depends on order and world size)",
    )
    p.add_argument("--batch_size", type=int, default=1, help="cases per forward pass")
    add_sampling_args(p)
    add_think_args(p)
    p.add_argument(
        "--vae_transform", type=int, nargs=3, default=None, help="max min stride (default: the model's)"
    )
    p.add_argument(
        "--vit_transform", type=int, nargs=3, default=None, help="max min stride (default: the model's)"
    )
    p.add_argument("--task_types", nargs="*", default=None, help="only these task types")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases (smoke runs)")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1:
        p.error("--rounds and --batch_size must be >= 1")
    if args.seed_mode == "global" and args.batch_size != 1:
        p.error("--seed_mode global needs --batch_size 1 (it reproduces upstream's sequential stream)")
    return args


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def load_cases(benchmark: str, benchmark_dir: Path, metadata_file=None, task_types=None, limit=None):
    """(cases, problems, psrbench cases or None) of a benchmark folder; ``problems`` are bad jsonl lines."""
    psr_cases = None
    if benchmark == "psrbench":
        from data.psrbench_cases import load_psrbench_cases

        psr_cases = load_psrbench_cases(benchmark_dir, subsets=task_types)
        cases = [
            BenchmarkCase(c.key, c.task_type, c.instruction, list(c.input_relpaths), raw=c.record)
            for c in psr_cases
        ]
        problems = []
    else:
        cases, problems = read_cases(metadata_file or benchmark_dir / "data.jsonl")
    if task_types:
        cases = [c for c in cases if c.task_type in task_types]
    if limit is not None:
        cases = cases[:limit]
    return cases, problems, psr_cases


def generate_benchmark(
    pipe,
    cases: list[BenchmarkCase],
    benchmark_dir: Path,
    output_dir: Path,
    *,
    rounds: int = 1,
    seed: int = 1234,
    per_sample_seed: bool = True,
    batch_size: int = 1,
    sampling: SamplingConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    log_extra: dict | None = None,
    progress: bool = True,
    think: dict | None = None,
) -> RunReport:
    """Generate this rank's share of ``rounds`` x ``cases`` into ``output_dir`` (resumable, see the module
    docstring). ``sampling`` defaults to the pipeline's own settings (``pipe.sampling``)."""
    jobs = shard(build_jobs(cases, output_dir, rounds, seed, per_sample_seed), rank, world_size)
    log.info("%d case(s) x %d round(s); this rank: %d job(s)", len(cases), rounds, len(jobs))
    settings = sampling or getattr(pipe, "sampling", None) or SamplingConfig()
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_images(output_dir, before=_STARTED)
    log_file = output_dir / f"generation_log.rank{rank}.jsonl"
    return run_jobs(
        pipe, jobs, benchmark_dir, settings, batch_size, rank, log_file, log_extra, progress, think
    )


def main(argv: list[str] | None = None, pipe=None) -> int:
    """CLI entry point; `pipe` lets tests inject an already loaded pipeline."""
    args = parse_args(argv)
    rank, world, local_rank = _dist_env()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    use_cuda = torch.cuda.is_available()
    use_dist = world > 1 and "MASTER_ADDR" in os.environ
    if world > 1 and not use_dist:
        log.warning(
            "WORLD_SIZE=%d without MASTER_ADDR: running shard %d on its own (no rendezvous)", world, rank
        )
    if use_dist:
        import torch.distributed as dist

        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    device = args.device
    if device == "auto":
        device = f"cuda:{local_rank}" if use_cuda else "cpu"

    benchmark_dir, output_dir = Path(args.benchmark_dir), Path(args.output_dir)
    cases, problems, psr_cases = load_cases(
        args.benchmark, benchmark_dir, args.metadata_file, args.task_types, args.limit
    )
    if args.seed_mode == "global":
        torch.manual_seed(args.seed)  # before loading, like upstream
    if pipe is None:
        try:
            args.model_path = default_model_path(args.model_path)
            pipe = load_pipeline(
                args,
                device,
                vae_transform=None if args.vae_transform is None else tuple(args.vae_transform),
                vit_transform=None if args.vit_transform is None else tuple(args.vit_transform),
            )
        except USER_ERRORS as e:
            return report_user_error(log, e, args.debug)
    sampling = getattr(pipe, "sampling", SamplingConfig()).replace(**sampling_overrides(args))
    extra = {
        "model_path": args.model_path,
        "weights_file": args.weights_file,
        "seed_mode": args.seed_mode,
        "think": args.think,
        "base_seed": args.seed,
        "world_size": world,
        "dtype": float_format_name(resolve_device_dtype(device, args.dtype)[1]),
    }
    report = generate_benchmark(
        pipe,
        cases,
        benchmark_dir,
        output_dir,
        rounds=args.rounds,
        seed=args.seed,
        per_sample_seed=args.seed_mode == "per_sample",
        batch_size=args.batch_size,
        sampling=sampling,
        rank=rank,
        world_size=world,
        log_extra=extra,
        progress=not args.no_progress,
        think={"think": True, "max_think_tokens": args.max_think_tokens} if args.think else None,
    )
    failures = list(report.failures)
    if rank == 0:
        failures += [{"round": None, "case": p.where, "reason": p.reason} for p in problems]
    counts = {"generated": report.generated, "skipped": report.skipped, "regenerated": report.regenerated}
    if use_dist:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (failures, counts))
        failures = [f for fl, _ in gathered for f in fl]
        counts = {k: sum(c[k] for _, c in gathered) for k in counts}
        dist.barrier()
        dist.destroy_process_group()
    if psr_cases is not None and rank == 0:
        from data.psrbench_cases import write_results_json

        # PSR's evaluators read {subset}.json with a result_path per entry
        for r in range(args.rounds):
            write_results_json(psr_cases, output_dir / f"round{r}")
    if rank == 0 or not use_dist:
        log.info("done: %s, failed %d", ", ".join(f"{k} {v}" for k, v in counts.items()), len(failures))
        for f in failures:
            log.error(
                "FAILED %s%s: %s",
                f"round{f['round']} " if f["round"] is not None else "",
                f["case"],
                f["reason"],
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
