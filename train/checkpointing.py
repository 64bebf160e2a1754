"""Training checkpoints: atomic step folders that are also released-layout model folders (docs/training.md).

Layout of ``{checkpoint_dir}/{step:07d}/`` (``step`` = index of the last executed step; a resume starts
at ``step + 1``, like upstream):

| file | content |
|---|---|
| ``model.safetensors`` | full Bagel state dict, clean keys, parameter dtype (rank 0) |
| ``ema.safetensors`` | full state dict with EMA values for trainable keys (only with ``--ema``) |
| ``optimizer/`` | ``torch.distributed.checkpoint`` folder of the sharded AdamW state (every rank writes its shard; DCP can reshard on load) |
| ``scheduler.pt`` | LR schedule counter |
| ``train_state.json`` | step, counters, world size, num_workers, seeds |
| ``data_status.pt`` | list indexed by rank of that rank's data-pipeline state |
| ``train_config.json`` | the run's resolved configuration by section (``train/config.py``); ``--config`` reads it back |
| ``llm_config.json``, ``vit_config.json``, ``scone_config.json`` (if any), ``ae.safetensors``, tokenizer files | copied from the model folder, so the step folder loads with ``load_pretrained`` / ``SconePipeline.from_pretrained`` |

A LoRA run (``--lora_rank``) writes ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT format,
``modeling/lora.py``) instead of the model, the configs and the VAE, and ``ema/`` holds the EMA adapter:
a few MB per step, loadable with ``SconePipeline.from_pretrained(base, lora=step_folder)``.

Everything is written into ``.tmp-{step:07d}-…`` and renamed at the end, so a crash never leaves a
numeric folder behind; ``find_latest_checkpoint`` only considers complete numeric folders. Multi-node
runs need ``checkpoint_dir`` on a filesystem shared by all nodes (every rank writes optimizer shards).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from safetensors import SafetensorError

from modeling.config import SCONE_CONFIG_FILE, run_transforms
from modeling.files import give_default_mode, save_safetensors
from modeling.lora import ADAPTER_WEIGHTS, read_adapter, write_adapter
from train.config import CONFIG_FILE
from train.parallel import all_gather_object, barrier, broadcast_object

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIM_DIR = "optimizer"
SCHEDULER_FILE = "scheduler.pt"
TRAIN_STATE_FILE = "train_state.json"
LORA_EMA_DIR = "ema"  # a LoRA run's EMA adapter (PEFT format)
DATA_STATUS_FILE = "data_status.pt"
# Files that make a step folder a released-layout folder (ckpts/README.md).
FOLDER_FILES = (
    "llm_config.json",
    "vit_config.json",
    "scone_config.json",
    "ae.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
REQUIRED_FOLDER_FILES = ("llm_config.json", "vit_config.json", "ae.safetensors")


class CheckpointSaveError(RuntimeError):
    """A step folder could not be written (disk full, quota, permissions); the run stops with exit code 4
    and the message names the folder, the step and the last good checkpoint."""


def step_dir_name(step: int) -> str:
    return f"{step:07d}"


def clean_key(name: str) -> str:
    """Strip wrapper prefixes (activation checkpoint / torch.compile) should any have crept in."""
    for junk in ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module."):
        name = name.replace(junk, "")
    return name


def find_latest_checkpoint(checkpoint_dir: str) -> str | None:
    """Numerically largest complete step folder; non-numeric names and temp folders are ignored."""
    if not os.path.isdir(checkpoint_dir):
        return None
    best = None
    for name in os.listdir(checkpoint_dir):
        path = os.path.join(checkpoint_dir, name)
        if not (name.isdigit() and os.path.isdir(path)):
            continue
        weights = (MODEL_FILE, ADAPTER_WEIGHTS)  # a full step folder, or a LoRA run's adapter-only one
        complete = os.path.isfile(os.path.join(path, TRAIN_STATE_FILE)) and any(
            os.path.isfile(os.path.join(path, f)) for f in weights
        )
        if not complete:
            logger.warning("ignoring incomplete checkpoint folder %s", path)
            continue
        if best is None or int(name) > best[0]:
            best = (int(name), path)
    return None if best is None else best[1]


def gather_full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, CPU, clean-key state dict on rank 0 (``{}`` on other ranks). Collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {clean_key(k): v for k, v in sd.items()}


def gather_lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors only (full, CPU, clean keys; on every rank). Collective under FSDP: every rank walks
    the same parameters in the same order."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            t = p.detach()
            out[clean_key(name)] = (t.full_tensor() if isinstance(t, DTensor) else t).float().cpu()
    return out


def copy_folder_files(src_folder: str, dst: str) -> list[str]:
    """Copy configs, VAE and tokenizer files (real copies, not links: the source may be deleted)."""
    missing = [f for f in REQUIRED_FOLDER_FILES if not os.path.isfile(os.path.join(src_folder, f))]
    if missing:
        raise FileNotFoundError(
            f"model folder {src_folder} lacks {', '.join(missing)}; cannot make a loadable step folder"
        )
    copied = []
    for f in FOLDER_FILES:
        src = os.path.join(src_folder, f)
        if os.path.isfile(src):
            shutil.copy2(os.path.realpath(src), os.path.join(dst, f))
            give_default_mode(os.path.join(dst, f))
            copied.append(f)
    return copied


def record_image_views(folder: str, views: dict) -> dict:
    """Make a step folder run at the image views its model was trained at: each of ``views``
    (``{"vae_transform" | "vit_transform": (max, min, stride)}``, ``data.data_config.image_views``) that
    differs from the view the folder would run at (its ``scone_config.json`` "inference" entry, else
    upstream's) is written into that entry. Returns what changed ({} when nothing did)."""
    path = os.path.join(folder, SCONE_CONFIG_FILE)
    raw = {}
    if os.path.isfile(path):
        with open(path) as f:
            raw = json.load(f)
    inference = dict(raw.get("inference", {}))
    current = run_transforms(inference)
    changed = {k: list(v) for k, v in views.items() if current[k] != tuple(v)}
    if changed:
        raw["inference"] = {**inference, **changed}
        with open(path, "w") as f:
            json.dump(raw, f, indent=2)
            f.write("\n")
        give_default_mode(path)
    return changed


def save_checkpoint(
    checkpoint_dir: str,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train_state: dict,
    data_status,
    model_folder: str,
    rank: int,
    ema=None,
    lora=None,
    config: dict | None = None,
    image_views: dict | None = None,
) -> str:
    """Write ``{checkpoint_dir}/{step:07d}`` atomically. Collective: every rank must call it.

    ``data_status`` is this rank's data-pipeline state (any object ``torch.save`` can store with
    plain containers / tensors); the file holds the list over ranks. ``config``: the run's resolved
    configuration (``train/config.py``), written as ``train_config.json``. ``image_views``: the views the
    data trained at (``record_image_views``; a full model's folder only).
    """
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    t0 = time.time()
    final = os.path.join(checkpoint_dir, step_dir_name(step))
    tmp = broadcast_object(
        os.path.join(checkpoint_dir, f".tmp-{step_dir_name(step)}-{os.getpid()}") if rank == 0 else None
    )
    if rank == 0:
        os.makedirs(checkpoint_dir, exist_ok=True)
        remove_stale_temp_folders(checkpoint_dir)
        os.makedirs(tmp)
    barrier()

    full = gather_full_model_state(model) if lora is None else gather_lora_state(model)
    ema_full = ema.full_state_dict(rank) if ema is not None else None
    osd = get_optimizer_state_dict(model, optimizer)
    no_dist = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dcp_save({"optimizer": osd}, checkpoint_id=os.path.join(tmp, OPTIM_DIR), no_dist=no_dist)
    statuses = all_gather_object(data_status)

    error = None
    if rank == 0:
        try:
            files = StepFiles(
                full,
                ema_full,
                lora,
                model_folder,
                scheduler,
                statuses,
                train_state,
                config,
                image_views or {},
            )
            _write_step_folder(tmp, final, checkpoint_dir, step, files)
        except (OSError, RuntimeError, SafetensorError) as e:  # a full disk, a quota, a vanished mount
            shutil.rmtree(tmp, ignore_errors=True)
            where = getattr(e, "filename", None)
            error = f"{getattr(e, 'strerror', None) or e}{f' ({where})' if where else ''}"
    error = broadcast_object(error)
    if error:
        last = find_latest_checkpoint(checkpoint_dir)
        raise CheckpointSaveError(
            f"step {step}: writing the checkpoint {final} failed: {error}; its partial folder was removed. "
            f"Last good checkpoint: {last or 'none'}. Free space and rerun: --auto_resume True continues "
            f"from {'it' if last else 'the start'}"
        )
    if rank == 0:
        logger.info("saved checkpoint %s in %.1fs", final, time.time() - t0)
    barrier()
    return final


@dataclass
class StepFiles:
    """What rank 0 writes into a step folder (``full``: the model's, or with ``lora`` the adapters')."""

    full: dict
    ema_full: dict | None
    lora: object | None
    model_folder: str
    scheduler: object
    statuses: list
    train_state: dict
    config: dict | None
    image_views: dict


def _write_step_folder(tmp: str, final: str, checkpoint_dir: str, step: int, files: StepFiles) -> None:
    """Rank 0's files of a step folder, written into ``tmp`` and renamed to ``final`` at the end."""
    full, ema_full, lora, model_folder = files.full, files.ema_full, files.lora, files.model_folder
    if lora is None:
        save_safetensors(full, os.path.join(tmp, MODEL_FILE))
        if ema_full is not None:
            merged = dict(full)
            merged.update({clean_key(k): v for k, v in ema_full.items()})
            save_safetensors(merged, os.path.join(tmp, EMA_FILE))
        copy_folder_files(model_folder, tmp)
        changed = record_image_views(tmp, files.image_views)
        if changed:
            logger.info("step %d runs at the image views it was trained at: %s", step, changed)
    else:
        write_adapter(full, lora, tmp, base=model_folder)
        if ema_full is not None:  # the EMA covers only the trainable (adapter) tensors
            write_adapter(
                {clean_key(k): v for k, v in ema_full.items()},
                lora,
                os.path.join(tmp, "ema"),
                model_folder,
            )
    torch.save(files.scheduler.state_dict(), os.path.join(tmp, SCHEDULER_FILE))
    torch.save(files.statuses, os.path.join(tmp, DATA_STATUS_FILE))
    if files.config is not None:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(files.config, f, indent=2)
            f.write("\n")
    # train_state.json last among the files: it is one of the completeness markers.
    with open(os.path.join(tmp, TRAIN_STATE_FILE), "w") as f:
        json.dump({**files.train_state, "step": step}, f, indent=2, sort_keys=True)
    if os.path.exists(final):  # re-saving a step (e.g. after a resume): swap, then drop the old one
        old = os.path.join(checkpoint_dir, f".old-{step_dir_name(step)}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def remove_stale_temp_folders(checkpoint_dir: str) -> list[str]:
    """Delete the ``.tmp-*`` / ``.old-*`` folders a crash in the middle of a save left behind (one writer per
    checkpoint folder: rank 0 of the one run that saves there). Returns the removed names."""
    removed = []
    if not os.path.isdir(checkpoint_dir):
        return removed
    for name in sorted(os.listdir(checkpoint_dir)):
        path = os.path.join(checkpoint_dir, name)
        if (name.startswith(".tmp-") or name.startswith(".old-")) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
            logger.info("removed %s, left by an interrupted save", path)
    return removed


def load_train_state(step_dir: str) -> dict:
    path = os.path.join(step_dir, TRAIN_STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing: {step_dir} is not a complete training checkpoint")
    with open(path) as f:
        return json.load(f)


def load_optimizer(step_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore the sharded AdamW state (DCP reshards if the world size changed)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    path = os.path.join(step_dir, OPTIM_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"optimizer state {path} missing (use --resume_model_only to restart it)")
    osd = get_optimizer_state_dict(model, optimizer)  # initialises a state for every parameter
    saved = set(FileSystemReader(path).read_metadata().state_dict_metadata)
    # AdamW keeps no state for a parameter that never had a gradient, so a checkpoint may lack it (runs
    # from before every trainable parameter got a gradient each step: lm_head on generation-only data).
    # Load what is there and give the rest no state again, as in the uninterrupted run (the initialised
    # state has step 1, which would change Adam's bias correction).
    missing = {fqn for fqn in osd["state"] if f"optimizer.state.{fqn}.step" not in saved}
    have = {fqn: st for fqn, st in osd["state"].items() if fqn not in missing}
    state = {"optimizer": {"state": have, "param_groups": osd["param_groups"]}}
    no_dist = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dcp_load(state, checkpoint_id=path, no_dist=no_dist)
    osd["state"].update(state["optimizer"]["state"])
    set_optimizer_state_dict(model, optimizer, optim_state_dict=osd)
    params = dict(model.named_parameters())
    for fqn in missing:
        optimizer.state.pop(params[fqn], None)
    if missing:
        logger.info("optimizer state: %d parameter(s) had none yet (no gradient so far)", len(missing))


def load_scheduler(step_dir: str, scheduler) -> None:
    path = os.path.join(step_dir, SCHEDULER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing")
    scheduler.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_data_status(step_dir: str, rank: int, world_size: int):
    """This rank's entry of ``data_status.pt``; raises if the file's rank count differs from ours."""
    path = os.path.join(step_dir, DATA_STATUS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing: cannot resume the data order")
    statuses = torch.load(path, map_location="cpu", weights_only=True)
    if len(statuses) != world_size:
        raise ValueError(
            f"{path} holds data state for {len(statuses)} ranks but this run has {world_size}; data resume "
            "needs the same world size (or restart the data with --resume_model_only)"
        )
    return statuses[rank]


def load_ema(step_dir: str, ema) -> None:
    from safetensors.torch import load_file

    if os.path.isdir(os.path.join(step_dir, LORA_EMA_DIR)):
        ema.load_full_state_dict(read_adapter(os.path.join(step_dir, LORA_EMA_DIR))[1])
        return
    path = os.path.join(step_dir, EMA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing although --ema is set for the resumed run")
    ema.load_full_state_dict(load_file(path))
