"""Throughput and peak memory of one training step (VAE encode + forward + backward + AdamW step).

    python bench/train_bench.py                                   # tiny fixture model on CPU
    python bench/train_bench.py --preset 7b --num_layers 4 --device cuda --image_size 1024 --num_refs 2
    python bench/train_bench.py --image_size 96 --vit_size 70 --samples_per_pack 8 --warmup 3 --vae_cache

``--preset 7b`` builds the released BAGEL-7B-MoT geometry (H 3584, 28 heads, 4 KV heads, MLP 18944,
vocab 152064, SigLIP 1152×26, FLUX VAE) with random weights; ``--num_layers`` trims the LLM so that a
single GPU holds fp32 master weights + AdamW state (per-layer figures extrapolate linearly). Packs are
synthetic s2i samples (train/synthetic.py). Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from modeling.weight_formats import compute_dtype
from train.losses import flow_matching_losses
from train.metrics import attention_flop_coeff, dense_llm_params, guess_peak_tflops, step_flops
from train.optim import build_optimizer, clip_grad_norm
from train.parallel import apply_activation_checkpointing
from train.synthetic import SyntheticSpec, make_pack
from train.vae_cache import PosteriorCache

logger = logging.getLogger("train_bench")
FIXTURE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "tests",
    "fixtures",
    "bagel-tiny",
    "checkpoint",
)
SPECIAL_7B = {
    "bos_token_id": 151644,
    "eos_token_id": 151645,
    "start_of_image": 151652,
    "end_of_image": 151653,
}


def build_7b(num_layers: int, device: torch.device):
    from modeling.autoencoder import AutoEncoder, AutoEncoderParams
    from modeling.bagel import Bagel
    from modeling.config import BagelConfig, LLMConfig
    from modeling.siglip import SiglipVisionConfig

    llm = LLMConfig(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=num_layers,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    )
    vit = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16
    )
    cfg = BagelConfig(llm=llm, vit=vit, vae=AutoEncoderParams(), max_latent_size=64)
    with torch.device(device):
        model = Bagel(cfg)
        vae = AutoEncoder(cfg.vae)
    model.init_weights(seed=0)
    return model, vae, cfg, SPECIAL_7B


def build_tiny(device: torch.device):
    from modeling.checkpoint import load_pretrained

    loaded = load_pretrained(FIXTURE, device, torch.float32)
    return loaded.model, loaded.vae, loaded.config, loaded.special_ids.as_dict()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "7b"], default="tiny")
    p.add_argument("--num_layers", type=int, default=4, help="LLM layers for --preset 7b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="autocast dtype (auto: bf16 on CUDA)",
    )
    p.add_argument("--image_size", type=int, default=64, help="VAE side of every image (multiple of 16)")
    p.add_argument("--vit_size", type=int, default=56, help="ViT side of every reference (multiple of 14)")
    p.add_argument("--num_refs", type=int, default=2)
    p.add_argument("--samples_per_pack", type=int, default=2)
    p.add_argument("--text_len", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--activation_checkpointing", action="store_true")
    p.add_argument("--use_semantic_mask", action="store_true")
    p.add_argument(
        "--vae_cache",
        action="store_true",
        help="encode through train/vae_cache.PosteriorCache; the timed steps reuse the warmup steps' packs, so "
        "they measure a warm cache (training's --vae_cache_gb once every image has been seen)",
    )
    p.add_argument("--peak_device_tflops", type=float, default=0.0)
    return p


def measure(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps after ``args.warmup``; returns the figures ``main`` prints."""
    device = torch.device(args.device)
    dtype = compute_dtype(args.dtype, device.type)

    model, vae, cfg, special = (
        build_7b(args.num_layers, device) if args.preset == "7b" else build_tiny(device)
    )
    model.train()
    for q in vae.parameters():
        q.requires_grad_(False)
    for name in ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed"):
        model.get_parameter(name).requires_grad_(False)
    if args.activation_checkpointing:
        from modeling.qwen2_mot import MoTDecoderLayer
        from modeling.siglip import SiglipEncoderLayer

        apply_activation_checkpointing(model, (MoTDecoderLayer, SiglipEncoderLayer))
    if device.type == "cuda":  # bf16 compute over fp32 master weights, exactly like training (1-rank FSDP2)
        from train.parallel import build_mesh, init_distributed
        from train.pretrain import shard_model

        init_distributed("cuda")
        shard_model(model, build_mesh("FULL_SHARD", 1, 1, 1, "cuda"), dtype)
    opt = build_optimizer(model, 1e-5)
    params = [q for q in model.parameters() if q.requires_grad]
    spec = SyntheticSpec(
        samples_per_pack=args.samples_per_pack,
        num_refs=args.num_refs,
        image_size=args.image_size,
        vit_size=args.vit_size,
        text_len=args.text_len,
        max_latent_size=cfg.max_latent_size,
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    dense, attn = dense_llm_params(model), attention_flop_coeff(model)
    peak = args.peak_device_tflops or guess_peak_tflops(device)

    cache = PosteriorCache(2**34) if args.vae_cache else None
    if cache is not None and args.warmup < 1:
        raise SystemExit("--vae_cache needs --warmup >= 1 (the warmup steps fill the cache)")
    times, toks, flops = [], 0, 0.0
    for i in range(args.warmup + args.steps):
        k = i % args.warmup if cache is not None else i
        batch = make_pack(spec, range(k * spec.samples_per_pack, (k + 1) * spec.samples_per_pack), 0, special)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = batch.to(device)
        with torch.no_grad(), autocast:
            images = batch.vae_images
            latent = cache.encode(vae, images) if cache is not None else vae.encode(images)
        terms = flow_matching_losses(model, batch, latent, use_semantic_mask=args.use_semantic_mask)
        loss = terms.mse.float().mean()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            toks += batch.length
            flops += step_flops(dense, attn, batch.length, batch.sample_lens)
    total = sum(times)
    return {
        "preset": args.preset,
        "layers": cfg.llm.num_hidden_layers,
        "device": str(device),
        "dtype": str(dtype),
        "cache": None if cache is None else (cache.hits, cache.misses),
        "tokens_per_pack": toks // len(times),
        "step_ms": total / len(times) * 1e3,
        "tokens_per_s": toks / total,
        "dense_params": dense,
        "tflops": flops / total / 1e12,
        "mfu": flops / total / (peak * 1e12) if peak > 0 else None,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = measure(args)
    print(f"preset {r['preset']} layers {r['layers']} device {r['device']} dtype {r['dtype']}")
    if r["cache"] is not None:
        print(f"VAE posterior cache: {r['cache'][0]} hits, {r['cache'][1]} misses (timed steps all hits)")
    print(f"tokens/pack {r['tokens_per_pack']}  step {r['step_ms']:.1f} ms  tokens/s {r['tokens_per_s']:.1f}")
    print(f"dense LLM params {r['dense_params']:,}  achieved {r['tflops']:.2f} TFLOP/s", end="")
    print(f"  MFU {r['mfu']:.3f}" if r["mfu"] is not None else "")
    if r["peak_gib"] is not None:
        print(f"peak memory {r['peak_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
