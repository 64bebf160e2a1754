"""Command line of ``train/pretrain.py`` with upstream's argument names (docs/training.md).

Every option accepts dashes and underscores (``--resume-model-only`` = ``--resume_model_only``), booleans
accept upstream's ``--flag True`` / ``--flag False`` as well as a bare ``--flag``, and unique prefixes
work (``--num_worker 3``) as with upstream's HfArgumentParser.
"""

from __future__ import annotations

import argparse
import json

import torch


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "t", "yes", "y"):
        return True
    if s in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {v!r}")


def _add(group, name: str, **kw):
    """Register ``--name`` and, for names with underscores, ``--name-with-dashes``."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    if kw.get("type") is bool:
        kw["type"] = str2bool
        kw.setdefault("nargs", "?")
        kw.setdefault("const", True)
    return group.add_argument(*names, dest=name, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Scone / BAGEL unified training (FSDP2). Launch with torchrun, or plainly for one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    _add(
        g,
        "model_path",
        default=None,
        help="released-layout folder: llm_config.json, vit_config.json, ae.safetensors, tokenizer, weights",
    )
    _add(
        g,
        "finetune_from_hf",
        type=bool,
        default=True,
        help="build from --model_path (the only supported way)",
    )
    _add(
        g, "llm_path", default=None, help="(upstream) separate HF LLM folder: not supported, use --model_path"
    )
    _add(g, "vae_path", default=None, help="(upstream) separate VAE file: not supported, use --model_path")
    _add(
        g, "vit_path", default=None, help="(upstream) separate SigLIP folder: not supported, use --model_path"
    )
    _add(
        g,
        "layer_module",
        default="Qwen2MoTDecoderLayer",
        help="must be Qwen2MoTDecoderLayer (released checkpoints)",
    )
    _add(g, "llm_qk_norm", type=bool, default=True)
    _add(g, "tie_word_embeddings", type=bool, default=False)
    _add(
        g,
        "max_latent_size",
        type=int,
        default=None,
        help="checked against the checkpoint (64 for released ones)",
    )
    _add(g, "latent_patch_size", type=int, default=2)
    _add(g, "vit_patch_size", type=int, default=14)
    _add(g, "vit_max_num_patch_per_side", type=int, default=70)
    _add(g, "connector_act", default="gelu_pytorch_tanh")
    _add(g, "interpolate_pos", type=bool, default=False)
    _add(g, "vit_select_layer", type=int, default=-2)
    _add(g, "vit_rope", type=bool, default=False)
    _add(g, "text_cond_dropout_prob", type=float, default=0.1)
    _add(g, "vae_cond_dropout_prob", type=float, default=0.3)
    _add(g, "vit_cond_dropout_prob", type=float, default=0.3)
    _add(
        g,
        "copy_init_moe",
        type=bool,
        default=True,
        help="(upstream) only matters for random init; weights are always loaded",
    )
    _add(
        g,
        "freeze_und",
        type=bool,
        default=False,
        help="upstream's flag that detaches und-path activations; only False (every released run) is supported",
    )

    g = p.add_argument_group("data")
    _add(g, "dataset_config_file", default=None, help="YAML of dataset groups (data/configs/*.yaml)")
    _add(
        g,
        "data_root",
        default=None,
        help="root that relative data_dir / parquet_info paths are resolved against",
    )
    _add(
        g,
        "synthetic_data",
        type=bool,
        default=False,
        help="random s2i-shaped packs instead of files (tests, benchmarks)",
    )
    _add(
        g,
        "synthetic_spec",
        type=json.loads,
        default={},
        help='JSON overrides of train.synthetic.SyntheticSpec, e.g. \'{"text_loss": true, "num_distinct": 2}\'',
    )
    _add(g, "prefetch_factor", type=int, default=2)
    _add(g, "num_workers", type=int, default=4)
    _add(g, "max_num_tokens_per_sample", type=int, default=16384)
    _add(g, "max_num_tokens", type=int, default=36864)
    _add(g, "prefer_buffer_before", type=int, default=16384)
    _add(g, "max_buffer_size", type=int, default=50)
    _add(g, "expected_num_tokens", type=int, default=32768)
    _add(g, "data_seed", type=int, default=42)

    g = p.add_argument_group("training")
    _add(g, "visual_gen", type=bool, default=True)
    _add(g, "visual_und", type=bool, default=True)
    _add(g, "results_dir", default="results", help="logs and metrics.jsonl")
    _add(g, "checkpoint_dir", default="results/checkpoints")
    _add(g, "global_seed", type=int, default=4396)
    _add(g, "auto_resume", type=bool, default=False)
    _add(g, "resume_from", default=None)
    _add(g, "resume_model_only", type=bool, default=False)
    _add(g, "finetune_from_ema", type=bool, default=False)
    _add(g, "log_every", type=int, default=10)
    _add(g, "save_every", type=int, default=2000)
    _add(g, "total_steps", type=int, default=100_000)
    _add(g, "warmup_steps", type=int, default=2000)
    _add(g, "lr_scheduler", default="constant", choices=["constant", "cosine"])
    _add(g, "lr", type=float, default=1e-4)
    _add(g, "min_lr", type=float, default=1e-7)
    _add(g, "beta1", type=float, default=0.9)
    _add(g, "beta2", type=float, default=0.95)
    _add(g, "eps", type=float, default=1e-15)
    _add(g, "ema", type=float, default=0.0, help="EMA decay (e.g. 0.9999 like BAGEL); 0 = off (Scone)")
    _add(g, "max_grad_norm", type=float, default=1.0)
    _add(g, "timestep_shift", type=float, default=1.0)
    _add(g, "mse_weight", type=float, default=1.0)
    _add(g, "ce_weight", type=float, default=1.0)
    _add(g, "ce_loss_reweighting", type=bool, default=False)
    _add(g, "gradient_accumulation_steps", type=int, default=1)
    _add(
        g,
        "max_nonfinite_steps",
        type=int,
        default=20,
        help="stop after this many consecutive non-finite steps",
    )
    _add(
        g,
        "check_finite_every",
        type=int,
        default=100,
        help="check that every weight is finite every N steps (and before every save); stop if not",
    )
    _add(
        g, "use_semantic_mask", type=bool, default=False, help="Scone understanding bridge (stage II step 1)"
    )
    _add(g, "use_flex", type=bool, default=False, help="(upstream) FlexAttention path: not supported")

    g = p.add_argument_group("freezing")
    _add(g, "freeze_vae", type=bool, default=True)
    _add(
        g,
        "vae_cache_gb",
        type=float,
        default=0.0,
        help="keep the frozen VAE's posteriors of up to this many GB in host memory (train/vae_cache.py); "
        "0 = off, as upstream. Worth it when the encoder is a large part of a step (tiny models, CPU)",
    )
    _add(
        g,
        "vae_cache_file",
        default="",
        help="load the posterior cache from / save it to this safetensors file (per rank: .rank<r> added when "
        "there are several), so later stages on the same images start warm; needs --vae_cache_gb",
    )
    _add(g, "freeze_vit", type=bool, default=False)
    _add(g, "freeze_llm", type=bool, default=False)
    _add(g, "freeze_llm_und", type=bool, default=False)
    _add(g, "freeze_llm_gen", type=bool, default=False)
    _add(g, "freeze_mlp_und", type=bool, default=False)
    _add(g, "freeze_mlp_gen", type=bool, default=False)

    g = p.add_argument_group("LoRA (modeling/lora.py)")
    _add(
        g,
        "lora_rank",
        type=int,
        default=0,
        help="> 0: train LoRA adapters of this rank; the base stays frozen",
    )
    _add(g, "lora_alpha", type=float, default=None, help="LoRA alpha (scale alpha/rank; default: the rank)")
    _add(g, "lora_dropout", type=float, default=0.0)
    _add(
        g,
        "lora_targets",
        default="gen:attn,mlp;und:attn",
        help="experts and module groups to adapt: 'gen:attn,mlp;und:attn' (default; why: modeling/lora.py)",
    )
    _add(
        g,
        "lora_base_weights",
        default="dtype",
        choices=["dtype", "int8"],
        help="the frozen base under LoRA: dtype = in the compute dtype (bf16 on a GPU); int8 = the decoder "
        "blocks' linears in weight-only int8 (QLoRA-style, half the memory of bf16; one device)",
    )

    g = p.add_argument_group("parallelism and precision")
    _add(g, "sharding_strategy", default="HYBRID_SHARD", choices=["FULL_SHARD", "HYBRID_SHARD", "NO_SHARD"])
    _add(g, "num_replicate", type=int, default=1)
    _add(g, "num_shard", type=int, default=None, help="default: the world size (upstream: 8)")
    _add(
        g,
        "backward_prefetch",
        default="BACKWARD_PRE",
        help="(upstream FSDP1) FSDP2 prefetches on its own; accepted, unused",
    )
    _add(g, "cpu_offload", type=bool, default=False)
    _add(
        g,
        "load_weights_on_rank0",
        type=bool,
        default=True,
        help="with several ranks: rank 0 reads the weights and broadcasts them, the others build on the meta "
        "device (host RAM per rank: a shard, not the model). False: every rank reads the whole file",
    )
    _add(g, "activation_checkpointing", type=bool, default=True)
    _add(g, "device", default="auto", choices=["auto", "cpu", "cuda"])
    _add(
        g,
        "dtype",
        default="auto",
        choices=["auto", "bf16", "bfloat16", "fp32", "float32"],
        help="compute dtype; master weights and saved checkpoints stay fp32. auto = bf16 on CUDA, fp32 on CPU",
    )
    _add(
        g,
        "reduce_dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="gradient reduction dtype (upstream bf16)",
    )
    _add(
        g,
        "upstream_compat",
        type=bool,
        default=False,
        help="reproduce upstream numerics where they differ (bf16 grad reduction)",
    )
    _add(
        g,
        "peak_device_tflops",
        type=float,
        default=0.0,
        help="per-device peak for MFU; 0 = guess from the GPU name",
    )

    g = p.add_argument_group("wandb")
    _add(g, "wandb_project", default=None, help="enable W&B logging into this project (off by default)")
    _add(g, "wandb_name", default=None)
    _add(g, "wandb_runid", default=None)
    _add(g, "wandb_resume", default="allow")
    _add(g, "wandb_offline", type=bool, default=False)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    validate_args(args)
    return args


def validate_args(args) -> None:
    """Reject combinations the reimplementation does not support, naming the option."""
    if args.model_path is None:
        raise SystemExit("--model_path is required (a released-layout folder)")
    if args.freeze_und:
        raise SystemExit("--freeze_und True is not supported (every released run trains with False)")
    if not args.finetune_from_hf or args.llm_path or args.vae_path or args.vit_path:
        raise SystemExit(
            "building from separate --llm_path/--vit_path/--vae_path checkpoints is not supported; pass a "
            "released-layout folder as --model_path (with --finetune_from_hf True)"
        )
    checks = {
        "layer_module": (args.layer_module, "Qwen2MoTDecoderLayer"),
        "llm_qk_norm": (args.llm_qk_norm, True),
        "tie_word_embeddings": (args.tie_word_embeddings, False),
        "vit_select_layer": (args.vit_select_layer, -2),
        "vit_rope": (args.vit_rope, False),
        "use_flex": (args.use_flex, False),
        "visual_gen": (args.visual_gen, True),
        "visual_und": (args.visual_und, True),
    }
    for name, (got, want) in checks.items():
        if got != want:
            raise SystemExit(f"--{name} {got} is not supported (released checkpoints need {want})")
    if not args.synthetic_data and not args.dataset_config_file:
        raise SystemExit("give --dataset_config_file (or --synthetic_data for a smoke run)")
    if args.gradient_accumulation_steps < 1:
        raise SystemExit("--gradient_accumulation_steps must be >= 1")
    if args.vae_cache_gb < 0 or (args.vae_cache_gb > 0 and not args.freeze_vae):
        raise SystemExit("--vae_cache_gb needs a frozen VAE (--freeze_vae True) and a value >= 0")
    if args.vae_cache_file and args.vae_cache_gb <= 0:
        raise SystemExit("--vae_cache_file needs --vae_cache_gb > 0")
    if args.save_every < 1 or args.log_every < 1 or args.check_finite_every < 1:
        raise SystemExit("--save_every, --log_every and --check_finite_every must be >= 1")
    if args.upstream_compat:
        args.reduce_dtype = "bf16"
    if args.lora_rank < 0 or not 0 <= args.lora_dropout < 1:
        raise SystemExit("--lora_rank must be >= 0 and --lora_dropout in [0, 1)")
    if args.lora_rank:
        from modeling.lora import parse_targets

        try:
            parse_targets(args.lora_targets)
        except ValueError as e:
            raise SystemExit(f"--lora_targets: {e}") from None
        if args.finetune_from_ema:
            raise SystemExit("--finetune_from_ema with --lora_rank: the base weights are --model_path's")
    elif args.lora_base_weights != "dtype":
        raise SystemExit("--lora_base_weights needs --lora_rank (a trained base cannot be int8)")


def compute_dtype(args, device_type: str) -> torch.dtype:
    d = args.dtype
    if d == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return torch.bfloat16 if d in ("bf16", "bfloat16") else torch.float32


def check_model_matches_args(args, config) -> None:
    """Geometry options must agree with the loaded checkpoint (they cannot change a trained model)."""
    pairs = {
        "max_latent_size": config.max_latent_size,
        "latent_patch_size": config.latent_patch_size,
        "vit_patch_size": config.vit.patch_size,
        "vit_max_num_patch_per_side": config.vit_max_num_patch_per_side,
        "connector_act": config.connector_act,
        "interpolate_pos": config.interpolate_pos,
    }
    for name, have in pairs.items():
        want = getattr(args, name)
        if want is not None and want != have:
            raise SystemExit(f"--{name} {want} does not match the checkpoint in {args.model_path} ({have})")
