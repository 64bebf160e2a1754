"""Benchmark the generation engine on a random-initialised model.

    python -m bench.inference_bench --config tiny --device cpu --resolution 256 --num_refs 2 --steps 4
    python -m bench.inference_bench --config 7b --device cuda --resolution 1024 --num_refs 2 --steps 10
    python -m bench.inference_bench --config 7b --device cuda --resolution 1024 --steps 49 \
        --modes none taylorseer int8 taylorseer+int8

``7b`` builds the released BAGEL-7B-MoT geometry (14.6 B parameters, ~29 GB in bf16) directly on the
device. Prints context-build seconds, seconds per denoising step (batched CFG: all branches in one
forward, and upstream-style serial branches), and peak memory. ``--modes`` instead times whole images for
each combination of step cache, weight format and ``compile`` (``+``-joined, as bench/quality_bench.py): seconds per
denoising step (amortised over the run), seconds per image, network evaluations (CFG-branch forwards) per
image, peak GPU memory and the decoder weights' bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time

import torch
from PIL import Image

from inference.pipeline import GenerationRequest, SconePipeline
from modeling.autoencoder import AutoEncoder, AutoEncoderParams
from modeling.bagel import Bagel
from modeling.checkpoint import LoadedModel
from modeling.config import BagelConfig, LLMConfig
from modeling.siglip import SiglipVisionConfig
from modeling.tokenizer import load_tokenizer
from modeling.weight_formats import compute_dtype

FIXTURE_TOKENIZER = os.path.join(
    os.path.dirname(__file__), "..", "tests", "fixtures", "bagel-tiny", "checkpoint"
)

CONFIGS = {
    "tiny": dict(
        llm=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=384,
        ),
        vit=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        vae=dict(ch=32, ch_mult=(1, 1, 1, 2), num_res_blocks=1),
    ),
    # the CPU comparison setup of bench/upstream_compare.py (LLM 512 x 12 layers, 8/2 heads; ViT 256 x 4)
    "cpu512": dict(
        llm=dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=384,
        ),
        vit=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
        vae=dict(ch=32, ch_mult=(1, 1, 1, 2), num_res_blocks=1),
    ),
    "7b": dict(
        llm=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),
        vit=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16),
        vae=dict(),
    ),
}


def build(config: str, device: torch.device, dtype: torch.dtype) -> SconePipeline:
    c = CONFIGS[config]
    cfg = BagelConfig(
        llm=LLMConfig(**c["llm"]), vit=SiglipVisionConfig(**c["vit"]), vae=AutoEncoderParams(**c["vae"])
    )
    # build directly in the target dtype: an fp32 7B model would not fit next to its bf16 copy
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Bagel(cfg)
    finally:
        torch.set_default_dtype(default)
    with torch.device(device):
        vae = AutoEncoder(cfg.vae)
    model.init_weights(seed=0)
    model.llm2vae.weight.data.normal_(0, 0.02)  # non-zero velocities so the run is not degenerate
    tok, ids, _ = load_tokenizer(FIXTURE_TOKENIZER)
    return SconePipeline(LoadedModel(model.eval(), vae.eval(), tok, ids, cfg, "<random>", "<random>"))


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num_refs", type=int, default=2)
    p.add_argument(
        "--steps", type=int, default=4, help="denoising evaluations timed (num_timesteps = steps + 1)"
    )
    p.add_argument("--batch", type=int, default=1, help="generation requests per call")
    p.add_argument("--modes", nargs="*", default=None, help="e.g. none taylorseer int8 taylorseer+int8")
    p.add_argument("--profile", action="store_true", help="print the top operators of the timed denoising")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = compute_dtype(args.dtype, device.type)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    pipe = build(args.config, device, dtype)
    n_params = sum(p.numel() for p in pipe.model.parameters())
    print(
        f"config={args.config} params={n_params / 1e9:.3f}B device={device} dtype={dtype} build_s={time.perf_counter() - t0:.1f}"
    )
    res = args.resolution
    refs = [Image.new("RGB", (res, res), (40 * i, 100, 200)) for i in range(args.num_refs)]
    pipe.vae_transform.max_image_size = max(res, 16)
    pipe.vae_transform.min_image_size = min(res, pipe.vae_transform.min_image_size)
    reqs = [
        GenerationRequest(refs, "put the object from image 1 next to the one from image 2", seed=i)
        for i in range(args.batch)
    ]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.modes:
        return bench_modes(pipe, reqs, args, sync)

    from inference.generation import denoise
    from inference.sampling import SamplingConfig

    h = w = res // pipe.config.latent_downsample
    dim = pipe.config.patch_latent_dim
    for batch_cfg in (True, False):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        images = [pipe._prepare_images(r.images) for r in reqs]
        gens = [torch.Generator().manual_seed(0) for _ in reqs]
        ids = [pipe.encode_prompt(r.prompt) for r in reqs]
        ctxs = pipe._build_contexts(reqs, ids, images, pipe._posteriors(images), gens, h, w, False, None, 0)[
            0
        ]
        sync()
        ctx_s = time.perf_counter() - t
        noises = [torch.randn(h * w, dim) for _ in reqs]
        kw = dict(batch_branches=batch_cfg)
        denoise(
            pipe.model,
            ctxs,
            noises,
            [(h, w)] * len(reqs),
            pipe.special,
            SamplingConfig(num_timesteps=2),
            **kw,
        )
        sync()
        prof = torch.profiler.profile() if args.profile else contextlib.nullcontext()
        t = time.perf_counter()
        with prof:
            denoise(
                pipe.model,
                ctxs,
                noises,
                [(h, w)] * len(reqs),
                pipe.special,
                SamplingConfig(num_timesteps=args.steps + 1),
                **kw,
            )
        sync()
        per_step = (time.perf_counter() - t) / args.steps
        if args.profile:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(
            f"{'batched' if batch_cfg else 'serial '} CFG: context_build_s={ctx_s:.3f} s_per_step={per_step:.4f} "
            f"peak_mem_GiB={peak:.2f} (res={res}, refs={args.num_refs}, batch={args.batch}, 3 CFG branches)"
        )


def bench_modes(pipe: SconePipeline, reqs: list, args, sync) -> None:
    """One row per mode: whole images (context, denoising, decoding), same requests and seeds."""
    from bench.quality_bench import parse_mode
    from modeling.weight_formats import QUANTIZED_FORMATS, quantize_model, quantized_keys, storage_bytes

    device = pipe.device
    modes = [parse_mode(m) for m in args.modes]
    res, steps = args.resolution, args.steps
    sampling = pipe.sampling.replace(height=res, width=res, num_timesteps=steps + 1)
    print("| mode | s / step | s / image | evaluations / image | peak GiB | decoder weights GiB |")
    print("|---|---|---|---|---|---|")
    # float modes first: quantizing is in place, so the quantized modes come after every float one
    for m in sorted(modes, key=lambda m: m.weights is not None):
        if m.weights in QUANTIZED_FORMATS:
            done = getattr(pipe, "_quantized", None)
            if done is None:
                quantize_model(pipe.model, m.weights)
                pipe._quantized = m.weights
            elif done != m.weights:
                raise SystemExit("one quantized weight format per run")
        params = dict(pipe.model.named_parameters())
        wbytes = sum(storage_bytes(params[k]) for k in quantized_keys(pipe.model)) / 2**30
        cfg = sampling.replace(**m.sampling)
        pipe.model.language_model.compile_layers(m.compile)
        pipe.generate_batch(reqs, sampling=cfg.replace(num_timesteps=2))  # warm-up (and compile)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        marks = []
        sync()
        t = time.perf_counter()
        outs = pipe.generate_batch(
            reqs, sampling=cfg, callback=lambda i, n, marks=marks: marks.append(time.perf_counter())
        )
        sync()
        total = time.perf_counter() - t
        per_step = (marks[-1] - marks[0]) / max(1, len(marks) - 1)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        evals = sum(o.evaluations for o in outs) / len(outs)
        print(
            f"| {m.name} | {per_step:.4f} | {total / len(reqs):.3f} | {evals:.1f} | {peak:.2f} | {wbytes:.3f} |"
        )


if __name__ == "__main__":
    main()
