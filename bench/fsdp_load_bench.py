"""Host memory per rank while building the FSDP2 training model: rank-0 read + broadcast vs every rank reading.

    python bench/fsdp_load_bench.py                          # 2 ranks, CPU/gloo, a 264 M-parameter model
    python bench/fsdp_load_bench.py --hidden 1024 --layers 18 --nproc 4

Writes a random model folder in the released layout (the test fixture's ViT, VAE and tokenizer; the LLM
widened to ``--hidden``), then for ``--load_weights_on_rank0 True`` and ``False`` runs ``torchrun`` on
``train.pretrain.build_model`` alone (weights, freezing, ``fully_shard``) and prints each rank's peak
resident set and the wall time. Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from train.parallel import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "bagel-tiny", "checkpoint")


def write_model(folder: str, hidden: int, layers: int) -> int:
    """Random Bagel in the released layout under ``folder``; returns its parameter count."""
    from safetensors.torch import save_file

    from modeling.autoencoder import load_autoencoder
    from modeling.bagel import Bagel
    from modeling.checkpoint import build_config

    for name in os.listdir(FIXTURE):
        if name not in ("model.safetensors", "ema.safetensors", "keys.json"):
            shutil.copy(os.path.join(FIXTURE, name), folder)
    with open(os.path.join(folder, "llm_config.json")) as f:
        llm = json.load(f)
    llm.update(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers)
    with open(os.path.join(folder, "llm_config.json"), "w") as f:
        json.dump(llm, f)
    config = build_config(folder, os.path.join(FIXTURE, "model.safetensors"))
    config.vae = load_autoencoder(os.path.join(folder, "ae.safetensors")).params
    model = Bagel(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    return sum(v.numel() for v in state.values())


def worker(folder: str, rank0: bool, out: str) -> None:
    """torchrun entry: build the training model as train.pretrain does, record this rank's peak RSS."""
    from train.config import parse_config
    from train.parallel import cleanup_distributed, init_distributed
    from train.pretrain import build_model
    from train.trained_weights import trained_weights

    info = init_distributed("cpu")
    cfg = parse_config(
        [
            "--model_path",
            folder,
            "--device",
            "cpu",
            "--results_dir",
            out,
            "--sharding_strategy",
            "FULL_SHARD",
            "--activation_checkpointing",
            "False",
            "--load_weights_on_rank0",
            str(rank0),
            "--synthetic_data",
        ]
    )
    t0 = time.perf_counter()
    build_model(cfg, trained_weights(cfg.freeze, cfg.lora, 0), info, torch.float32)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{info.rank}.json"), "w") as f:
        json.dump({"peak_rss_gib": peak, "build_s": dt}, f)
    cleanup_distributed()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=768, help="LLM hidden size (MLP 3x)")
    p.add_argument("--layers", type=int, default=18, help="LLM layers (>= the fixture's bridge layers)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--worker", nargs=3, metavar=("FOLDER", "RANK0", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.worker[0], a.worker[1] == "True", a.worker[2])
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "model")
        os.makedirs(folder)
        n = write_model(folder, a.hidden, a.layers)
        print(
            f"model: {n / 1e6:.1f} M parameters, {n * 4 / 2**30:.2f} GiB in fp32; {a.nproc} ranks, CPU/gloo"
        )
        for rank0 in (True, False):
            out = os.path.join(tmp, f"out_{rank0}")
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(a.nproc),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(free_port()),
                os.path.abspath(__file__),
                "--worker",
                folder,
                str(rank0),
                out,
            ]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"torchrun failed:\n{(proc.stdout + proc.stderr)[-8000:]}")
            ranks = []
            for r in range(a.nproc):
                with open(os.path.join(out, f"rank{r}.json")) as f:
                    ranks.append(json.load(f))
            rss = " ".join(f"{x['peak_rss_gib']:.2f}" for x in ranks)
            print(
                f"load_weights_on_rank0={rank0!s:5}  peak RSS per rank (GiB): {rss}   "
                f"build {max(x['build_s'] for x in ranks):.1f} s"
            )


if __name__ == "__main__":
    main()
