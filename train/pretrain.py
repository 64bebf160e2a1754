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
from dataclasses import dataclass

import torch
from torch import nn

from data.parquet_io import DataConfigError
from modeling.errors import CheckpointError
from modeling.weight_formats import FLOAT_FORMATS, compute_dtype
from train import checkpointing as ckpt
from train.config import MetricsSection, ObjectiveSection, TrainConfig, VaeCacheSection, parse_config
from train.data_source import build_data_source, check_data
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
from train.trained_weights import ModelWeights, trained_weights
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


def build_model(cfg: TrainConfig, weights: ModelWeights, info: DistInfo, dtype: torch.dtype):
    """Load weights, choose what trains, checkpoint activations, shard. Returns (LoadedModel, start point)."""
    c, par = cfg.checkpoint, cfg.parallel
    start = resolve_start(
        cfg.model.model_path,
        c.checkpoint_dir,
        c.auto_resume,
        c.resume_from,
        c.resume_model_only,
        c.finetune_from_ema,
        lora=weights.is_lora,
    )
    logger.info("start: %s", start.reason)
    from_rank0 = info.world_size > 1 and par.load_weights_on_rank0  # a 1-rank group has no one to send to
    loaded, full_state = load_model_for_rank(cfg.model.model_path, start.weights_path, info, from_rank0)
    cfg.upstream.check_against(loaded.config, cfg.model.model_path)
    model, vae = loaded.model, loaded.vae
    extra = weights.prepare(model, vae, start, dtype, info)
    if from_rank0 and full_state is not None:  # e.g. LoRA adapters are broadcast with the base weights
        full_state.update(extra)
    weights.train_mode(model, vae)
    vae.to(info.device)
    if par.activation_checkpointing:
        n = apply_activation_checkpointing(model, block_classes())
        logger.info("activation checkpointing on %d blocks", n)
    if info.distributed:
        num_shard = par.num_shard or info.world_size
        mesh = build_mesh(
            par.sharding_strategy, info.world_size, par.num_replicate, num_shard, info.device.type
        )
        shard_model(model, mesh, dtype, FLOAT_FORMATS[par.reduce_dtype], par.cpu_offload)
        if from_rank0:
            load_full_state_from_rank0(
                model, full_state, torch.device("cpu") if par.cpu_offload else info.device
            )
            del full_state
            logger.info("weights read by rank 0 and broadcast; every rank keeps its shard")
    else:
        model.to(info.device)
    return loaded, start


def resume_state(
    start, facts: dict, info: DistInfo, model, optimizer, scheduler, ema
) -> tuple[dict, dict | None, int]:
    """(train state, this rank's data status, first step): fresh, or restored from ``start.resume_dir``.
    ``facts``: this run's ``run_facts``; those the data order depends on must equal the saved ones."""
    state = {"tokens_seen": 0.0, "nonfinite_skipped": 0, "samples_seen": 0}
    if start.resume_dir is None:
        return state, None, 0
    ckpt.load_optimizer(start.resume_dir, model, optimizer)
    ckpt.load_scheduler(start.resume_dir, scheduler)
    saved = ckpt.load_train_state(start.resume_dir)
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


def run_facts(cfg: TrainConfig, info: DistInfo) -> dict:
    """What ``train_state.json`` records of the run so a resume can check it continues the same data."""
    return {
        "world_size": info.world_size,
        "num_workers": cfg.data.num_workers,
        "data_seed": cfg.data.data_seed,
        "gradient_accumulation_steps": cfg.optimizer.gradient_accumulation_steps,
        "global_seed": cfg.objective.global_seed,
    }


def metric_logger(metrics: MetricsSection, config: dict, info: DistInfo) -> MetricLogger:
    wandb = {
        "enabled": bool(metrics.wandb_project),
        "project": metrics.wandb_project,
        "name": metrics.wandb_name,
        "runid": metrics.wandb_runid,
        "resume": metrics.wandb_resume,
        "offline": metrics.wandb_offline,
        "config": config,
        "dir": metrics.results_dir,
    }
    return MetricLogger(metrics.results_dir, info.is_main, wandb)


def posterior_cache(section: VaeCacheSection, info: DistInfo, vae) -> tuple[PosteriorCache | None, str, str]:
    """(cache or None, its file, the VAE fingerprint it is valid for)."""
    if section.vae_cache_gb <= 0:
        return None, "", ""
    cache = PosteriorCache(int(section.vae_cache_gb * 2**30))
    if not section.vae_cache_file:
        return cache, "", ""
    cache_file = section.vae_cache_file + (f".rank{info.rank}" if info.world_size > 1 else "")
    fingerprint = vae_fingerprint(vae)
    cache.load(cache_file, fingerprint)
    return cache, cache_file, fingerprint


