"""Scone / BAGEL training entry point: small parts wired in one short loop.

    torchrun --nproc_per_node 8 train/pretrain.py --model_path ckpts/BAGEL-7B-MoT --dataset_config_file ...
    python -m train.pretrain --model_path tests/fixtures/bagel-tiny/checkpoint --synthetic_data --device cpu

One step: fetch ``gradient_accumulation_steps`` packs → all-reduce the loss-token counts → per pack
``vae.encode(seq.vae_images)`` (no grad, posterior sampled) → ``losses.flow_matching_losses`` → loss
normalised to a global per-token mean (``losses.pack_loss``) → backward → clip → skip if non-finite → AdamW step → LR → EMA →
log → save. Every random draw of the loop (VAE posterior, flow noise) comes from a generator seeded by
``(global_seed, step, global pack index)``, so runs are reproducible, resumable without RNG state and
independent of the world size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

import torch

if __package__ in (None, ""):  # `torchrun train/pretrain.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.parquet_io import DataConfigError
from modeling.errors import CheckpointError
from modeling.lora import LoraConfig, add_lora, initial_lora_state, load_adapter, parse_targets, read_adapter
from train import checkpointing as ckpt
from train.args import check_model_matches_args, compute_dtype, parse_args
from train.data_source import build_data_source, check_data
from train.freeze import FreezeFlags, apply_freeze, keep_frozen_in_eval
from train.losses import flow_matching_losses, loss_counts, pack_loss, participation_sample
from train.metrics import (
    MetricLogger,
    Throughput,
    attention_flop_coeff,
    dense_llm_params,
    guess_peak_tflops,
    peak_memory_gib,
    step_flops,
)
from train.model_setup import load_model_for_rank, resolve_start
from train.optim import (
    EMA,
    WarmupSchedule,
    all_finite,
    build_optimizer,
    clip_grad_norm,
    fill_missing_grads,
    trainable_parameters,
)
from train.parallel import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    apply_activation_checkpointing,
    apply_fsdp,
    build_mesh,
    cleanup_distributed,
    init_distributed,
    load_full_state_from_rank0,
    set_gradient_sync,
    sum_counters,
)
from train.vae_cache import PosteriorCache, vae_fingerprint

logger = logging.getLogger("train")

# Submodules sharded as their own FSDP units besides the blocks: each is only used through its forward.
FSDP_SUBMODULES = ("vit_model", "connector", "language_model.model.embed_tokens")


class NonFiniteLossError(RuntimeError):
    pass


def block_classes() -> tuple[type, ...]:
    """Per-block module classes for activation checkpointing and FSDP units."""
    from modeling.qwen2_mot import MoTDecoderLayer
    from modeling.siglip import SiglipEncoderLayer

    return (MoTDecoderLayer, SiglipEncoderLayer)


def shard_model(
    model, mesh, dtype: torch.dtype, reduce_dtype: torch.dtype = torch.float32, cpu_offload: bool = False
) -> None:
    """FSDP2 on every block, the FSDP_SUBMODULES and the root; ``dtype`` below fp32 = mixed precision
    (compute in ``dtype`` over fp32 master weights, gradients reduced in ``reduce_dtype``)."""
    mixed = dtype != torch.float32
    apply_fsdp(
        model,
        mesh,
        block_classes(),
        FSDP_SUBMODULES,
        param_dtype=dtype if mixed else None,
        reduce_dtype=reduce_dtype if mixed else None,
        cpu_offload=cpu_offload,
    )


def pack_seed(global_seed: int, step: int, pack_index: int) -> int:
    """Seed of every random draw for one pack (world-size independent)."""
    return (global_seed * 1_000_003 + step) * 10_007 + pack_index


def setup_logging(rank: int, results_dir: str | None) -> None:
    handlers = [logging.StreamHandler(sys.stdout)]
    if rank == 0 and results_dir:
        os.makedirs(results_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(results_dir, "train.log")))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def build_model(args, info: DistInfo, dtype: torch.dtype):
    """Load weights, freeze, checkpoint activations, shard. Returns (LoadedModel, start point, summary)."""
    start = resolve_start(
        args.model_path,
        args.checkpoint_dir,
        args.auto_resume,
        args.resume_from,
        args.resume_model_only,
        args.finetune_from_ema,
        lora=bool(args.lora_rank),
    )
    logger.info("start: %s", start.reason)
    from_rank0 = info.world_size > 1 and args.load_weights_on_rank0  # a 1-rank group has no one to send to
    loaded, full_state = load_model_for_rank(args.model_path, start.weights_path, info, from_rank0)
    check_model_matches_args(args, loaded.config)
    model, vae = loaded.model, loaded.vae
    flags = FreezeFlags.from_args(args)
    summary = apply_freeze(model, flags, vae, args.freeze_vae)
    if args.lora_rank:
        lora_state = attach_lora(args, model, start, dtype, info)
        if from_rank0 and full_state is not None:  # the adapters are broadcast with the base weights
            full_state.update(lora_state)
    else:
        logger.info("parameters (trainable / frozen):\n%s", summary.table())
    model.train()
    keep_frozen_in_eval(model, flags, vae, args.freeze_vae)
    vae.to(info.device)
    if args.activation_checkpointing:
        n = apply_activation_checkpointing(model, block_classes())
        logger.info("activation checkpointing on %d blocks", n)
    if info.distributed:
        num_shard = args.num_shard or info.world_size
        mesh = build_mesh(
            args.sharding_strategy, info.world_size, args.num_replicate, num_shard, info.device.type
        )
        reduce = torch.bfloat16 if args.reduce_dtype == "bf16" else torch.float32
        shard_model(model, mesh, dtype, reduce, args.cpu_offload)
        if from_rank0:
            load_full_state_from_rank0(
                model, full_state, torch.device("cpu") if args.cpu_offload else info.device
            )
            del full_state
            logger.info("weights read by rank 0 and broadcast; every rank keeps its shard")
    else:
        model.to(info.device)
    return loaded, start, flags


def lora_config(args) -> LoraConfig:
    return LoraConfig(args.lora_rank, args.lora_alpha or float(args.lora_rank), args.lora_dropout,
                      parse_targets(args.lora_targets))  # fmt: skip


def attach_lora(args, model, start, dtype: torch.dtype, info: DistInfo) -> dict[str, torch.Tensor]:
    """Freeze the whole model and attach fp32 LoRA adapters (fresh, or the resumed step's). On one device
    the frozen base is cast to the compute dtype (bf16 on a GPU: half the memory); under FSDP it stays as
    loaded and FSDP's mixed precision casts it per block. Returns the adapters' values (CPU, fp32): a
    meta-built model (FSDP ranks loading from rank 0) gets them by broadcast with the base weights."""
    cfg = lora_config(args)
    if not info.distributed and dtype != torch.float32:
        for p in model.parameters():
            p.data = p.data.to(dtype)
    if args.lora_base_weights == "int8":
        if info.distributed:
            raise SystemExit(
                "--lora_base_weights int8 trains on one device (FSDP does not shard int8 weights)"
            )
        from modeling.weight_formats import quantize_model

        # before the adapters exist, so that only the base linears are quantized; backward goes through
        # torchao's int8 matmul to the activations, the adapters stay fp32
        n = quantize_model(model, "int8")
        logger.info("base: %d decoder linears in weight-only int8", n)
    if start.adapter_dir is not None:
        saved, values = read_adapter(start.adapter_dir)
        mismatch = [k for k in ("r", "lora_alpha", "target_modules") if getattr(saved, k) != getattr(cfg, k)]
        if mismatch:
            raise SystemExit(
                f"{start.adapter_dir}: its adapter has other {', '.join(mismatch)} than these flags"
            )
        if next(model.parameters()).device.type == "meta":
            add_lora(model, cfg, dtype=torch.float32)
        else:
            load_adapter(model, start.adapter_dir, dtype=torch.float32)
    else:
        mods = add_lora(model, cfg, seed=args.global_seed, dtype=torch.float32)
        values = initial_lora_state(mods, cfg, args.global_seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "LoRA rank %d (alpha %g) on %d modules per block: %d trainable parameters (%.2f%% of %d)",
        cfg.r, cfg.lora_alpha, len(cfg.target_modules), trainable, 100 * trainable / total, total,
    )  # fmt: skip
    return {k: v.float() for k, v in values.items()}


def _resume(args, info: DistInfo, start, model, optimizer, scheduler, ema) -> tuple[dict, dict | None, int]:
    """(train state, this rank's data status, first step): fresh, or restored from ``start.resume_dir``."""
    state = {"tokens_seen": 0.0, "nonfinite_skipped": 0, "samples_seen": 0}
    if start.resume_dir is None:
        return state, None, 0
    ckpt.load_optimizer(start.resume_dir, model, optimizer)
    ckpt.load_scheduler(start.resume_dir, scheduler)
    saved = ckpt.load_train_state(start.resume_dir)
    facts = _run_facts(args, info)
    for k in ("world_size", "num_workers", "gradient_accumulation_steps", "data_seed"):
        if k in saved and saved[k] != facts[k]:
            raise SystemExit(
                f"cannot resume {start.resume_dir}: {k} was {saved[k]}, now {facts[k]} (the data order "
                "depends on it); use --resume_from with --resume_model_only to restart the data"
            )
    state.update({k: saved[k] for k in state if k in saved})
    data_status = ckpt.load_data_status(start.resume_dir, info.rank, info.world_size)
    saved_ema = [os.path.join(start.resume_dir, f) for f in (ckpt.EMA_FILE, ckpt.LORA_EMA_DIR)]
    if ema is not None and any(os.path.exists(f) for f in saved_ema):
        ckpt.load_ema(start.resume_dir, ema)
    first_step = int(saved["step"]) + 1
    logger.info("resumed train state at step %d", first_step)
    return state, data_status, first_step


def _metric_logger(args, info: DistInfo) -> MetricLogger:
    wandb = {
        "enabled": bool(args.wandb_project),
        "project": args.wandb_project,
        "name": args.wandb_name,
        "runid": args.wandb_runid,
        "resume": args.wandb_resume,
        "offline": args.wandb_offline,
        "config": vars(args),
        "dir": args.results_dir,
    }
    return MetricLogger(args.results_dir, info.is_main, wandb)


def _posterior_cache(args, info: DistInfo, vae) -> tuple[PosteriorCache | None, str, str]:
    """(cache or None, its file, the VAE fingerprint it is valid for)."""
    if args.vae_cache_gb <= 0:
        return None, "", ""
    cache = PosteriorCache(int(args.vae_cache_gb * 2**30))
    if not args.vae_cache_file:
        return cache, "", ""
    cache_file = args.vae_cache_file + (f".rank{info.rank}" if info.world_size > 1 else "")
    fingerprint = vae_fingerprint(vae)
    cache.load(cache_file, fingerprint)
    return cache, cache_file, fingerprint


def _forward_backward(
    args, info: DistInfo, model, vae, packs, step: int, global_counts, cache, vae_autocast, participation
) -> tuple[float, float, dict]:
    """Backward of every pack of this rank's step (gradients synchronised on the last); returns the summed
    normalised MSE and CE parts and the bridge statistics."""
    accum, world = len(packs), info.world_size
    mse_sum = ce_sum = 0.0
    stats = {}
    for a, seq in enumerate(packs):
        g = torch.Generator().manual_seed(pack_seed(args.global_seed, step, info.rank * accum + a))
        seq = seq.to(info.device)
        latent = None
        if seq.vae_images is not None:
            with torch.no_grad(), vae_autocast:
                images = seq.vae_images
                latent = (
                    cache.encode(vae, images, g) if cache is not None else vae.encode(images, generator=g)
                )
        set_gradient_sync(model, a == accum - 1)
        terms = flow_matching_losses(
            model, seq, latent, generator=g, use_semantic_mask=args.use_semantic_mask,
            timestep_shift=args.timestep_shift, participation=participation,
        )  # fmt: skip
        try:
            part = pack_loss(
                terms, seq, *global_counts, world, args.mse_weight, args.ce_weight, args.ce_loss_reweighting
            )
        except RuntimeError as e:
            raise RuntimeError(f"step {step}: {e}") from None
        mse_sum += part.mse
        ce_sum += part.ce
        part.loss.backward()
        stats.update(terms.stats)
    return mse_sum, ce_sum, stats


def _update_weights(args, step, bad, optimizer, ema, state, mlog, consecutive_bad, mse, ce, grad_norm) -> int:
    """Optimizer (and EMA) step, or a skipped non-finite step (counted; too many in a row stop the run).
    Returns the new count of consecutive skipped steps."""
    if not bad:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        return 0
    optimizer.zero_grad(set_to_none=True)
    consecutive_bad += 1
    state["nonfinite_skipped"] += 1
    mlog.event(step, "skip_nonfinite", mse=mse, ce=ce, grad_norm=grad_norm, consecutive=consecutive_bad)
    if consecutive_bad >= args.max_nonfinite_steps:
        mlog.close()
        raise NonFiniteLossError(
            f"loss or gradient non-finite for {consecutive_bad} consecutive steps (last: step {step}, mse "
            f"{mse}, ce {ce}, grad norm {grad_norm}); stopping. Lower --lr, check the data, or resume "
            "from an earlier checkpoint"
        )
    return consecutive_bad


def train(args) -> dict:
    """Run training; returns a summary dict (final step, counters). Raises ``NonFiniteLossError``."""
    info = init_distributed(args.device)
    setup_logging(info.rank, args.results_dir)
    dtype = compute_dtype(args, info.device.type)
    torch.manual_seed(args.global_seed * info.world_size + info.rank)
    check_data(args, info.rank, info.world_size)  # a bad mix fails here, before the model loads
    loaded, start, flags = build_model(args, info, dtype)
    model, vae = loaded.model, loaded.vae

    optimizer = build_optimizer(model, args.lr, (args.beta1, args.beta2), args.eps)
    scheduler = WarmupSchedule(
        optimizer, args.lr, args.lr_scheduler, args.warmup_steps, args.total_steps, args.min_lr
    )
    ema = EMA(model, args.ema) if args.ema > 0 else None
    state, data_status, first_step = _resume(args, info, start, model, optimizer, scheduler, ema)
    data = build_data_source(args, loaded, info, data_status)
    mlog = _metric_logger(args, info)
    peak = args.peak_device_tflops or guess_peak_tflops(info.device)
    dense, attn = dense_llm_params(model), attention_flop_coeff(model)
    params = trainable_parameters(model)
    # bf16 model compute comes from FSDP's param_dtype (the model casts activations to its weights'
    # dtype); autocast is only used around the fp32 VAE encoder, as upstream.
    vae_autocast = (
        torch.autocast("cuda", dtype=dtype)
        if info.device.type == "cuda" and dtype != torch.float32
        else contextlib.nullcontext()
    )
    cache, cache_file, fingerprint = _posterior_cache(args, info, vae)
    # FSDP reduces only existing gradients: every rank routes a token through every part (train/losses.py)
    participation = None
    if info.distributed:
        participation = participation_sample(loaded.special_ids, model.config.sequence_geometry()).to(
            info.device
        )
    tput = Throughput()
    accum, world = args.gradient_accumulation_steps, info.world_size
    consecutive_bad = 0
    step = first_step - 1
    last_saved = None
    save_due = False  # a save that fell on a skipped (non-finite) step waits for the next finite one
    for step in range(first_step, args.total_steps):
        packs = [data.next_batch() for _ in range(accum)]
        local = [loss_counts(b, args.ce_loss_reweighting) for b in packs]
        lens = [n for b in packs for n in b.sample_lens]
        n_mse, n_ce, n_tok, n_samples = all_reduce_sum(
            [*(sum(c[i] for c in local) for i in range(3)), float(len(lens))], info.device
        )
        flops = all_reduce_sum([step_flops(dense, attn, int(sum(c[2] for c in local)), lens)], info.device)[0]
        mse_sum, ce_sum, stats = _forward_backward(
            args, info, model, vae, packs, step, (n_mse, n_ce), cache, vae_autocast, participation
        )
        mse_g, ce_g = (v / world for v in all_reduce_sum([mse_sum, ce_sum], info.device))
        fill_missing_grads(params)
        grad_norm = clip_grad_norm(params, args.max_grad_norm)
        bad = all_reduce_max(
            [0.0 if math.isfinite(mse_g + ce_g) and math.isfinite(grad_norm) else 1.0], info.device
        )[0]
        lr = scheduler.apply(step)
        consecutive_bad = _update_weights(
            args, step, bool(bad), optimizer, ema, state, mlog, consecutive_bad, mse_g, ce_g, grad_norm
        )
        state["tokens_seen"] += n_tok
        state["samples_seen"] += int(n_samples)
        tput.add(1, n_tok, flops)

        if step % args.log_every == 0 or step == args.total_steps - 1:
            rec = {
                "mse": mse_g,
                "ce": ce_g,
                "loss": mse_g * args.mse_weight + ce_g * args.ce_weight,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": n_tok,
                "mse_tokens": n_mse,
                "ce_tokens": n_ce,
                "nonfinite_skipped": state["nonfinite_skipped"],
                "peak_mem_gib": peak_memory_gib(info.device),
                **tput.rates(peak * world),
                # counters of every rank (and its data workers), not only rank 0's
                **sum_counters({**_data_counters(data), **(cache.counters() if cache is not None else {})}),
                **stats,
            }
            mlog.log(step, rec)
            tput.reset()
        save_due = save_due or (step > 0 and step % args.save_every == 0) or step == args.total_steps - 1
        # after a skipped step, before a save and every check_finite_every steps: are the weights broken?
        if consecutive_bad or save_due or step % args.check_finite_every == 0:
            _check_weights(info, model, ema, step, mlog)
        if save_due and consecutive_bad:
            # the weights of a skipped step gave a non-finite loss: save after the next finite step instead
            mlog.event(step, "save_postponed", consecutive_nonfinite=consecutive_bad)
        elif save_due:  # the last step always gets here (or raises below): no save after the loop
            _save(args, info, step, model, optimizer, scheduler, ema, state, data, loaded.folder)
            last_saved, save_due = step, False
    if consecutive_bad:
        mlog.close()
        saved = (
            f"last checkpoint: step {last_saved}"
            if last_saved is not None
            else "this run wrote no checkpoint"
        )
        raise NonFiniteLossError(
            f"the run ended with {consecutive_bad} consecutive non-finite steps (last: step {step}); those "
            f"weights were not saved ({saved}). Lower --lr or check the data"
        )
    if cache_file:
        cache.save(cache_file, fingerprint)
    mlog.close()
    return {"last_step": step, **state}


def _run_facts(args, info: DistInfo) -> dict:
    return {
        "world_size": info.world_size,
        "num_workers": args.num_workers,
        "data_seed": args.data_seed,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "global_seed": args.global_seed,
    }


def _data_counters(data) -> dict:
    c = data.counters() if hasattr(data, "counters") else {}
    return {f"data/{k}": v for k, v in c.items()}


def _check_weights(info: DistInfo, model, ema, step: int, mlog) -> None:
    """Stop (non-zero exit, nothing saved) when any rank holds a non-finite weight or EMA shadow: no later
    step can repair it, and a checkpoint of it would only spread it."""
    tensors = [p for p in model.parameters() if p.requires_grad]
    if ema is not None:
        tensors += list(ema.shadow.values())
    bad = all_reduce_max([0.0 if all_finite(tensors) else 1.0], info.device)[0]
    if bad:
        mlog.event(step, "nonfinite_weights")
        mlog.close()
        raise NonFiniteLossError(
            f"step {step}: the weights are no longer finite; no checkpoint was written for them. Lower --lr, "
            "check the data, or resume from an earlier checkpoint"
        )


def _save(args, info, step, model, optimizer, scheduler, ema, state, data, folder) -> None:
    ckpt.save_checkpoint(
        args.checkpoint_dir,
        step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_state={**state, **_run_facts(args, info)},
        data_status=data.state_dict(),
        model_folder=folder,
        rank=info.rank,
        ema=ema,
        lora=lora_config(args) if args.lora_rank else None,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (DataConfigError, CheckpointError) as e:  # bad data mix or model folder: nothing ran yet
        logger.error("%s", e)
        return 2
    except NonFiniteLossError as e:
        logger.error("%s", e)
        return 3
    except ckpt.CheckpointSaveError as e:
        logger.error("%s", e)
        return 4
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
