"""Throughput, MFU and logging of training metrics (docs/training.md).

Rank 0 writes log lines, a JSON-lines file ``{results_dir}/metrics.jsonl`` (one record per logged step,
handy for tests and plots) and, optionally, Weights & Biases (imported lazily, off by default).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# Dense bf16 peak TFLOPs by GPU name fragment (first match wins; order: specific before generic).
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("H20", 148.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A6000", 155.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("4090", 165.0),
    ("3090", 71.0),
    ("V100", 125.0),
)


def guess_peak_tflops(device: torch.device) -> float:
    """Peak dense bf16 TFLOPs of one device from its name; 0.0 when unknown (MFU then not reported)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for frag, tf in PEAK_TFLOPS:
        if frag in name:
            return tf
    logger.warning("unknown GPU %r: pass --peak_device_tflops to get MFU", name)
    return 0.0


def dense_llm_params(model: nn.Module) -> int:
    """Parameters one token passes through in the LLM: one expert's layers (MoT routes each token to
    one of the twins), the final norm and lm_head; the embedding table is a lookup, not a matmul."""
    n = 0
    for name, p in model.named_parameters():
        if name.startswith("language_model.") and "moe_gen" not in name and "embed_tokens" not in name:
            n += p.numel()
    return n


def attention_flop_coeff(model: nn.Module) -> int:
    """``12 · head_dim · num_heads · num_layers`` (forward + backward attention FLOPs per token pair)."""
    cfg = model.config.llm
    return 12 * cfg.head_dim * cfg.num_attention_heads * cfg.num_hidden_layers


def step_flops(dense_params: int, attn_coeff: int, num_tokens: int, sample_lens) -> float:
    """``6·N_dense·tokens + 12·hd·nh·L·Σ sample_len²``."""
    return 6.0 * dense_params * num_tokens + float(attn_coeff) * float(sum(int(s) ** 2 for s in sample_lens))


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:  # CPU: resident-set peak of this process
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except Exception:  # pragma: no cover
        return float("nan")


class Throughput:
    """Accumulates tokens / FLOPs between two log points (all ranks' totals are passed in)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0
        self.tokens = 0.0
        self.flops = 0.0

    def add(self, steps: int, tokens: float, flops: float) -> None:
        self.steps += steps
        self.tokens += tokens
        self.flops += flops

    def rates(self, peak_tflops_total: float) -> dict:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {"steps_per_s": self.steps / dt, "tokens_per_s": self.tokens / dt}
        if peak_tflops_total > 0:
            out["mfu"] = self.flops / dt / (peak_tflops_total * 1e12)
        return out


class MetricLogger:
    """Rank-0 sink for metrics: log line, ``metrics.jsonl``, optional wandb."""

    def __init__(self, results_dir: str | None, is_main: bool, wandb_cfg: dict | None = None):
        self.is_main = is_main
        self.file = None
        self.wandb = None
        if not is_main:
            return
        if results_dir:
            os.makedirs(results_dir, exist_ok=True)
            self.file = open(os.path.join(results_dir, "metrics.jsonl"), "a")
        if wandb_cfg and wandb_cfg.get("enabled"):
            self.wandb = _init_wandb(wandb_cfg)

    def log(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        rec = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        parts = [f"step {step}"] + [f"{k} {_fmt(v)}" for k, v in rec.items() if k != "step"]
        logger.info(" | ".join(parts))
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.wandb is not None:
            self.wandb.log(rec, step=step)

    def event(self, step: int, kind: str, **info) -> None:
        """Non-metric records (skipped steps, saves) also go to metrics.jsonl with an ``event`` field."""
        if not self.is_main:
            return
        rec = {"step": step, "event": kind, **{k: _plain(v) for k, v in info.items()}}
        logger.warning("step %d: %s %s", step, kind, info) if kind.startswith("skip") else logger.info(
            "step %d: %s %s", step, kind, info
        )
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _init_wandb(cfg: dict):
    try:
        import wandb
    except ImportError as e:
        raise RuntimeError("--wandb_project given but wandb is not installed (pip install wandb)") from e
    if cfg.get("offline"):
        os.environ["WANDB_MODE"] = "offline"
    wandb.init(
        project=cfg.get("project"),
        name=cfg.get("name"),
        id=cfg.get("runid"),
        resume=cfg.get("resume", "allow"),
        config=cfg.get("config"),
        dir=cfg.get("dir"),
    )
    return wandb


def _plain(v):
    if torch.is_tensor(v):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # keep JSON valid
    return v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if (abs(v) >= 1e-3 or v == 0) else f"{v:.3e}"
    return str(v)
