"""Argument helpers shared by the inference command lines."""

from __future__ import annotations

import argparse
import logging
import os

import torch

from inference.offload import OFFLOAD_MODES
from modeling.errors import CheckpointError
from modeling.weight_formats import FLOAT_FORMATS, WEIGHT_FORMATS, compute_dtype

# A downloaded Scone wins; a fresh clone falls back to the shipped tiny ShapeWorld model.
DEFAULT_MODEL_CANDIDATES = ("ckpts/Scone", "ckpts/scone-tiny")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The errors a user can fix (a path, a file, a value): one ERROR line and exit code 2, unless --debug.
USER_ERRORS = (CheckpointError, FileNotFoundError, NotADirectoryError, ValueError, TypeError)


def report_user_error(log: logging.Logger, error: BaseException, debug: bool) -> int:
    """Log ``error`` as one line (the full traceback with ``--debug``) and return the exit code 2."""
    if debug:
        log.exception("%s", error)
    else:
        log.error(
            "%s (run with --debug for the traceback)",
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )
    return 2


def check_inputs(
    images: list[str],
    text: str,
    flag: str,
    height: int | None,
    width: int | None,
    model_path: str | None = None,
    weights_file: str | None = None,
) -> None:
    """Everything that can be checked before the model loads: the images open and decode, the text is not
    empty, the size is a positive multiple of 16 and (for a local ``model_path``) within the largest side
    the model can draw, read from its configs and file headers. Raises ValueError / FileNotFoundError /
    CheckpointError naming the input."""
    from inference.pipeline import load_image

    if not text or not text.strip():
        raise ValueError(f"{flag} must not be empty")
    for path in images:
        load_image(path)
    for name, v in (("--height", height), ("--width", width)):
        if v is not None and (v <= 0 or v % 16):
            raise ValueError(f"{name} must be a positive multiple of 16, got {v}")
    sides = [v for v in (height, width) if v is not None]
    if sides and model_path and os.path.isdir(model_path):
        from modeling.checkpoint import check_model_folder, max_output_side

        limit = max_output_side(check_model_folder(model_path, weights_file), weights_file)
        if max(sides) > limit:
            raise ValueError(f"--height/--width {max(sides)} exceeds this model's largest side, {limit} px")


# ----------------------------------------------------------------------------- the flag vocabulary
# Every entry point that loads a model builds its loading flags here, so a flag added to this group
# exists on single_case, understand, the web demo, benchmark generation and any new front end at once
# (tests/test_cli_vocabulary.py checks that they all accept the same set).
MODEL_FLAGS = (
    "--model_path",
    "--weights_file",
    "--weights",
    "--offload",
    "--offload_group_size",
    "--compile",
    "--lora",
    "--lora_scale",
    "--device",
    "--dtype",
    "--debug",
)


def add_model_args(p: argparse.ArgumentParser, several_lora: bool = False) -> None:
    """The model-loading group: what ``SconePipeline.from_pretrained`` takes, plus ``--debug``.
    ``several_lora``: a server's ``--lora`` may be repeated as ``NAME=PATH`` (adapters chosen per request)."""
    g = p.add_argument_group("model loading")
    g.add_argument(
        "--model_path",
        default=None,
        help="released-layout folder or hub id (default: $SCONE_MODEL_PATH, else ckpts/Scone if downloaded, "
        "else the shipped tiny ShapeWorld model ckpts/scone-tiny)",
    )
    g.add_argument("--weights_file", default=None, help="model.safetensors (default) or ema.safetensors")
    g.add_argument(
        "--weights",
        default=None,
        choices=WEIGHT_FORMATS,
        help="weight format: the --dtype (default), or int8 / fp8 weight-only quantized decoder blocks",
    )
    g.add_argument(
        "--offload",
        default="none",
        choices=OFFLOAD_MODES,
        help="model: weights in CPU RAM between calls; group: decoder blocks streamed to the GPU (small GPUs)",
    )
    g.add_argument(
        "--offload_group_size", type=int, default=1, help="decoder blocks per copy (--offload group)"
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decoder layers of the denoising step (one graph for all layers; the first "
        "image pays the compile time)",
    )
    lora_help = (
        "a LoRA adapter folder (adapter_config.json + adapter_model.safetensors, PEFT's format) or hub id, "
        "applied on top of the model without merging"
    )
    if several_lora:
        g.add_argument(
            "--lora",
            default=None,
            action="append",
            metavar="[NAME=]ADAPTER",
            help=lora_help + "; repeat for several, each served as model NAME (default: the folder's name)",
        )
    else:
        g.add_argument("--lora", default=None, metavar="ADAPTER", help=lora_help)
    g.add_argument("--lora_scale", type=float, default=1.0, help="strength of --lora (1.0: as trained)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *FLOAT_FORMATS],
        help="auto: bf16 on CUDA, fp32 on CPU",
    )
    g.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def add_think_args(p: argparse.ArgumentParser, what: str = "generate", budget: bool = True) -> None:
    """Think mode, one definition for every front end: the model writes its reasoning first (the think
    system prompt of modeling/prompts.py), then answers or draws. ``budget``: a separate token budget for
    the reasoning (image generation); an answer's reasoning counts against its own answer budget."""
    p.add_argument("--think", action="store_true", help=f"reason in text first, then {what}")
    if budget:
        p.add_argument(
            "--max_think_tokens",
            type=int,
            default=1000,
            help="the most tokens the reasoning may take (--think)",
        )


def pipeline_load_kwargs(args: argparse.Namespace) -> dict:
    """The ``add_model_args`` weight, offload and LoRA flags as ``from_pretrained`` keywords."""
    return dict(
        weights=args.weights,
        offload=args.offload,
        offload_group_size=args.offload_group_size,
        compile=args.compile,
        lora=args.lora,
        lora_scale=args.lora_scale,
    )


def load_pipeline(args: argparse.Namespace, device: str | None = None, **extra):
    """The ``SconePipeline`` of the ``add_model_args`` flags (``device`` overrides ``--device``, e.g. a
    distributed rank's GPU). ``load_pretrained`` checks the folder (naming every missing file) before it
    reads any of them."""
    from inference.pipeline import SconePipeline

    device, dtype = resolve_device_dtype(device or args.device, args.dtype)
    return SconePipeline.from_pretrained(
        default_model_path(args.model_path),
        device=device,
        dtype=dtype,
        weights_file=args.weights_file,
        **pipeline_load_kwargs(args),
        **extra,
    )


def default_model_path(arg: str | None) -> str:
    if arg:
        return arg
    env = os.environ.get("SCONE_MODEL_PATH")
    if env:
        return env
    # relative to the working directory first, then to this checkout (the shipped tiny model)
    for cand in DEFAULT_MODEL_CANDIDATES:
        for path in (cand, os.path.join(REPO_ROOT, cand)):
            if os.path.isdir(path):
                logging.getLogger(__name__).info("no --model_path given: using %s", path)
                return path
    raise SystemExit(
        "no --model_path given and none of ckpts/Scone, ckpts/scone-tiny exists (see ckpts/README.md)"
    )


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    return dev, compute_dtype(dtype, dev.type)
