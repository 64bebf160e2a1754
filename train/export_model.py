"""Turn a training step folder into a shippable model folder (released layout, half-precision weights).

A step folder already loads with ``SconePipeline.from_pretrained``, but it also carries the optimizer
state, the data status and fp32 weights. Export keeps only what a released folder holds — configs,
``scone_config.json`` if any, tokenizer files, ``ae.safetensors`` and ``model.safetensors`` — with the
floating-point tensors stored in ``--dtype`` (the loaders cast to the compute dtype on load), then loads
the result once to check it.

    python -m train.export_model --src ckpts/tiny-work/stage2_step2/0000399 --out ckpts/scone-tiny --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil

import torch
from safetensors.torch import load_file

from modeling.checkpoint import AE_FILE
from modeling.config import SCONE_CONFIG_FILE as SCONE_CONFIG
from modeling.files import save_safetensors
from modeling.weight_formats import FLOAT_FORMATS
from train.checkpointing import FOLDER_FILES, MODEL_FILE, REQUIRED_FOLDER_FILES

logger = logging.getLogger(__name__)


def _cast_file(src: str, dst: str, dtype: torch.dtype) -> int:
    state = load_file(src, device="cpu")
    out = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_safetensors(out, dst)
    return os.path.getsize(dst)


def export_folder(
    src: str, out: str, dtype: str = "fp16", weights_file: str = MODEL_FILE, answers: bool = False
) -> dict:
    """Write ``out`` from step folder ``src``; returns {file: bytes}. Refuses to write into ``src``.
    ``answers``: the model was trained to answer (scripts/tiny/understand.sh), so the exported
    ``scone_config.json`` loses the ``generation_only`` flag its generation-only ancestors carried."""
    if os.path.abspath(src) == os.path.abspath(out):
        raise ValueError("--out must differ from --src")
    missing = [f for f in (*REQUIRED_FOLDER_FILES, weights_file) if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise FileNotFoundError(f"{src} is missing {', '.join(missing)}")
    os.makedirs(out, exist_ok=True)
    sizes = {}
    for name in FOLDER_FILES:
        path = os.path.join(src, name)
        if name == AE_FILE or not os.path.isfile(path):
            continue
        shutil.copy(path, os.path.join(out, name))
        sizes[name] = os.path.getsize(path)
    config_path = os.path.join(out, SCONE_CONFIG)
    if answers:
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{src} has no {SCONE_CONFIG} to mark as answering")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        config.pop("generation_only", None)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        sizes[SCONE_CONFIG] = os.path.getsize(config_path)
    sizes[AE_FILE] = _cast_file(os.path.join(src, AE_FILE), os.path.join(out, AE_FILE), FLOAT_FORMATS[dtype])
    sizes[MODEL_FILE] = _cast_file(
        os.path.join(src, weights_file), os.path.join(out, MODEL_FILE), FLOAT_FORMATS[dtype]
    )
    from modeling.checkpoint import load_pretrained

    load_pretrained(out)  # the shipped folder must load strictly
    logger.info("exported %s -> %s (%.1f MB): %s", src, out, sum(sizes.values()) / 1e6, json.dumps(sizes))
    return sizes


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="training step folder (or any released-layout folder)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=sorted(FLOAT_FORMATS), default="fp16")
    p.add_argument("--weights_file", default=MODEL_FILE, help="model.safetensors or ema.safetensors")
    p.add_argument(
        "--answers",
        action="store_true",
        help="the model was trained to answer questions: drop generation_only from scone_config.json",
    )
    args = p.parse_args(argv)
    export_folder(args.src, args.out, args.dtype, args.weights_file, args.answers)


if __name__ == "__main__":
    main()