@dataclass
class PackRunner:
    """Forward and backward of one rank's packs: VAE encoding (cached or not), the flow-matching losses,
    the loss normalised to a global per-token mean."""

    objective: ObjectiveSection
    info: DistInfo
    model: nn.Module
    vae: nn.Module
    cache: PosteriorCache | None
    vae_autocast: contextlib.AbstractContextManager
    participation: torch.Tensor | None

    def backward(
        self, packs: list, step: int, global_counts: tuple[float, float]
    ) -> tuple[float, float, dict]:
        """Backward of every pack of this rank's step (gradients synchronised on the last); returns the
        summed normalised MSE and CE parts and the bridge statistics."""
        obj, info = self.objective, self.info
        accum = len(packs)
        mse_sum = ce_sum = 0.0
        stats = {}
        for a, seq in enumerate(packs):
            g = torch.Generator().manual_seed(pack_seed(obj.global_seed, step, info.rank * accum + a))
            seq = seq.to(info.device)
            latent = None
            if seq.vae_images is not None:
                with torch.no_grad(), self.vae_autocast:
                    images = seq.vae_images
                    latent = (
                        self.cache.encode(self.vae, images, g)
                        if self.cache is not None
                        else self.vae.encode(images, generator=g)
                    )
            set_gradient_sync(self.model, a == accum - 1)
            terms = flow_matching_losses(
                self.model,
                seq,
                latent,
                generator=g,
                use_semantic_mask=obj.use_semantic_mask,
                timestep_shift=obj.timestep_shift,
                participation=self.participation,
            )
            try:
                part = pack_loss(
                    terms,
                    seq,
                    *global_counts,
                    info.world_size,
                    obj.mse_weight,
                    obj.ce_weight,
                    obj.ce_loss_reweighting,
                )
            except RuntimeError as e:
                raise RuntimeError(f"step {step}: {e}") from None
            mse_sum += part.mse
            ce_sum += part.ce
            part.loss.backward()
            stats.update(terms.stats)
        return mse_sum, ce_sum, stats


