"""Fold a LoRA adapter into its base model and write a folder in the released layout.

    python -m train.merge_lora --base ckpts/scone-tiny --lora runs/lora/0000400 --out ckpts/scone-tiny-mine

The merged weights are ``W + (alpha / r) * lora_scale * B A``, computed in fp32 and stored in ``--dtype``
(default: fp32); the configs, tokenizer and VAE are copied from the base. The result loads with
``SconePipeline.from_pretrained(out)`` like any released folder, and is then as fast as the base (no
adapter in the forward).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

import torch

from modeling.checkpoint import check_model_folder, load_pretrained
from modeling.errors import CheckpointError
from modeling.files import give_default_mode, save_safetensors
from modeling.lora import load_adapter, merge_lora, resolve_adapter
from modeling.weight_formats import FLOAT_FORMATS
from train.checkpointing import FOLDER_FILES, MODEL_FILE

log = logging.getLogger("scone.merge_lora")


def merge_folder(base: str, lora: str, out: str, dtype: str = "fp32", lora_scale: float = 1.0) -> str:
    if os.path.abspath(base) == os.path.abspath(out):
        raise ValueError("--out must differ from --base")
    folder = check_model_folder(base)
    loaded = load_pretrained(folder, dtype=torch.float32)
    load_adapter(loaded.model, resolve_adapter(lora), lora_scale)
    n = merge_lora(loaded.model)
    os.makedirs(out, exist_ok=True)
    for name in FOLDER_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            shutil.copy(os.path.join(folder, name), os.path.join(out, name))
            give_default_mode(os.path.join(out, name))
    state = {
        k: v.detach().to(FLOAT_FORMATS[dtype]).contiguous() for k, v in loaded.model.state_dict().items()
    }
    save_safetensors(state, os.path.join(out, MODEL_FILE))
    load_pretrained(out)  # the merged folder must load strictly
    log.info("merged %d adapted layers of %s into %s (%s)", n, lora, out, dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="released-layout model folder or hub id")
    p.add_argument(
        "--lora",
        required=True,
        help="adapter folder (adapter_config.json + adapter_model.safetensors) or hub id",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=sorted(FLOAT_FORMATS), default="fp32")
    p.add_argument("--lora_scale", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        merge_folder(args.base, args.lora, args.out, args.dtype, args.lora_scale)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
