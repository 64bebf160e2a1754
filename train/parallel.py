"""Process group, device mesh, FSDP2 sharding and activation checkpointing (docs/training.md).

Upstream wraps with FSDP1 (``HYBRID_SHARD``, ``use_orig_params``); we use FSDP2 ``fully_shard``
(per-parameter DTensor sharding, so frozen and trainable parameters can share a unit without flat-param
tricks). Wrapping order, torchtitan-style: activation checkpointing on each block, ``fully_shard`` on
each block, on a few named submodules, then on the root. Everything runs on CPU with gloo for tests.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger(__name__)

SHARDING_STRATEGIES = ("FULL_SHARD", "HYBRID_SHARD", "NO_SHARD")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(kind: str) -> str:
    """``auto`` → cuda when available, else cpu."""
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown --device {kind!r}")
    return kind


def init_distributed(device_kind: str = "auto", timeout_min: int = 30) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` set); else run single-process.

    Backend: nccl on CUDA, gloo on CPU. Without torchrun on the CPU no group is created (collective
    helpers fall back to the identity, no FSDP, fp32); without torchrun on one GPU a 1-rank group is
    created so that FSDP's mixed precision applies.
    """
    kind = resolve_device(device_kind)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "WORLD_SIZE" not in os.environ:
        if kind == "cpu":
            return DistInfo(device=torch.device("cpu"))
        # One GPU without torchrun: a 1-rank NCCL group, so that the same FSDP2 path gives bf16 compute
        # over fp32 master weights (the model casts activations to its parameters' dtype).
        os.environ.update(
            {
                "WORLD_SIZE": "1",
                "RANK": "0",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()),
            }
        )
        world = 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return DistInfo(rank=dist.get_rank(), world_size=world, local_rank=local_rank, device=device)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a local rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_mesh(strategy: str, world_size: int, num_replicate: int, num_shard: int, device_type: str):
    """1-D mesh for FULL_SHARD; 2-D ``(replicate, shard)`` mesh for HYBRID_SHARD (HSDP) and NO_SHARD.

    NO_SHARD is HSDP with a shard group of one (pure data parallel). HYBRID_SHARD needs
    ``num_replicate * num_shard == world_size``; upstream scripts use 1 × 8 on one node.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if strategy not in SHARDING_STRATEGIES:
        raise ValueError(f"unknown sharding_strategy {strategy!r}; choose from {SHARDING_STRATEGIES}")
    if strategy == "FULL_SHARD":
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    if strategy == "NO_SHARD":
        num_replicate, num_shard = world_size, 1
    if num_replicate * num_shard != world_size:
        raise ValueError(
            f"HYBRID_SHARD needs num_replicate*num_shard == world size, got {num_replicate}*{num_shard} != "
            f"{world_size} (set --num_replicate/--num_shard, e.g. 1 and {world_size} on one node)"
        )
    return init_device_mesh(device_type, (num_replicate, num_shard), mesh_dim_names=("replicate", "shard"))


def modules_of_types(model: nn.Module, classes: tuple[type, ...]) -> list[nn.Module]:
    return [m for m in model.modules() if classes and isinstance(m, classes)]


def apply_activation_checkpointing(model: nn.Module, block_classes: tuple[type, ...]) -> int:
    """Non-reentrant activation checkpointing on every block of ``block_classes``; returns the count.

    The composable ``checkpoint`` hooks the module in place, so parameter names (and therefore the
    saved state-dict keys) stay clean — no ``_checkpoint_wrapped_module`` prefix.
    """
    from torch.distributed._composable import checkpoint

    blocks = modules_of_types(model, block_classes)
    for m in blocks:
        checkpoint(m)
    return len(blocks)


def mixed_precision_policy(param_dtype: torch.dtype | None, reduce_dtype: torch.dtype | None):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)


def apply_fsdp(
    model: nn.Module,
    mesh,
    block_classes: tuple[type, ...],
    submodule_names: tuple[str, ...] = (),
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
) -> nn.Module:
    """``fully_shard`` every block, every existing ``submodule_names`` entry, then the root.

    ``submodule_names`` must name modules whose parameters are only used inside their own forward
    (FSDP2 gathers parameters in the forward pre-hook); everything else lands in the root unit.
    """
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        OffloadPolicy,
        fully_shard,
    )

    mp = mixed_precision_policy(param_dtype, reduce_dtype)
    offload = CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda") if cpu_offload else OffloadPolicy()
    kw = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    units = modules_of_types(model, block_classes)
    for name in submodule_names:
        try:
            units.append(model.get_submodule(name))
        except AttributeError:
            continue
    for m in units:
        fully_shard(m, **kw)
    fully_shard(model, reshard_after_forward=False, **kw)
    logger.info("FSDP2: %d units + root on mesh %s", len(units), tuple(mesh.shape))
    return model


def load_full_state_from_rank0(
    model: nn.Module, full_state: dict[str, torch.Tensor] | None, device: torch.device
) -> None:
    """Materialise a meta-built, ``fully_shard``-ed model on ``device`` and fill it from rank 0.

    ``full_state``: the full (unsharded) state dict on rank 0, ``None`` elsewhere. Tensors are broadcast one
    by one and every rank keeps only its shard, so host memory per rank is a shard, not the whole model
    (8 ranks × a 7B model in fp32 would otherwise hold 8 × 28 GB of host RAM while loading). Strict: a
    missing or unexpected key raises on every rank.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(model, full_state if full_state is not None else {}, options=options)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip reduce-scatter on non-final gradient-accumulation micro-steps (no-op without FSDP)."""
    fn = getattr(model, "set_requires_gradient_sync", None)
    if fn is not None:
        fn(enabled)


# --- small collective helpers (identity without a process group) ---------------------------------


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_gather_object(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_counters(counters: dict[str, float]) -> dict[str, float]:
    """Counters summed over all ranks (keys of any rank). Collective: every rank must call it."""
    total: dict[str, float] = {}
    for part in all_gather_object(dict(counters)):
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