def apply_update(optimizer, ema) -> None:
    """The optimizer (and EMA) step of a finite step."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update()


@dataclass
class NonFiniteGuard:
    """Counts skipped non-finite steps; too many in a row stop the run."""

    max_consecutive: int
    mlog: MetricLogger
    state: dict
    consecutive: int = 0

    def skip(self, step: int, optimizer, mse: float, ce: float, grad_norm: float) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.consecutive += 1
        self.state["nonfinite_skipped"] += 1
        self.mlog.event(
            step, "skip_nonfinite", mse=mse, ce=ce, grad_norm=grad_norm, consecutive=self.consecutive
        )
        if self.consecutive >= self.max_consecutive:
            self.mlog.close()
            raise NonFiniteLossError(
                f"loss or gradient non-finite for {self.consecutive} consecutive steps (last: step {step}, mse "
                f"{mse}, ce {ce}, grad norm {grad_norm}); stopping. Lower --lr, check the data, or resume "
                "from an earlier checkpoint"
            )


def train(cfg: TrainConfig) -> dict:
    """Run training; returns a summary dict (final step, counters). Raises ``NonFiniteLossError``."""
    info = init_distributed(cfg.parallel.device)
    setup_logging(info.rank, cfg.metrics.results_dir)
    dtype = compute_dtype(cfg.parallel.dtype, info.device.type)
    obj, opt = cfg.objective, cfg.optimizer
    torch.manual_seed(obj.global_seed * info.world_size + info.rank)
    # a bad mix fails before the model loads; the views it trains at go into every step folder's config
    views = check_data(cfg.data, cfg.model.model_path, info.rank, info.world_size)
    weights = trained_weights(cfg.freeze, cfg.lora, obj.global_seed)
    loaded, start = build_model(cfg, weights, info, dtype)
    model, vae = loaded.model, loaded.vae

    optimizer = build_optimizer(model, opt.lr, (opt.beta1, opt.beta2), opt.eps)
    scheduler = WarmupSchedule(
        optimizer, opt.lr, opt.lr_scheduler, opt.warmup_steps, opt.total_steps, opt.min_lr
    )
    ema = EMA(model, cfg.ema.ema) if cfg.ema.ema > 0 else None
    facts = run_facts(cfg, info)
    state, data_status, first_step = resume_state(start, facts, info, model, optimizer, scheduler, ema)
    data = build_data_source(cfg.data, opt.gradient_accumulation_steps, loaded, info, data_status)
    config = cfg.to_dict()
    mlog = metric_logger(cfg.metrics, config, info)
    peak = cfg.metrics.peak_device_tflops or guess_peak_tflops(info.device)
    dense, attn = dense_llm_params(model), attention_flop_coeff(model)
    params = trainable_parameters(model)
    # bf16 model compute comes from FSDP's param_dtype (the model casts activations to its weights'
    # dtype); autocast is only used around the fp32 VAE encoder, as upstream.
    vae_autocast = (
        torch.autocast("cuda", dtype=dtype)
        if info.device.type == "cuda" and dtype != torch.float32
        else contextlib.nullcontext()
    )
    cache, cache_file, fingerprint = posterior_cache(cfg.vae_cache, info, vae)
    # FSDP reduces only existing gradients: every rank routes a token through every part (train/losses.py)
    participation = None
    if info.distributed:
        participation = participation_sample(loaded.special_ids, model.config.sequence_geometry()).to(
            info.device
        )
    runner = PackRunner(obj, info, model, vae, cache, vae_autocast, participation)
    guard = NonFiniteGuard(obj.max_nonfinite_steps, mlog, state)

    def save(step: int) -> None:
        ckpt.save_checkpoint(
            cfg.checkpoint.checkpoint_dir,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            train_state={**state, **facts},
            data_status=data.state_dict(),
            model_folder=loaded.folder,
            rank=info.rank,
            ema=ema,
            lora=weights.adapter_config,
            config=config,
            image_views=views,
        )

    tput = Throughput()
    accum, world, total = opt.gradient_accumulation_steps, info.world_size, opt.total_steps
    step = first_step - 1
    last_saved = None
    save_due = False  # a save that fell on a skipped (non-finite) step waits for the next finite one
    for step in range(first_step, total):
        packs = [data.next_batch() for _ in range(accum)]
        local = [loss_counts(b, obj.ce_loss_reweighting) for b in packs]
        lens = [n for b in packs for n in b.sample_lens]
        n_mse, n_ce, n_tok, n_samples = all_reduce_sum(
            [*(sum(c[i] for c in local) for i in range(3)), float(len(lens))], info.device
        )
        flops = all_reduce_sum([step_flops(dense, attn, int(sum(c[2] for c in local)), lens)], info.device)[0]
        mse_sum, ce_sum, stats = runner.backward(packs, step, (n_mse, n_ce))
        mse_g, ce_g = (v / world for v in all_reduce_sum([mse_sum, ce_sum], info.device))
        fill_missing_grads(params)
        grad_norm = clip_grad_norm(params, opt.max_grad_norm)
        finite = math.isfinite(mse_g + ce_g) and math.isfinite(grad_norm)
        bad = all_reduce_max([0.0 if finite else 1.0], info.device)[0]
        lr = scheduler.apply(step)
        if bad:
            guard.skip(step, optimizer, mse_g, ce_g, grad_norm)
        else:
            apply_update(optimizer, ema)
            guard.consecutive = 0
        state["tokens_seen"] += n_tok
        state["samples_seen"] += int(n_samples)
        tput.add(1, n_tok, flops)

        if step % cfg.metrics.log_every == 0 or step == total - 1:
            losses = {"mse": mse_g, "ce": ce_g, "loss": mse_g * obj.mse_weight + ce_g * obj.ce_weight}
            counts = {"tokens": n_tok, "mse_tokens": n_mse, "ce_tokens": n_ce}
            counts["nonfinite_skipped"] = state["nonfinite_skipped"]
            # counters of every rank (and its data workers), not only rank 0's
            counters = sum_counters(
                {**_data_counters(data), **(cache.counters() if cache is not None else {})}
            )
            rates = {"peak_mem_gib": peak_memory_gib(info.device), **tput.rates(peak * world)}
            mlog.log(
                step, {**losses, "lr": lr, "grad_norm": grad_norm, **counts, **rates, **counters, **stats}
            )
            tput.reset()
        save_due = save_due or (step > 0 and step % cfg.checkpoint.save_every == 0) or step == total - 1
        # after a skipped step, before a save and every check_finite_every steps: are the weights broken?
        if guard.consecutive or save_due or step % obj.check_finite_every == 0:
            _check_weights(info, model, ema, step, mlog)
        if save_due and guard.consecutive:
            # the weights of a skipped step gave a non-finite loss: save after the next finite step instead
            mlog.event(step, "save_postponed", consecutive_nonfinite=guard.consecutive)
        elif save_due:  # the last step always gets here (or raises below): no save after the loop
            save(step)
            last_saved, save_due = step, False
    if guard.consecutive:
        mlog.close()
        saved = (
            f"last checkpoint: step {last_saved}"
            if last_saved is not None
            else "this run wrote no checkpoint"
        )
        raise NonFiniteLossError(
            f"the run ended with {guard.consecutive} consecutive non-finite steps (last: step {step}); those "
            f"weights were not saved ({saved}). Lower --lr or check the data"
        )
    if cache_file:
        cache.save(cache_file, fingerprint)
    mlog.close()
    return {"last_step": step, **state}


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


def main(argv=None) -> int:
    cfg = parse_config(argv)
    try:
        train(cfg)
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
