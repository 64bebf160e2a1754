"""One command, one table: every inference mode and a training step on the released 7B geometry.

    python -m bench.gpu_suite                # one H100-class GPU: 7B geometry, bf16, 1024², 2 references
    python -m bench.gpu_suite --smoke        # any CPU: tiny geometry, fp32, 64², 8 timesteps (a CI test)

Random weights in the released BAGEL-7B-MoT geometry (``bench/inference_bench.py``'s ``7b``), Scone's CFG
settings (``SamplingConfig``'s defaults) at ``--timesteps`` (50). Each mode generates one warm-up image
(2 timesteps; a compiled mode compiles there) and one timed image; a row gives the median seconds per
denoising step, the seconds for the whole image (context, denoising, VAE decode), the network evaluations
of its CFG branches and the peak GPU memory. Modes join parts with ``+``:

* ``eager`` the plain path; ``compile`` the decoder layers through ``torch.compile`` (``--compile``);
* ``cache`` the TaylorSeer step cache with its defaults (``--cache taylorseer``);
* ``int8`` / ``fp8`` weight-only quantized decoder blocks (``--weights``); ``offload`` group offload, one
  decoder block in GPU memory at a time (``--offload group``).

The float modes share one model; the quantized ones each build their own (quantizing is in place), the
offloaded ones move the float model's blocks to CPU RAM. Last, ``bench/train_bench.py`` times training
steps (forward, backward, AdamW; bf16 over fp32 master weights) on a ``--train_layers``-layer slice of the
7B geometry with 1024² targets and 2 references: tokens/s and MFU (peak from the GPU's name, or
``--peak_device_tflops``). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image

from bench.inference_bench import build
from bench.train_bench import measure
from bench.train_bench import parser as train_parser
from inference.offload import apply_group_offload
from inference.pipeline import GenerationRequest, SconePipeline
from modeling.weight_formats import compute_dtype, quantize_model

log = logging.getLogger("gpu_suite")

MODES = (
    "eager",
    "compile",
    "cache",
    "compile+cache",
    "int8",
    "int8+cache",
    "fp8",
    "fp8+compile+cache",
    "offload",
)
SMOKE_MODES = ("eager", "cache", "int8", "int8+cache", "offload")
PARTS = {"eager", "compile", "cache", "int8", "fp8", "offload"}
INSTRUCTION = "Put the object from image 1 next to the object from image 2 on a wooden table."


@dataclass(frozen=True)
class Mode:
    name: str
    weights: str | None  # None (the float model) | "int8" | "fp8"
    compile: bool
    cache: bool
    offload: bool


def parse_mode(name: str) -> Mode:
    parts = set(name.split("+"))
    unknown = parts - PARTS
    if unknown or ("int8" in parts and "fp8" in parts):
        raise SystemExit(f"bad mode {name!r}: join {sorted(PARTS)} with '+', one weight format at most")
    if "offload" in parts and (parts & {"compile", "int8", "fp8"}):
        raise SystemExit(f"bad mode {name!r}: offload streams float weights eagerly")
    weights = "int8" if "int8" in parts else "fp8" if "fp8" in parts else None
    return Mode(name, weights, "compile" in parts, "cache" in parts, "offload" in parts)


def run_mode(pipe: SconePipeline, mode: Mode, requests, sampling, sync) -> dict:
    """One warm-up image and one timed image; the row's figures."""
    pipe.model.language_model.compile_layers(mode.compile)
    cfg = sampling.replace(cache="taylorseer" if mode.cache else "none")
    pipe.generate_batch(requests, sampling=cfg.replace(num_timesteps=2))
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    marks: list[float] = []
    sync()
    start = time.perf_counter()
    outs = pipe.generate_batch(
        requests, sampling=cfg, callback=lambda i, n: marks.append(time.perf_counter())
    )
    sync()
    total = time.perf_counter() - start
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return {
        "mode": mode.name,
        "s_per_step": (marks[-1] - marks[0]) / max(1, len(gaps)),
        "median_step_s": statistics.median(gaps) if gaps else float("nan"),
        "s_per_image": total / len(requests),
        "evaluations": sum(o.evaluations for o in outs) / len(outs),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if pipe.device.type == "cuda" else None,
    }


