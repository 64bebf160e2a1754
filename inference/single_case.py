"""Generate one image from reference images and an instruction.

    python -m inference.single_case --model_path ckpts/Scone \\
        --instruction "The man from image 1 holds the cup from image 2." \\
        --input_image_paths ref1.png ref2.png --seed 1234

Flags mirror the original ``inference_single_case.py`` (model_path, instruction, input_image_paths,
seed) plus the sampling knobs. Writes a PNG (default ``outputs/seed_{seed}/{time}_{prompt}.png``, the
original layout) and prints its path.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

from inference.cli_common import (
    USER_ERRORS,
    add_model_args,
    add_think_args,
    check_inputs,
    default_model_path,
    load_pipeline,
    report_user_error,
)
from inference.sampling import add_sampling_args, sampling_overrides

log = logging.getLogger("scone.single_case")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--instruction", required=True)
    p.add_argument("--input_image_paths", nargs="*", default=[], help="reference images, in order")
    p.add_argument("--seed", type=int, default=1234)
    add_sampling_args(p)
    add_think_args(p)
    p.add_argument("--output", default=None, help="output PNG path (default: outputs/seed_{seed}/...)")
    p.add_argument("--output_dir", default="outputs")
    return p


def default_output_path(output_dir: str, seed: int, instruction: str) -> str:
    name = instruction.replace(" ", "_").replace(".", "_")[:60]
    name = "".join(ch for ch in name if ch.isalnum() or ch in "_-") or "image"
    return os.path.join(output_dir, f"seed_{seed}", f"{time.strftime('%Y%m%d-%H%M%S')}_{name}.png")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.model_path = default_model_path(args.model_path)
        check_inputs(
            args.input_image_paths,
            args.instruction,
            "--instruction",
            args.height,
            args.width,
            args.model_path,
            args.weights_file,
        )
        pipe = load_pipeline(args)
        out = pipe.generate(
            images=args.input_image_paths,
            prompt=args.instruction,
            seed=args.seed,
            think=args.think,
            max_think_tokens=args.max_think_tokens,
            progress=True,
            **sampling_overrides(args),
        )
    except USER_ERRORS as e:
        return report_user_error(log, e, args.debug)
    path = args.output or default_output_path(args.output_dir, args.seed, args.instruction)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out.image.save(path)
    if out.thought:
        log.info("thought: %s", out.thought)
    print(path)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
