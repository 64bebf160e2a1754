"""Which weights a run starts from, and building the model for training (docs/training.md).

Resolution order (``resolve_start``):

1. ``--auto_resume`` and ``checkpoint_dir`` holds a complete step folder → resume the newest one fully
   (model + optimizer + scheduler + data + counters; EMA weights only if ``--ema``).
2. ``--resume_from DIR`` → weights from DIR (``ema.safetensors`` when ``--finetune_from_ema`` and
   ``--resume_model_only``, else ``model.safetensors``); full train-state resume unless
   ``--resume_model_only``.
3. Neither → weights from ``--model_path`` itself (``ema.safetensors`` with ``--finetune_from_ema``,
   else ``model.safetensors``, falling back to ``ema.safetensors`` like the inference loader).
   Upstream would silently start from random weights here; we never do.

Configs, VAE and tokenizer always come from ``--model_path`` (a released-layout folder; every step
folder we write is one).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from modeling.errors import CheckpointError
from modeling.lora import ADAPTER_WEIGHTS
from train.checkpointing import EMA_FILE, MODEL_FILE, find_latest_checkpoint
from train.parallel import DistInfo, broadcast_object

logger = logging.getLogger(__name__)


@dataclass
class StartPoint:
    weights_path: str  # safetensors file with the Bagel state dict
    resume_dir: str | None  # step folder whose train state is restored (None: fresh start)
    reason: str
    adapter_dir: str | None = None  # LoRA runs: the step folder whose adapter to start from


def resolve_start(
    model_path: str,
    checkpoint_dir: str | None,
    auto_resume: bool,
    resume_from: str | None,
    resume_model_only: bool,
    finetune_from_ema: bool,
    lora: bool = False,
) -> StartPoint:
    if lora:  # LoRA step folders hold only the adapter: the frozen base always comes from --model_path
        base = resolve_start(model_path, None, False, None, False, finetune_from_ema).weights_path
        latest = find_latest_checkpoint(checkpoint_dir) if auto_resume and checkpoint_dir else None
        if latest is not None:
            return StartPoint(base, latest, f"auto-resume LoRA from {latest} (base {base})", latest)
        if resume_from:
            if not os.path.isfile(os.path.join(resume_from, ADAPTER_WEIGHTS)):
                raise FileNotFoundError(
                    f"--resume_from {resume_from} holds no LoRA adapter ({ADAPTER_WEIGHTS}); a LoRA run takes its "
                    "base from --model_path and resumes only from its own step folders"
                )
            resume = None if resume_model_only else resume_from
            return StartPoint(base, resume, f"LoRA adapter from {resume_from} (base {base})", resume_from)
        return StartPoint(base, None, f"fresh LoRA adapters on {base}")
    if auto_resume and checkpoint_dir:
        latest = find_latest_checkpoint(checkpoint_dir)
        if latest is not None:
            return StartPoint(os.path.join(latest, MODEL_FILE), latest, f"auto-resume from {latest}")
    if resume_from:
        if not os.path.isdir(resume_from):
            raise FileNotFoundError(f"--resume_from {resume_from} is not a folder")
        use_ema = finetune_from_ema and resume_model_only
        if finetune_from_ema and not resume_model_only:
            logger.warning(
                "--finetune_from_ema only applies with --resume_model_only (upstream too); using model weights"
            )
        name = EMA_FILE if use_ema else MODEL_FILE
        path = os.path.join(resume_from, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume_from {resume_from} has no {name}")
        return StartPoint(path, None if resume_model_only else resume_from, f"weights from {path}")
    names = (EMA_FILE,) if finetune_from_ema else (MODEL_FILE, EMA_FILE)
    for name in names:
        path = os.path.join(model_path, name)
        if os.path.isfile(path):
            return StartPoint(path, None, f"weights from {path}")
    raise FileNotFoundError(
        f"--model_path {model_path} has no {' or '.join(names)} and no --resume_from was given"
    )


def load_for_training(
    model_path: str, weights_path: str, dtype: torch.dtype = torch.float32, load_weights: bool = True
):
    """Build Bagel from ``model_path``'s configs and fill it from ``weights_path`` on the CPU.

    Returns ``modeling.checkpoint.LoadedModel``. ``load_weights=False`` leaves the model on the meta
    device (no weight is read; only the file's header, for the config): the ranks that receive their
    shards from rank 0 (``train.parallel.load_full_state_from_rank0``) need nothing more. The VAE and
    tokenizer are always loaded (small).
    """
    from modeling.checkpoint import LoadedModel, load_pretrained

    folder = os.path.abspath(model_path)
    weights_path = os.path.abspath(weights_path)
    if load_weights and os.path.dirname(weights_path) == folder:
        return load_pretrained(folder, "cpu", dtype, weights_file=os.path.basename(weights_path))

    from modeling.autoencoder import load_autoencoder
    from modeling.bagel import Bagel
    from modeling.checkpoint import AE_FILE, build_config, freeze_fixed_tables, load_bagel_weights
    from modeling.tokenizer import load_tokenizer

    tokenizer, special_ids, _ = load_tokenizer(folder)
    vae = load_autoencoder(os.path.join(folder, AE_FILE), device="cpu", dtype=torch.float32)
    config = build_config(folder, weights_path)
    config.vae = vae.params
    with torch.device("meta"):
        model = Bagel(config)
    if load_weights:
        load_bagel_weights(model, weights_path, torch.device("cpu"), dtype)
    else:
        # as load_bagel_weights does: the ranks must agree on which parameters get gradients
        freeze_fixed_tables(model)
    return LoadedModel(model, vae, tokenizer, special_ids, config, folder, weights_path)


def load_model_for_rank(model_path: str, weights_path: str, info: DistInfo, from_rank0: bool):
    """(LoadedModel, full state dict or None). With ``from_rank0`` only rank 0 reads the weights (its model
    is then moved to the meta device, the state dict keeps the tensors); the other ranks build the model on
    the meta device. A checkpoint error on rank 0 is raised on every rank (no rank hangs waiting)."""
    if not from_rank0:
        return load_for_training(model_path, weights_path, torch.float32), None
    error, cause, loaded, full_state = None, None, None, None
    if info.is_main:
        try:
            loaded = load_for_training(model_path, weights_path, torch.float32)
        except Exception as e:  # any failure: the other ranks must hear of it, not wait in a collective
            error, cause = f"{type(e).__name__}: {e}", e
        else:
            full_state = loaded.model.state_dict()
            loaded.model.to("meta")
    error = broadcast_object(error)
    if error is not None:
        raise CheckpointError(f"rank 0 could not load the weights: {error}") from cause
    if loaded is None:
        loaded = load_for_training(model_path, weights_path, torch.float32, load_weights=False)
    return loaded, full_state
