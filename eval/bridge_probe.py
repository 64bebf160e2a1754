"""The understanding bridge measured where it acts: does the semantic mask keep the instructed subject?

    python -m eval.bridge_probe --model_path ckpts/scone-tiny \\
        --bench_dir ckpts/tiny-work/data/shapeworld/bench --out results/bridge/tiny [--limit N]

Scone's bridge (modeling/semantic_mask.py) keeps, of every reference image, the ViT and VAE tokens whose
hidden state after ``semantic_layer`` is similar enough to the instruction's (cosine ≥ ``threshold``), and
hides the rest from the generated image's tokens. In ShapeWorld the truth is known: a reference token
belongs to the instructed subject when its patch overlaps a pixel of a requested subject of that
reference. For every distinction case of a ShapeWorld benchmark the probe runs the model's training
forward with the bridge on (the case's references, instruction and ground-truth target, exactly as a
training sample) and scores the kept set of every reference that holds subjects:

* **precision** = kept ∩ truth / kept, **recall** = kept ∩ truth / truth (summed over references);
* **random floor**: the expected precision / recall of a mask that keeps as many tokens of each reference,
  chosen uniformly at random (kept · truth / tokens per reference, exact, no sampling);
* **kept**: the share of reference tokens kept; **AUROC**: how well the similarity alone ranks truth
  tokens above the others (mean over references with both kinds; 0.5 is chance), which does not depend on
  the threshold; **top-truth precision**: the precision of keeping, per reference, as many of its most
  similar tokens as it has truth tokens (precision = recall there; random: Σ truth² / tokens over Σ truth),
  also threshold-free; the mean similarity of truth and other tokens (the threshold is in the model's
  ``scone_config.json``, 0.88 by default).

Written to ``--out``: ``probe.json`` (per task type and all) and ``probe.md``; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.benchmark_cases import resolve_in_dir
from data.data_config import ModelGeometry
from data.sample_builder import SampleBuilder, new_sample
from data.sequence_packing import PackingConfig, pack_samples
from data.synthetic.render import Background, render_image
from data.synthetic.shapeworld import case_from_record
from eval.shapeworld import load_bench
from inference.cli_common import (
    USER_ERRORS,
    add_model_args,
    default_model_path,
    load_pipeline,
    report_user_error,
)
from inference.pipeline import load_image
from modeling.flow import noise_levels
from modeling.kv_cache import MaskedAttention
from modeling.sequence import clean_latent_tokens

log = logging.getLogger("scone.bridge_probe")

_PLAIN = Background("white", "plain")


def subject_pixels(size: int, placements) -> np.ndarray:
    """bool [size, size]: the pixels ``placements`` paint (anti-aliased edges included)."""
    empty = np.asarray(render_image(size, _PLAIN), dtype=np.int16)
    drawn = np.asarray(render_image(size, _PLAIN, placements), dtype=np.int16)
    return np.abs(drawn - empty).max(axis=-1) > 0


def token_truth(pixels: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """bool [h*w]: the tokens of an ``h``×``w`` grid over the image whose patch overlaps a truth pixel."""
    t = torch.from_numpy(pixels.astype(np.float32))[None, None]
    return (F.adaptive_avg_pool2d(t, grid).flatten() > 0).cpu()


def auroc(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Probability that a truth token scores above a non-truth one (ties count half); None if one kind is
    missing."""
    pos, neg = scores[truth].double(), scores[~truth].double()
    if pos.numel() == 0 or neg.numel() == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def packing_config(pipe) -> PackingConfig:
    """The training packer's settings for ``pipe``'s model, with no condition dropout."""
    geometry = asdict(ModelGeometry.of(pipe.config))
    return PackingConfig.from_special_ids(
        pipe.special,
        text_cond_dropout_prob=0.0,
        vit_cond_dropout_prob=0.0,
        vae_cond_dropout_prob=0.0,
        **geometry,
    )


@torch.no_grad()
def probe_record(pipe, packing: PackingConfig, record: dict, bench_dir: str, seed: int = 0) -> list[dict]:
    """The bridge on one benchmark case: per reference that holds subjects, its tokens' similarities, the
    kept set and the truth set (ViT tokens first, then VAE tokens)."""
    case = case_from_record(record)
    images = [load_image(resolve_in_dir(bench_dir, p)) for p in record["input_images"]]
    target = load_image(resolve_in_dir(bench_dir, record["target_image"]))
    builder = SampleBuilder(pipe.tokenizer, pipe.vae_transform, pipe.vit_transform)
    sample = new_sample()
    for im in images:
        builder.add_image(sample, im, need_loss=False, need_vae=True, need_vit=True)
    builder.add_text(sample, record["instruction"], need_loss=False)
    builder.add_image(sample, target, need_loss=True, need_vae=False, need_vit=False)
    model = pipe.model
    seq = pack_samples([sample], packing).to(model.device)
    g = torch.Generator().manual_seed(seed)
    latent = pipe.vae.encode(seq.vae_images, generator=g)  # the VAE lives with the model (no offload here)
    clean = clean_latent_tokens(latent, seq.vae_grids, pipe.config.latent_patch_size)
    # The training forward's inputs: clean reference latents (t = 0) and a noised target. The target's
    # noise does not move the bridge: references and instruction come before it and attend causally.
    t = noise_levels(seq.vae_timesteps, pipe.config.timestep_shift)
    eps = torch.randn(clean.shape, generator=g)
    seq = seq.with_latents(((1 - t[:, None]) * clean + t[:, None] * eps).to(model.device), t.to(model.device))
    plan = MaskedAttention(seq.sample_lens, seq.attention_masks(model.device))
    sem = model(seq, plan, use_semantic_mask=True).semantic
    if len(sem.sim_vit) != len(images) or len(sem.sim_vae) != len(images):
        raise RuntimeError(
            f"{record['key']}: the bridge measured {len(sem.sim_vit)} of {len(images)} references"
        )
    threshold = torch.tensor(pipe.config.semantic_threshold, dtype=torch.bfloat16)
    vit_grids = list(seq.vit_grids)
    rows = []
    for i, ref in enumerate(case.references):
        if ref.kind != "subjects":
            continue
        wanted = [p for p, label in zip(ref.placements, ref.labels) if label]
        pixels = subject_pixels(case.size, wanted)
        sim_vae = sem.sim_vae[i].flatten()
        vae_grid = tuple(sem.sim_vae[i].shape[-2:])
        sims = torch.cat([sem.sim_vit[i].float().cpu(), sim_vae.float().cpu()])
        truth = torch.cat([token_truth(pixels, vit_grids[i]), token_truth(pixels, vae_grid)])
        rows.append(
            {
                "key": record["key"],
                "task_type": record["task_type"],
                "reference": i,
                "n_vit": int(sem.sim_vit[i].numel()),
                "similarity": sims,
                "kept": sims.to(torch.bfloat16) >= threshold,  # the bridge's own test, in bf16
                "truth": truth,
            }
        )
    return rows


