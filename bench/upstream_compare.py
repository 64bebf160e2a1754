"""Our generation engine against the original BAGEL code, on the same random model, in ONE run.

    git clone https://github.com/ByteDance-Seed/Bagel ../Bagel
    python -m bench.upstream_compare --upstream_dir ../Bagel --upstream_python /path/to/venv/bin/python

Writes a random model in the released layout (``bench/inference_bench.py``'s ``cpu512`` geometry: LLM
hidden 512, 12 layers, 8/2 heads, MLP 2048; ViT 256 x 4; the FLUX VAE geometry), then starts worker
processes on it -- this repository's pipeline, upstream's ``InterleaveInferencer`` and, with ``--compile``,
ours with compiled layers -- and asks them in turn, rotating who goes first, for the same request: 2
references, an instruction, ``--resolution``² output, ``--steps`` denoising steps with all three CFG
branches, the model in ``--dtype`` (fp32 by default) and the VAE in fp32. Each reports its prefill seconds
and its seconds per denoising step (the median of the steps), its torch version and the CPU capability its
kernels use; the table gives the medians over ``--reps`` and the ratios to upstream. With ``--profile`` a
second table splits each side's denoising step (profiled in a separate, untimed run) into the attention
kernel, the matrix products and everything else: the kernels both sides share bound what either side's own
code can save.

Upstream's code runs unchanged from ``--upstream_dir``, with stand-ins that this script writes at run time
and that are not part of upstream:

* ``flash_attn.flash_attn_varlen_func`` served by the PyTorch SDPA kernel this repository's CPU path calls
  (modeling/attention.py): one call per sequence on 4-D ``[1, heads, seq, dim]`` tensors (3-D tensors make
  PyTorch fall back to its slow unfused kernel), KV heads shared by ``enable_gqa`` as flash-attn shares
  them (no expanded copies), the bottom-right causal mask. Both sides run the same attention kernel; what
  differs is what upstream hands it: token-major keys concatenated per layer, as flash-attn takes them.
* In fp32, upstream's hard-coded ``.to(torch.bfloat16)`` casts in ``modeling/bagel/{qwen2,siglip}_navit.py`` read
  ``torch.float32`` instead (the module's ``torch`` name is replaced by a view of torch whose ``bfloat16``
  is float32); its CUDA autocast blocks do nothing on a CPU. In bf16 the model is cast to bf16 and run
  under CPU autocast in place of its CUDA one. On a CPU without native bf16 (no AVX512-BF16/AMX) a bf16
  comparison measures the emulation, not the model: prefer fp32 there.
* its torchvision image transforms replaced by ours (they only resize and normalise the references, in the
  prefill).

Upstream's vendored Qwen2/SigLIP code imports modules that transformers 5 removed, so its worker needs a
Python with transformers 4.5x and einops (``--upstream_python``). Install the same torch version there as
here, or the two sides do not run the same kernels; the table prints both versions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "bagel-tiny", "checkpoint")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # for the upstream worker, which cannot import our package
INSTRUCTION = "Put the object from image 1 next to the object from image 2 on a wooden table."


# ---------------------------------------------------------------------------------------------- model
def write_model(folder: str, seed: int = 0) -> None:
    """A random model in the released layout (tokenizer from the test fixture, FLUX-geometry VAE)."""
    import torch
    from safetensors.torch import save_file

    from bench.inference_bench import CONFIGS
    from modeling.autoencoder import AutoEncoder, AutoEncoderParams
    from modeling.bagel import Bagel
    from modeling.checkpoint import build_config

    geometry = CONFIGS["cpu512"]
    llm_geometry = {k: v for k, v in geometry["llm"].items() if k != "vocab_size"}  # the tokenizer's vocab
    # vit_config.json counts one layer more than is built (the released files do; the loaders drop it)
    vit_geometry = geometry["vit"] | {"num_hidden_layers": geometry["vit"]["num_hidden_layers"] + 1}

    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(os.path.join(FIXTURE, name), folder)
    with open(os.path.join(FIXTURE, "llm_config.json")) as f:
        llm = json.load(f) | llm_geometry | {"max_window_layers": llm_geometry["num_hidden_layers"]}
    with open(os.path.join(FIXTURE, "vit_config.json")) as f:
        vit = json.load(f) | vit_geometry
    for name, cfg in (("llm_config.json", llm), ("vit_config.json", vit)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(cfg, f, indent=1)
    torch.manual_seed(seed)
    vae = AutoEncoder(AutoEncoderParams())
    save_file(
        {k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(folder, "ae.safetensors")
    )
    config = build_config(folder)
    config.vae = vae.params
    model = Bagel(config)
    model.init_weights(seed=seed)
    model.llm2vae.weight.data.normal_(0, 0.02)  # non-zero velocities
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors")
    )


def references(res: int):
    from PIL import Image

    return [Image.new("RGB", (res, res), (40 + 90 * i, 120, 200 - 60 * i)) for i in range(2)]


SETTINGS = dict(
    cfg_text_scale=4.0,
    cfg_img_scale=2.0,
    cfg_interval=(0.0, 1.0),
    timestep_shift=3.0,
    cfg_renorm_min=0.0,
    cfg_renorm_type="text_channel",
)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_int_mm")


class StepProfile:
    """Wraps the function that runs one denoising forward; while ``on``, each call runs under the profiler and
    its operators' self CPU seconds add up by kind: the attention kernel, matrix products, everything else."""

    def __init__(self):
        self.on, self.seconds = False, {"attention": 0.0, "matmul": 0.0, "other": 0.0}

    def wrap(self, fn):
        import torch

        def profiled(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            with torch.profiler.profile() as prof:
                out = fn(*args, **kwargs)
            for e in prof.key_averages():
                kind = (
                    "attention"
                    if "scaled_dot_product" in e.key
                    else "matmul"
                    if e.key in MATMUL_OPS
                    else "other"
                )
                self.seconds[kind] += e.self_cpu_time_total / 1e6
            return out

        return profiled

    def per_step(self, run, steps: int) -> dict:
        """Seconds per denoising step by kind over one extra run of ``run``."""
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.on = True
        try:
            run()
        finally:
            self.on = False
        return {k: v / steps for k, v in self.seconds.items()}


# ---------------------------------------------------------------------------------------------- workers
def worker_ours(folder: str, res: int, steps: int, dtype: str, profile: StepProfile, compile: bool = False):
    import torch

    import inference.generation
    from inference.pipeline import SconePipeline
    from modeling.weight_formats import FLOAT_FORMATS

    # every denoising forward goes through generation.run_cached (one per step: the branches are batched)
    inference.generation.run_cached = profile.wrap(inference.generation.run_cached)
    pipe = SconePipeline.from_pretrained(
        folder,
        dtype=FLOAT_FORMATS[dtype],
        compile=compile,
        vae_transform=(res, res, 16),
        vit_transform=(res, 224, 14),
    )
    refs = references(res)

    def run() -> dict:
        marks = []
        start = time.perf_counter()
        pipe.generate(
            images=refs,
            prompt=INSTRUCTION,
            seed=0,
            height=res,
            width=res,
            num_timesteps=steps + 1,
            callback=lambda i, n: marks.append(time.perf_counter()),
            **SETTINGS,
        )
        gaps = [b - a for a, b in zip(marks, marks[1:])]
        return {"step_s": statistics.median(gaps), "prefill_s": marks[0] - start - statistics.median(gaps)}

    torch.set_grad_enabled(False)
    return run


SDPA_SHIM = '''
"""Stand-in for flash_attn on machines without it: varlen attention as one SDPA call per sequence."""
import torch
import torch.nn.functional as F


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    # flash-attn's contract (token-major packed tensors, native GQA, bottom-right causal) served by the
    # kernel this repository's CPU path uses: one 4-D SDPA call per sequence, KV heads shared by enable_gqa
    out = torch.empty_like(q)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs, qe, ks, ke = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if qe == qs:
            continue
        kb, vb = k[ks:ke].to(q.dtype).transpose(0, 1)[None], v[ks:ke].to(q.dtype).transpose(0, 1)[None]
        mask, is_causal, gqa = None, False, True
        if causal and qe - qs > 1:
            if qe - qs == ke - ks:
                is_causal = True
            else:
                qi = torch.arange(qe - qs, device=q.device)[:, None]
                kj = torch.arange(ke - ks, device=q.device)[None, :]
                mask = (kj <= qi + (ke - ks - (qe - qs)))[None, None]
                n_rep = q.shape[1] // k.shape[1]
                kb, vb, gqa = kb.repeat_interleave(n_rep, 1), vb.repeat_interleave(n_rep, 1), False
        o = F.scaled_dot_product_attention(
            q[qs:qe].transpose(0, 1)[None], kb, vb, attn_mask=mask, is_causal=is_causal,
            scale=softmax_scale, enable_gqa=gqa,
        )
        out[qs:qe] = o[0].transpose(0, 1)
    return out
'''


def write_shim() -> str:
    """A folder holding the ``flash_attn`` stand-in; the upstream worker gets it on its PYTHONPATH."""
    shim = tempfile.mkdtemp(prefix="flash_attn_shim_")
    os.makedirs(os.path.join(shim, "flash_attn"))
    with open(os.path.join(shim, "flash_attn", "__init__.py"), "w") as f:
        f.write(textwrap.dedent(SDPA_SHIM))
    return shim


def worker_upstream(folder: str, res: int, steps: int, dtype: str, profile: StepProfile):
    """Runs with PYTHONPATH = the upstream clone and the shim (set by ``main``): upstream's ``modeling`` and
    ``data`` packages, not ours, answer its imports."""
    import importlib.util

    import torch
    from safetensors.torch import load_file

    # our image transform (upstream's needs torchvision), loaded by path: upstream owns the name "data"
    spec = importlib.util.spec_from_file_location(
        "scone_transforms", os.path.join(ROOT, "data", "transforms.py")
    )
    ours = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ours)

    class Transform:
        def __init__(self, *args):
            self.t = ours.ImageTransform(*args)

        def resize_transform(self, img):
            return self.t.resize(img)

        def __call__(self, img):
            return self.t(img)

    if dtype == "fp32":  # upstream's hard-coded bf16 casts read float32 (see the module docstring)
        import types

        import modeling.bagel.qwen2_navit as qwen2_navit
        import modeling.bagel.siglip_navit as siglip_navit

        class Float32Torch(types.ModuleType):
            bfloat16 = torch.float32

            def __getattr__(self, name):
                return getattr(torch, name)

        qwen2_navit.torch = siglip_navit.torch = Float32Torch("torch")

    from data.data_utils import add_special_tokens
    from inferencer import InterleaveInferencer
    from modeling.qwen2 import Qwen2Tokenizer

    from modeling.autoencoder import load_ae
    from modeling.bagel import (
        Bagel,
        BagelConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    llm_config = Qwen2Config.from_json_file(os.path.join(folder, "llm_config.json"))
    llm_config.qk_norm, llm_config.tie_word_embeddings = True, False
    llm_config.layer_module = "Qwen2MoTDecoderLayer"
    vit_config = SiglipVisionConfig.from_json_file(os.path.join(folder, "vit_config.json"))
    vit_config.rope = False
    vit_config.num_hidden_layers -= 1
    vae, vae_config = load_ae(local_path=os.path.join(folder, "ae.safetensors"))
    config = BagelConfig(
        visual_gen=True,
        visual_und=True,
        llm_config=llm_config,
        vit_config=vit_config,
        vae_config=vae_config,
        vit_max_num_patch_per_side=70,
        connector_act="gelu_pytorch_tanh",
        latent_patch_size=2,
        max_latent_size=64,
    )
    model = Bagel(Qwen2ForCausalLM(llm_config), SiglipVisionModel(vit_config), config)
    model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config)
    missing, unexpected = model.load_state_dict(
        load_file(os.path.join(folder, "model.safetensors")), strict=False
    )
    if unexpected or [k for k in missing if "pos_embed" not in k]:
        raise SystemExit(f"upstream model does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = model.to(getattr(torch, DTYPES[dtype])).eval()
    tokenizer, new_token_ids, _ = add_special_tokens(Qwen2Tokenizer.from_pretrained(folder))
    inf = InterleaveInferencer(
        model, vae, tokenizer, Transform(res, res, 16), Transform(res, 224, 14), new_token_ids
    )
    refs = references(res)
    marks = []
    flow = profile.wrap(model._forward_flow)  # one call per step: all three branches, one after another

    def timed_flow(*a, **k):
        out = flow(*a, **k)
        marks.append(time.perf_counter())
        return out

    model._forward_flow = timed_flow

    def run() -> dict:
        marks.clear()
        start = time.perf_counter()
        cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")  # in place of CUDA's
        with cast:
            inf.interleave_inference(
                [*refs, INSTRUCTION],
                image_shapes=(res, res),
                num_timesteps=steps + 1,
                **{**SETTINGS, "cfg_interval": list(SETTINGS["cfg_interval"])},
            )
        gaps = [b - a for a, b in zip(marks, marks[1:])]
        return {"step_s": statistics.median(gaps), "prefill_s": marks[0] - start - statistics.median(gaps)}

    torch.set_grad_enabled(False)
    return run


def serve(run, profile: StepProfile, steps: int) -> None:
    import torch

    run()  # warm-up
    facts = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}
    print("READY " + json.dumps(facts), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            print(json.dumps(run()), flush=True)
        elif line.strip() == "profile":
            print(json.dumps(profile.per_step(run, steps)), flush=True)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream_dir", required=True, help="a clone of github.com/ByteDance-Seed/Bagel")
    p.add_argument("--upstream_python", default=sys.executable, help="python for upstream's worker")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="the model's dtype on both sides (VAE fp32)"
    )
    p.add_argument(
        "--compile", action="store_true", help="also time ours with --compile (a third worker, same runs)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, one profiled run per side: seconds per step in attention, matmuls, the rest",
    )
    p.add_argument("--worker", choices=("ours", "ours_compiled", "upstream"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        profile = StepProfile()
        if args.worker in ("ours", "ours_compiled"):
            compiled = args.worker == "ours_compiled"
            run = worker_ours(args.folder, args.resolution, args.steps, args.dtype, profile, compiled)
        else:
            run = worker_upstream(args.folder, args.resolution, args.steps, args.dtype, profile)
        serve(run, profile, args.steps)
        return 0

    # upstream's worker runs in another directory: a relative path must be resolved here, before any work
    upstream_python = shutil.which(args.upstream_python)
    if upstream_python is None:
        raise SystemExit(f"--upstream_python {args.upstream_python}: no such executable")
    upstream_python = os.path.abspath(upstream_python)
    folder = tempfile.mkdtemp(prefix="upstream_compare_")
    write_model(folder)
    common = [
        "--folder",
        folder,
        "--resolution",
        str(args.resolution),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--upstream_dir",
        args.upstream_dir,
        "--dtype",
        args.dtype,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    upstream_path = os.pathsep.join([os.path.abspath(args.upstream_dir), write_shim()])
    launch = {
        # ours: as a module from the checkout (bench.* importable); upstream: as a file from elsewhere, with
        # only upstream's clone and the shim on its path
        "ours": ([sys.executable, "-m", "bench.upstream_compare"], ROOT, env),
        "upstream": (
            [upstream_python, os.path.abspath(__file__)],
            tempfile.gettempdir(),
            dict(env, PYTHONPATH=upstream_path),
        ),
    }
    if args.compile:
        launch["ours_compiled"] = launch["ours"]
    workers = {}
    for name, (cmd, cwd, worker_env) in launch.items():
        workers[name] = subprocess.Popen(
            [*cmd, "--worker", name, *common],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env,
            cwd=cwd,
        )
    facts = {}
    try:
        for name, w in workers.items():
            for line in w.stdout:
                if line.startswith("READY"):
                    facts[name] = json.loads(line.split(" ", 1)[1])
                    break
            else:
                raise SystemExit(f"the {name} worker exited before it was ready (rc {w.wait()})")
        results = {name: [] for name in workers}
        order = list(workers)
        for rep in range(args.reps):
            for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate who goes first
                w = workers[name]
                w.stdin.write("run\n")
                w.stdin.flush()
                results[name].append(json.loads(w.stdout.readline()))
                print(f"rep {rep} {name}: {results[name][-1]}", flush=True)
        profiles = {}
        for name, w in workers.items() if args.profile else ():
            w.stdin.write("profile\n")
            w.stdin.flush()
            profiles[name] = json.loads(w.stdout.readline())
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait(60)
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("prefill_s", "step_s")}
        for n, rs in results.items()
    }
    print(
        f"\n{args.resolution}x{args.resolution}, 2 references, 3 CFG branches, {args.steps} steps, {args.dtype}, "
        f"{args.threads} threads, median of {args.reps}; attention: 4-D SDPA on both sides"
    )
    for n in workers:
        print(f"{n}: torch {facts[n]['torch']}, CPU capability {facts[n]['cpu']}")
    print()
    print("| | prefill s | s / denoising step |\n|---|---|---|")
    for n in workers:
        print(f"| {n} | {med[n]['prefill_s']:.2f} | {med[n]['step_s']:.3f} |")
    up = med["upstream"]
    for n in (n for n in workers if n != "upstream"):
        print(
            f"| {n} / upstream | {med[n]['prefill_s'] / up['prefill_s']:.2f} | "
            f"{med[n]['step_s'] / up['step_s']:.2f} |"
        )
    if profiles:
        print(
            "\nOne profiled run per side (the profiler adds overhead), self CPU seconds per denoising step:\n"
            "| | attention kernel | matrix products | everything else | total |\n|---|---|---|---|---|"
        )
        for n, pr in profiles.items():
            print(
                f"| {n} | {pr['attention']:.3f} | {pr['matmul']:.3f} | {pr['other']:.3f} | {sum(pr.values()):.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
