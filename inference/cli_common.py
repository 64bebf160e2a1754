"""Argument helpers shared by the inference command lines."""

from __future__ import annotations

import argparse
import os

import torch

DEFAULT_MODEL_CANDIDATES = ("ckpts/scone-tiny", "ckpts/Scone")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model_path",
        default=None,
        help="released-layout folder or hub id (default: $SCONE_MODEL_PATH, else ckpts/scone-tiny, "
        "else ckpts/Scone)",
    )
    p.add_argument("--weights_file", default=None, help="model.safetensors (default) or ema.safetensors")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="auto: bf16 on CUDA, fp32 on CPU",
    )


def resolve_model_path(arg: str | None) -> str:
    if arg:
        return arg
    env = os.environ.get("SCONE_MODEL_PATH")
    if env:
        return env
    for cand in DEFAULT_MODEL_CANDIDATES:
        if os.path.isdir(cand):
            return cand
    raise SystemExit(
        "no --model_path given and none of ckpts/scone-tiny, ckpts/Scone exists (see ckpts/README.md)"
    )


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    return dev, dt
