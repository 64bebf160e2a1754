"""What a run trains: the model's own weights (under the freeze flags) or LoRA adapters on a frozen base.

One object, chosen once from the configuration, answers the three questions where the two differ, so the
loop never asks which kind of run it is:
- ``prepare``: which parameters train (freeze flags, or a frozen base with fresh / resumed adapters);
- the optimizer's parameter set follows from it (``requires_grad``, ``train/optim.py``);
- ``adapter_config``: what a step folder holds (the model and its configs, or PEFT adapter files).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from modeling.lora import LoraConfig, add_lora, initial_lora_state, load_adapter, parse_targets, read_adapter
from train.config import FreezeSection, LoraSection
from train.freeze import FreezeFlags, apply_freeze, keep_frozen_in_eval
from train.model_setup import StartPoint
from train.parallel import DistInfo

logger = logging.getLogger(__name__)


class ModelWeights:
    """Train the model's own parameters, less those the freeze flags name."""

    adapter_config: LoraConfig | None = None  # step folders hold the model in the released layout
    is_lora = False

    def __init__(self, freeze: FreezeSection):
        self.freeze = freeze
        self.flags = FreezeFlags.from_section(freeze)

    def prepare(
        self, model: nn.Module, vae: nn.Module, start: StartPoint, dtype: torch.dtype, info: DistInfo
    ) -> dict[str, torch.Tensor]:
        """Apply the freeze flags. Returns the tensors rank 0 must broadcast besides the base (none)."""
        summary = apply_freeze(model, self.flags, vae, self.freeze.freeze_vae)
        logger.info("parameters (trainable / frozen):\n%s", summary.table())
        return {}

    def train_mode(self, model: nn.Module, vae: nn.Module) -> None:
        """``model.train()`` with the frozen parts (and the VAE) kept in eval mode."""
        model.train()
        keep_frozen_in_eval(model, self.flags, vae, self.freeze.freeze_vae)


class LoraAdapters(ModelWeights):
    """Freeze the whole model and train fp32 LoRA adapters (fresh, or the resumed step's)."""

    is_lora = True

    def __init__(self, freeze: FreezeSection, lora: LoraSection, seed: int):
        super().__init__(freeze)
        self.section, self.seed = lora, seed
        alpha = lora.lora_alpha or float(lora.lora_rank)
        targets = parse_targets(lora.lora_targets)
        self.adapter_config = LoraConfig(lora.lora_rank, alpha, lora.lora_dropout, targets)

    def prepare(
        self, model: nn.Module, vae: nn.Module, start: StartPoint, dtype: torch.dtype, info: DistInfo
    ) -> dict[str, torch.Tensor]:
        """On one device the frozen base is cast to the compute dtype (bf16 on a GPU: half the memory);
        under FSDP it stays as loaded and FSDP's mixed precision casts it per block. Returns the
        adapters' values (CPU, fp32): a meta-built model (FSDP ranks loading from rank 0) gets them by
        broadcast with the base weights."""
        apply_freeze(model, self.flags, vae, self.freeze.freeze_vae)
        cfg = self.adapter_config
        if not info.distributed and dtype != torch.float32:
            for p in model.parameters():
                p.data = p.data.to(dtype)
        if self.section.lora_base_weights == "int8":
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
            mismatch = [
                k for k in ("r", "lora_alpha", "target_modules") if getattr(saved, k) != getattr(cfg, k)
            ]
            if mismatch:
                raise SystemExit(
                    f"{start.adapter_dir}: its adapter has other {', '.join(mismatch)} than these flags"
                )
            if next(model.parameters()).device.type == "meta":
                add_lora(model, cfg, dtype=torch.float32)
            else:
                load_adapter(model, start.adapter_dir, dtype=torch.float32)
        else:
            mods = add_lora(model, cfg, seed=self.seed, dtype=torch.float32)
            values = initial_lora_state(mods, cfg, self.seed)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        share = f"{trainable} trainable parameters ({100 * trainable / total:.2f}% of {total})"
        logger.info(
            "LoRA rank %d (alpha %g) on %d modules per block: %s",
            cfg.r,
            cfg.lora_alpha,
            len(cfg.target_modules),
            share,
        )
        return {k: v.float() for k, v in values.items()}


def trained_weights(freeze: FreezeSection, lora: LoraSection, seed: int) -> ModelWeights:
    """``LoraAdapters`` when ``--lora_rank`` > 0, else ``ModelWeights``."""
    return LoraAdapters(freeze, lora, seed) if lora.lora_rank else ModelWeights(freeze)
