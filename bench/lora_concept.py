"""Teach the shipped tiny Scone a shape it has never seen (a heart) with LoRA on a CPU, and measure what it
learned and what it forgot, in ONE run:

    python bench/lora_concept.py                        # ~15 min of training on 2 cores, ~6 min of judging
    python bench/lora_concept.py --steps 4 --num_concept_eval 6 --num_heldout 6 --rounds 1   # smoke run

1. Data: a ShapeWorld world where every case requests one heart (``make_shapeworld --novel_shape heart``;
   its benchmark is the concept test), mixed half and half with standard world cases (replay, so the
   adapter does not learn "always draw a heart"); the standard held-out benchmark measures forgetting.
2. Training: ``python -m train.pretrain --lora_rank R`` on that mix, base frozen (step folders hold only
   the adapter, and a rerun of this script resumes the training where it stopped).
3. Judging, base model and base + adapter on the same cases and seeds: heart accuracy (requested hearts
   drawn as hearts; chance 1/7), Overall on the concept cases, and Overall ± std on the held-out cases.
4. Trainable parameters and AdamW state bytes, LoRA against full fine-tuning (measured by stepping AdamW).

Prints one Markdown report and writes ``WORK/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

log = logging.getLogger("lora_concept")
CONCEPT = "heart"


def make_data(work: Path, args) -> tuple[Path, Path, Path]:
    """(data mix YAML, concept benchmark, held-out benchmark) under ``work`` (reused when present)."""
    from data.synthetic.make_shapeworld import make_shapeworld

    concept, standard = work / "world_heart", work / "world0"
    if not (concept / "manifest.json").is_file():
        make_shapeworld(
            str(concept),
            args.num_concept_train,
            args.num_concept_eval,
            seed=0,
            novel_shape=CONCEPT,
            overwrite=True,
        )
    if not (standard / "manifest.json").is_file():  # the first cases of the shipped model's own world
        make_shapeworld(str(standard), args.num_replay, args.num_heldout, seed=0, overwrite=True)
    names, nums, info = [], [], {}
    for world in (concept, standard):
        manifest = json.loads((world / "manifest.json").read_text())
        for name, entry in manifest["dataset_info"]["s2i"].items():
            names.append(name)
            nums.append(entry["num_files"])
            info[name] = {
                "data_dir": os.path.relpath(entry["data_dir"], work),
                "parquet_info_path": os.path.relpath(entry["parquet_info_path"], work),
            }
    mix = {
        "s2i": {
            "dataset_names": names,
            "num_used_data": nums,
            "image_transform_args": {"image_stride": 16, "max_image_size": 96, "min_image_size": 32},
            "vit_image_transform_args": {"image_stride": 14, "max_image_size": 70, "min_image_size": 28},
            "is_mandatory": False,
            "weight": 1,
            "dataset_info": info,
        }
    }
    path = work / "heart_mix.yaml"
    path.write_text(yaml.safe_dump(mix, sort_keys=False))
    return path, concept / "bench", standard / "bench"


def train_adapter(work: Path, mix: Path, args) -> tuple[Path, float]:
    """Run (or resume) the LoRA training; returns (final step folder, seconds spent in this call)."""
    ckpt = work / "lora"
    final = ckpt / f"{args.steps - 1:07d}"
    if (final / "adapter_model.safetensors").is_file():
        log.info("adapter already trained: %s", final)
        return final, 0.0
    cmd = [
        sys.executable,
        "-m",
        "train.pretrain",
        "--model_path",
        args.model_path,
        "--dataset_config_file",
        str(mix),
        "--data_root",
        str(work),
        "--results_dir",
        str(work / "results"),
        "--checkpoint_dir",
        str(ckpt),
        "--auto_resume",
        "True",
        "--lora_rank",
        str(args.rank),
        "--lora_alpha",
        str(args.alpha or args.rank),
        "--lora_targets",
        args.targets,
        "--lora_base_weights",
        "int8" if args.int8_base else "dtype",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--activation_checkpointing",
        "False",
        "--max_latent_size",
        "16",
        "--lr",
        str(args.lr),
        "--min_lr",
        str(args.lr / 10),
        "--lr_scheduler",
        "cosine",
        "--warmup_steps",
        str(min(50, args.steps // 10)),
        "--total_steps",
        str(args.steps),
        "--save_every",
        str(args.save_every),
        "--log_every",
        "20",
        "--num_workers",
        "1",
        "--expected_num_tokens",
        str(args.tokens),
        "--max_num_tokens",
        str(args.tokens),
        "--max_num_tokens_per_sample",
        str(args.tokens),
        "--prefer_buffer_before",
        "1024",
        "--visual_und",
        "True",
        "--text_cond_dropout_prob",
        "0.1",
        "--vae_cond_dropout_prob",
        "0.0",
        "--vit_cond_dropout_prob",
        "0.0",
        "--vae_cache_gb",
        "2",
        "--vae_cache_file",
        str(work / "vae_posteriors.safetensors"),
    ]
    log.info("training: %s", " ".join(cmd))
    start = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return final, time.monotonic() - start


def judge(bench: Path, gen: Path, rounds: int) -> dict:
    """Overall (mean ± std over rounds) and the accuracy on requested hearts, from the ShapeWorld judge."""
    from eval.shapeworld import attribute_accuracy, score_benchmark

    scores = gen / "scores"
    res = score_benchmark(str(bench), str(gen), rounds=rounds, output_dir=str(scores), progress=False)
    records = [
        json.loads(line)
        for r in range(rounds)
        for line in (scores / f"round{r}" / "scoring0" / "score.jsonl").open()
    ]
    return {
        "overall": res["mean"]["leaderboard.overall"],
        "std": res["std"]["leaderboard.overall"],
        "failed": res["cases"]["failed"],
        "heart": attribute_accuracy(records, shape=CONCEPT),
    }


def adam_state_bytes(params: list[torch.nn.Parameter]) -> int:
    """Bytes of AdamW's state after one step over ``params`` (what an optimizer really allocates)."""
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    opt.step()
    total = sum(
        t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
    )
    for p in params:
        p.grad = None
    return total


