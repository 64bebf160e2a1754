"""The autoencoder's ceiling on ShapeWorld: ground-truth targets passed through encode → decode, written in
the benchmark runner's layout so that ``python -m eval.shapeworld`` scores them like generated images.

    python scripts/tiny/vae_roundtrip.py --ae ckpts/scone-tiny/ae.safetensors \\
        --bench_dir ckpts/tiny-work/data/shapeworld/bench --out ckpts/tiny-work/eval/vae_roundtrip
    python -m eval.shapeworld --bench_dir ckpts/tiny-work/data/shapeworld/bench \\
        --result_dir ckpts/tiny-work/eval/vae_roundtrip

A generator can at best reach this score: every image it makes goes through the same decoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from PIL import Image

# run as a file from anywhere: make the checkout importable
from data.transforms import to_tensor_normalized
from inference.pipeline import SconePipeline
from modeling.autoencoder import load_autoencoder

logger = logging.getLogger("vae_roundtrip")


@torch.no_grad()
def roundtrip(ae, image: Image.Image) -> Image.Image:
    x = to_tensor_normalized(image)[None]
    return SconePipeline.to_pil(ae.decode(ae.encode_mean(x)))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ae", required=True, help="ae.safetensors")
    p.add_argument("--bench_dir", required=True)
    p.add_argument("--out", required=True, help="written as OUT/round0/{task_type}/{key}.png")
    args = p.parse_args(argv)
    ae = load_autoencoder(args.ae)
    bench = Path(args.bench_dir)
    n = 0
    with open(bench / "data.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            out = Path(args.out) / "round0" / rec["task_type"] / f"{rec['key']}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            roundtrip(ae, Image.open(bench / rec["target_image"])).save(out)
            n += 1
    logger.info("wrote %d round-tripped targets under %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