def inference_rows(args, device, dtype, sync) -> list[dict]:
    modes = [parse_mode(m) for m in args.modes]
    res = args.resolution
    refs = [Image.new("RGB", (res, res), (40 + 90 * i, 120, 200 - 60 * i)) for i in range(args.num_refs)]
    requests = [GenerationRequest(refs, INSTRUCTION, seed=0)]
    rows = []
    # float model first (offloading last: it moves the blocks off the GPU), then one model per quantized format
    order = [None] + sorted({m.weights for m in modes if m.weights})
    for weights in order:
        group = sorted((m for m in modes if m.weights == weights), key=lambda m: m.offload)
        if not group:
            continue
        t = time.perf_counter()
        pipe = build(args.config, device, dtype)
        pipe.vae_transform.max_image_size = max(res, 16)
        pipe.vae_transform.min_image_size = min(res, pipe.vae_transform.min_image_size)
        if weights:
            quantize_model(pipe.model, weights)
        log.info("built %s weights in %.1f s", weights or str(dtype), time.perf_counter() - t)
        sampling = pipe.sampling.replace(height=res, width=res, num_timesteps=args.timesteps)
        offloaded = False
        for mode in group:
            if mode.offload and not offloaded:
                pipe.model.language_model.model.layers.to("cpu")
                pipe.offloader = apply_group_offload(pipe.model, device, 1)
                offloaded = True
            rows.append(run_mode(pipe, mode, requests, sampling, sync))
            log.info("%s", rows[-1])
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def training_row(args, device) -> dict:
    if args.smoke:
        argv = ["--preset", "tiny", "--device", str(device), "--steps", "2", "--warmup", "1"]
    else:
        argv = (
            f"--preset 7b --num_layers {args.train_layers} --device {device} --image_size 1024 --vit_size 518"
        )
        argv = argv.split() + "--num_refs 2 --samples_per_pack 1 --steps 3 --warmup 2".split()
    if args.peak_device_tflops:
        argv += ["--peak_device_tflops", str(args.peak_device_tflops)]
    return measure(train_parser().parse_args(argv))


def table(rows: list[dict], train: dict | None, header: str) -> str:
    lines = [
        header,
        "",
        "| mode | s / step | s / image | evaluations / image | peak GiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(
            f"| {r['mode']} | {r['median_step_s']:.3f} | {r['s_per_image']:.1f} | {r['evaluations']:.0f} | {peak} |"
        )
    if train is not None:
        mfu = "-" if train["mfu"] is None else f"{train['mfu']:.3f}"
        peak = "-" if train["peak_gib"] is None else f"{train['peak_gib']:.1f}"
        lines += [
            "",
            f"training step ({train['preset']}, {train['layers']} layers, {train['tokens_per_pack']} tokens/pack): "
            f"{train['step_ms']:.0f} ms, {train['tokens_per_s']:.0f} tokens/s, {train['tflops']:.1f} TFLOP/s, "
            f"MFU {mfu}, peak {peak} GiB",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny geometry on the CPU (the suite's own test)")
    p.add_argument("--modes", nargs="+", default=None, help=f"default: {' '.join(MODES)}")
    p.add_argument("--timesteps", type=int, default=None, help="default 50 (8 with --smoke)")
    p.add_argument("--resolution", type=int, default=None, help="default 1024 (64 with --smoke)")
    p.add_argument("--num_refs", type=int, default=2)
    p.add_argument("--train_layers", type=int, default=4, help="LLM layers of the training slice")
    p.add_argument("--no_train", action="store_true", help="skip the training row")
    p.add_argument(
        "--peak_device_tflops", type=float, default=0.0, help="for MFU (default: from the GPU's name)"
    )
    args = p.parse_args(argv)
    if args.smoke:
        device, args.config = torch.device("cpu"), "tiny"
        args.modes = args.modes or list(SMOKE_MODES)
        args.timesteps, args.resolution = args.timesteps or 8, args.resolution or 64
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here: run with --smoke for the CPU check")
        device, args.config = torch.device("cuda"), "7b"
        args.modes = args.modes or list(MODES)
        args.timesteps, args.resolution = args.timesteps or 50, args.resolution or 1024
    dtype = compute_dtype("auto", device.type)
    torch.set_grad_enabled(False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    rows = inference_rows(args, device, dtype, sync)
    torch.set_grad_enabled(True)
    train = None if args.no_train else training_row(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"{name}, torch {torch.__version__}, {args.config} geometry, {dtype}, {args.resolution}², "
        f"{args.num_refs} references, {args.timesteps} timesteps, Scone's CFG; suite took "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(table(rows, train, header), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