def parameter_report(model_path: str, adapter: Path) -> dict:
    from modeling.checkpoint import load_pretrained
    from modeling.lora import load_adapter, lora_parameters

    model = load_pretrained(model_path, "cpu", torch.float32).model
    total = sum(p.numel() for p in model.parameters())
    full = adam_state_bytes([p for p in model.parameters() if p.requires_grad])  # fixed tables excluded
    load_adapter(model, str(adapter), dtype=torch.float32)
    lora = lora_parameters(model)
    trainable = sum(p.numel() for p in lora)
    return {
        "model_parameters": total,
        "trainable": trainable,
        "trainable_fraction": trainable / total,
        "adapter_file_bytes": (adapter / "adapter_model.safetensors").stat().st_size,
        "adam_bytes_full": full,
        "adam_bytes_lora": adam_state_bytes(lora),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=os.path.join(ROOT, "ckpts", "scone-tiny"))
    p.add_argument("--work", default=os.path.join(ROOT, "outputs", "lora_concept"))
    p.add_argument("--steps", type=int, default=1100, help="training steps (~0.8 s each on 2 cores)")
    p.add_argument("--save_every", type=int, default=250)
    p.add_argument("--rank", type=int, default=3, help="LoRA rank (3: 1.5%% of the tiny model)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--targets", default="gen:attn,mlp;und:attn")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tokens", type=int, default=3072, help="tokens per packed step (~12 cases)")
    p.add_argument("--num_concept_train", type=int, default=1200)
    p.add_argument("--num_replay", type=int, default=1200, help="standard-world training cases mixed in")
    p.add_argument("--num_concept_eval", type=int, default=60)
    p.add_argument("--num_heldout", type=int, default=150, help="first N held-out cases of world seed 0")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument(
        "--int8_base",
        action="store_true",
        help="QLoRA-style: train on (and judge with) the base's decoder linears in weight-only int8",
    )
    args = p.parse_args(argv)
    work = Path(args.work).resolve()  # parquet_info keys are absolute paths
    work.mkdir(parents=True, exist_ok=True)
    mix, concept_bench, heldout_bench = make_data(work, args)
    adapter, train_s = train_adapter(work, mix, args)

    torch.set_grad_enabled(False)
    from inference.benchmark import generate_benchmark, load_cases
    from inference.pipeline import SconePipeline

    weights = {"weights": "int8"} if args.int8_base else {}
    models = {"base": dict(weights), "base + LoRA": {"lora": str(adapter), **weights}}
    results: dict[str, dict] = {}
    for label, extra in models.items():
        pipe = SconePipeline.from_pretrained(args.model_path, device="cpu", dtype=torch.float32, **extra)
        tag = "lora" if "lora" in extra else "base"
        for name, bench in (("concept", concept_bench), ("heldout", heldout_bench)):
            cases, problems, _ = load_cases("jsonl", bench)
            gen = work / "gen" / f"{tag}_{name}"
            start = time.monotonic()
            report = generate_benchmark(
                pipe,
                cases,
                bench,
                gen,
                rounds=args.rounds,
                seed=0,
                batch_size=args.batch_size,
                progress=False,
            )
            if problems or report.failures:
                raise SystemExit(f"{label} {name}: generation failed: {problems or report.failures[:3]}")
            log.info("%s on %s: %.1f s", label, name, time.monotonic() - start)
            results.setdefault(label, {})[name] = judge(bench, gen, args.rounds)
    torch.set_grad_enabled(True)
    params = parameter_report(args.model_path, adapter)
    summary = {"args": vars(args), "train_seconds": train_s, "results": results, "parameters": params}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))

    print(
        f"\nLoRA concept test: teach {os.path.basename(os.path.normpath(args.model_path))} a {CONCEPT}, "
        f"{'int8 base, ' if args.int8_base else ''}rank {args.rank}, {args.steps} steps ({train_s / 60:.1f} min of training in this call), "
        f"{args.rounds} round(s)\n"
    )
    print(
        f"| model | {CONCEPT}s drawn as {CONCEPT}s | {CONCEPT}s present | Overall, {CONCEPT} cases "
        f"| Overall ± std, {args.num_heldout} held-out cases |"
    )
    print("|---|---|---|---|---|")
    for label, r in results.items():
        c, h = r["concept"], r["heldout"]
        print(
            f"| {label} | {100 * c['heart']['shape']:.0f}% | {100 * c['heart']['present']:.0f}% "
            f"| {c['overall']:.2f} | {h['overall']:.2f} ± {h['std']:.2f} |"
        )
    drop = results["base"]["heldout"]["overall"] - results["base + LoRA"]["heldout"]["overall"]
    print(f"\nchance for the shape: 1/7; forgetting (held-out Overall, base - LoRA): {drop:+.2f}")
    print(
        f"trainable: {params['trainable']} of {params['model_parameters']} parameters "
        f"({100 * params['trainable_fraction']:.2f}%), adapter file {params['adapter_file_bytes'] / 1e3:.0f} kB"
    )
    print(
        f"AdamW state: LoRA {params['adam_bytes_lora'] / 2**20:.2f} MiB vs full fine-tuning "
        f"{params['adam_bytes_full'] / 2**20:.2f} MiB ({params['adam_bytes_full'] / params['adam_bytes_lora']:.0f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