def _split_counts(r: dict) -> list[tuple[int, int, int, int]]:
    """(tokens, kept, truth, kept ∩ truth) of the ViT part and of the VAE part of one reference."""
    out = []
    for part in (slice(0, r["n_vit"]), slice(r["n_vit"], None)):
        kept, truth = r["kept"][part], r["truth"][part]
        out.append((kept.numel(), int(kept.sum()), int(truth.sum()), int((kept & truth).sum())))
    return out


def summarise(rows: list[dict]) -> dict:
    """Per task type and ``all``: precision, recall, their random floor, kept share and AUROC."""
    out = {}
    for task in sorted({r["task_type"] for r in rows}) + ["all"]:
        mine = [r for r in rows if task in ("all", r["task_type"])]
        tokens = kept = truth = hit = 0
        rand_hit = 0.0
        for r in mine:
            for n, k, t, h in _split_counts(r):  # a random mask of equal size, per part of each reference
                tokens, kept, truth, hit = tokens + n, kept + k, truth + t, hit + h
                rand_hit += k * t / n
        aucs = [a for a in (auroc(r["similarity"], r["truth"]) for r in mine) if a is not None]
        top_hit = top_truth = top_rand = 0.0  # keep each reference's |truth| most similar tokens
        for r in mine:
            g = int(r["truth"].sum())
            top = torch.topk(r["similarity"], g).indices if g else torch.zeros(0, dtype=torch.long)
            top_hit += float(r["truth"][top].sum())
            top_truth += g
            top_rand += g * g / r["truth"].numel()
        sims = torch.cat([r["similarity"] for r in mine])
        truths = torch.cat([r["truth"] for r in mine])
        out[task] = {
            "references": len(mine),
            "tokens": tokens,
            "truth_share": truth / tokens if tokens else None,
            "kept_share": kept / tokens if tokens else None,
            "precision": hit / kept if kept else None,
            "recall": hit / truth if truth else None,
            "random_precision": rand_hit / kept if kept else None,
            "random_recall": rand_hit / truth if truth else None,
            "auroc": sum(aucs) / len(aucs) if aucs else None,
            "precision_at_truth": top_hit / top_truth if top_truth else None,
            "random_precision_at_truth": top_rand / top_truth if top_truth else None,
            "similarity_truth": float(sims[truths].mean()) if truths.any() else None,
            "similarity_other": float(sims[~truths].mean()) if (~truths).any() else None,
            "similarity_range": [float(sims.min()), float(sims.max())],
        }
    return out


def markdown(summary: dict) -> str:
    def f(v, pct=True):
        return "–" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")

    lines = [
        "| task type | references | truth share | kept | precision (random) | recall (random) | AUROC "
        "| top-truth precision (random) | similarity truth / other |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, e in summary.items():
        lines.append(
            f"| {task} | {e['references']} | {f(e['truth_share'])} | {f(e['kept_share'])} | "
            f"{f(e['precision'])} ({f(e['random_precision'])}) | {f(e['recall'])} ({f(e['random_recall'])}) | "
            f"{f(e['auroc'], pct=False)} | {f(e['precision_at_truth'])} ({f(e['random_precision_at_truth'])}) | "
            f"{f(e['similarity_truth'], False)} / {f(e['similarity_other'], False)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--bench_dir", required=True, help="a ShapeWorld benchmark folder (make_shapeworld)")
    p.add_argument("--out", required=True, help="output folder (probe.json, probe.md)")
    p.add_argument("--limit", type=int, default=None, help="only the first N distinction cases")
    args = p.parse_args(argv)
    try:
        records = [r for r in load_bench(args.bench_dir) if r["task_type"].startswith("distinction")]
        records = records[: args.limit]
        args.model_path = default_model_path(args.model_path)
        pipe = load_pipeline(args)
        packing = packing_config(pipe)
        rows = []
        for record in tqdm(records, desc="cases"):
            rows.extend(probe_record(pipe, packing, record, args.bench_dir))
    except USER_ERRORS as e:
        return report_user_error(log, e, args.debug)
    summary = summarise(rows)
    os.makedirs(args.out, exist_ok=True)
    meta = {"model_path": args.model_path, "bench_dir": args.bench_dir, "cases": len(records)}
    with open(os.path.join(args.out, "probe.json"), "w", encoding="utf-8") as f:
        json.dump({**meta, "threshold": pipe.config.semantic_threshold, "task_types": summary}, f, indent=2)
    table = markdown(summary)
    with open(os.path.join(args.out, "probe.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
