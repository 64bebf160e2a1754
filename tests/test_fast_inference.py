"""Step caching and weight formats: schedules, extrapolation, CFG on cached steps, evaluation counts,
int8 storage and error against fp32 on the upstream fixture, and bad settings."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from inference.pipeline import GenerationRequest, SconePipeline
from inference.sampling import SamplingConfig
from inference.step_cache import TaylorCache, full_steps
from modeling.weight_formats import quantized_keys, storage_bytes
from tests.conftest import CHECKPOINT, FIXTURE, ROOT

SHIPPED = str(ROOT / "ckpts" / "scone-tiny")
REFS = [str(ROOT / "assets" / "examples" / f) for f in ("ref1.png", "ref2.png")]
TEXT = "Place the green cross from image 1 on the right, on the gray background from image 2."


@pytest.fixture(scope="module")
def tiny():
    return SconePipeline.from_pretrained(SHIPPED)


@pytest.fixture(scope="module")
def tiny_int8():
    return SconePipeline.from_pretrained(SHIPPED, weights="int8")


def test_full_step_schedule():
    assert full_steps(24, interval=3, warmup=3, final=1) == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 23]
    assert full_steps(10, interval=1, warmup=1, final=0) == list(range(10))  # interval 1: no caching
    assert full_steps(5, interval=4, warmup=8, final=0) == list(range(5))  # warm-up longer than the run


@pytest.mark.parametrize("order", [0, 1, 2])
def test_taylor_extrapolation_is_exact_on_polynomials_of_its_order(order):
    coef = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]), torch.tensor([-1.5, 0.25])][: order + 1]

    def v(t):
        return sum(c * t**k for k, c in enumerate(coef))

    cache = TaylorCache(order)
    for t in (1.0, 0.9, 0.8)[: order + 1]:  # order+1 full evaluations give all derivatives exactly
        cache.update("k", t, v(t))
    # finite differences of a degree-`order` polynomial: exact up to the truncation of the expansion
    # (backward differences are exact for the top derivative only up to O(dt)); compare against a
    # reference built the same way from the true function
    t_new = 0.75
    got = cache.predict("k", t_new)
    if order <= 1:
        torch.testing.assert_close(got, v(t_new), atol=1e-6, rtol=0)
    else:
        assert (
            got - v(t_new)
        ).abs().max() < 0.05  # quadratic: the backward-difference D2 is exact, D1 is not
    assert "k" in cache and "other" not in cache


def test_cache_none_is_the_exact_path(tiny):
    a = tiny.generate(images=REFS, prompt=TEXT, seed=3, num_timesteps=8)
    b = tiny.generate(images=REFS, prompt=TEXT, seed=3, num_timesteps=8, cache="none")
    assert torch.equal(a.latent, b.latent) and a.evaluations == b.evaluations == 7 * 2  # full + no_text


def test_taylorseer_defaults_halve_the_evaluations(tiny):
    none = tiny.generate(images=REFS, prompt=TEXT, seed=1)
    cached = tiny.generate(images=REFS, prompt=TEXT, seed=1, cache="taylorseer")
    uncond = tiny.generate(images=REFS, prompt=TEXT, seed=1, cache="taylorseer_uncond")
    steps = tiny.sampling.num_timesteps - 1
    d = SamplingConfig()
    n_full = len(full_steps(steps, d.cache_interval, d.cache_warmup_steps, d.cache_final_steps))
    assert none.evaluations == 2 * steps
    assert cached.evaluations == 2 * n_full and none.evaluations / cached.evaluations >= 2
    assert uncond.evaluations == steps + n_full  # the conditional branch runs on every step
    err = (cached.latent - none.latent).abs().max()
    assert 0 < err < 0.5  # an approximation, but of the same image (latents are O(1))


def test_cached_steps_still_apply_cfg(tiny):
    """A large text scale moves the cached output away from the scale-1 output as much as it moves the
    uncached one: guidance is not silently dropped on the extrapolated steps."""
    kw = dict(images=REFS, prompt=TEXT, seed=5)
    shift = {}
    for cache in ("none", "taylorseer"):
        plain = tiny.generate(cfg_text_scale=1.0, cache=cache, **kw).latent
        guided = tiny.generate(cfg_text_scale=6.0, cache=cache, **kw).latent
        shift[cache] = (guided - plain).norm().item()
    assert shift["none"] > 1.0
    assert 0.75 < shift["taylorseer"] / shift["none"] < 1.33, shift


def test_batched_requests_keep_their_own_caches(tiny):
    reqs = [GenerationRequest(REFS, TEXT, seed=1), GenerationRequest(REFS[:1], "Only the cross.", seed=2)]
    batched = tiny.generate_batch(reqs, cache="taylorseer", num_timesteps=12)
    for req, out in zip(reqs, batched):
        alone = tiny.generate(
            images=req.images, prompt=req.prompt, seed=req.seed, cache="taylorseer", num_timesteps=12
        )
        torch.testing.assert_close(out.latent, alone.latent, atol=1e-4, rtol=1e-4)
        assert out.evaluations == alone.evaluations


def test_int8_weights_take_about_half_the_bytes_of_bf16(tiny_int8):
    params = dict(tiny_int8.model.named_parameters())
    keys = quantized_keys(tiny_int8.model)
    assert len(keys) == 14 * tiny_int8.config.llm.num_hidden_layers  # 7 linears x 2 experts per block
    q = sum(storage_bytes(params[k]) for k in keys)
    bf16 = sum(params[k].numel() * 2 for k in keys)
    assert q / bf16 <= 0.55, q / bf16
    # what stays in the compute dtype: embeddings, lm_head, norms, the ViT
    assert tiny_int8.model.language_model.lm_head.weight.dtype == torch.float32
    assert type(tiny_int8.model.language_model.lm_head.weight.data) is torch.Tensor


def test_int8_generates_nearly_the_same_image(tiny, tiny_int8):
    a = tiny.generate(images=REFS, prompt=TEXT, seed=2)
    b = tiny_int8.generate(images=REFS, prompt=TEXT, seed=2)
    err = (a.latent - b.latent).abs().max().item()
    assert 0 < err < 0.1, err


def test_int8_final_latent_error_on_the_upstream_fixture(pipe, cases, cases_json, record_property):
    """The fixture's recorded generation, fp32 against int8 weights: the error is reported, and bounded."""
    from tests.test_parity_inference import _gen_kwargs

    q = SconePipeline.from_pretrained(str(CHECKPOINT), weights="int8")
    refs = [str(FIXTURE / r["file"]) for r in cases_json["gen"]["refs"]]
    kw = dict(
        images=refs,
        prompt=cases_json["gen"]["instruction"],
        ref_posterior_noise=[cases["gen.ref0.vae_posterior_noise"], cases["gen.ref1.vae_posterior_noise"]],
        init_noise=cases["gen.init_noise"],
        **_gen_kwargs(cases_json),
    )
    ref = cases["gen.final_latent"]
    fp32 = (pipe.generate(**kw).latent - ref).abs().max().item()
    lat = q.generate(**kw).latent
    int8, rel = (lat - ref).abs().max().item(), ((lat - ref).norm() / ref.norm()).item()
    record_property("int8_fixture_final_latent_max_abs_err", int8)
    record_property("int8_fixture_final_latent_rel_rms_err", rel)
    logging.getLogger(__name__).warning(
        "fixture final latent error vs upstream fp32: fp32 max %.1e; int8 max %.3f, relative RMS %.4f",
        fp32,
        int8,
        rel,
    )
    assert fp32 <= 1e-4, fp32
    assert 0 < rel < 0.05 and int8 < 0.3, (int8, rel)  # random tiny weights: a worst case for int8


def test_bad_settings_give_one_clear_error(tiny):
    with pytest.raises(ValueError, match="unknown cache 'fast'; choose one of none, taylorseer"):
        tiny.generate(images=REFS, prompt=TEXT, cache="fast")
    with pytest.raises(ValueError, match="cache_interval"):
        SamplingConfig(cache="taylorseer", cache_interval=0)
    with pytest.raises(ValueError, match="weights='fp8' needs a CUDA GPU"):
        SconePipeline.from_pretrained(SHIPPED, weights="fp8")
    with pytest.raises(ValueError, match="unknown weights format 'int4'"):
        SconePipeline.from_pretrained(SHIPPED, weights="int4")


def test_cli_flags(tmp_path):
    out = tmp_path / "o.png"
    base = [
        sys.executable,
        "-m",
        "inference.single_case",
        "--instruction",
        TEXT,
        "--input_image_paths",
        *REFS,
    ]
    r = subprocess.run(
        [*base, "--weights", "fp8", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [x for x in r.stderr.splitlines() if "ERROR" in x]
    assert r.returncode == 2 and len(errors) == 1 and "fp8" in errors[0] and not out.exists(), r.stderr[
        -1500:
    ]
    r = subprocess.run([*base, "--cache", "fast"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "invalid choice: 'fast'" in r.stderr
    r = subprocess.run([*base, "--cache", "taylorseer", "--weights", "int8", "--output", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and out.is_file(), r.stderr[-1500:]


@pytest.mark.parametrize("group_size", [1, 3])
def test_group_offload_streams_the_blocks_and_changes_nothing(tiny, group_size):
    """On the CPU the copies are no-ops, so this checks the bookkeeping: every group is brought in before it
    runs (one copy per group per forward, the next one prefetched), at most two groups are resident, and the
    result is bit-identical."""
    off = SconePipeline.from_pretrained(SHIPPED, offload="group", offload_group_size=group_size)
    layers = off.config.llm.num_hidden_layers
    groups = -(-layers // group_size)
    kw = dict(images=REFS, prompt=TEXT, seed=4, num_timesteps=4)
    ref = tiny.generate(**kw)
    passes = []
    off.model.language_model.model.layers[0].register_forward_pre_hook(lambda m, a: passes.append(1))
    out = off.generate(**kw)
    assert torch.equal(out.latent, ref.latent)
    # first pass: group 0 on demand, the rest prefetched one ahead, then group 0 again for the next pass
    expected = len(passes) if groups == 1 else len(passes) * groups + 1
    assert off.offloader.copies == expected, (off.offloader.copies, len(passes), groups)
    assert off.offloader.max_resident <= 2
    assert list(off.offloader.pending) == ([] if groups == 1 else [0])  # only the prefetched first group
    weight = off.model.language_model.model.layers[-1].mlp.up_proj.weight
    assert weight.data_ptr() == off.offloader.host[weight].data_ptr()  # back on the host copy after its run


def test_model_offload_moves_the_model_per_call(tiny):
    off = SconePipeline.from_pretrained(SHIPPED, offload="model")
    kw = dict(images=REFS, prompt=TEXT, seed=4, num_timesteps=4)
    assert torch.equal(off.generate(**kw).latent, tiny.generate(**kw).latent)
    off.understand(images=REFS[:1], prompt="What?", max_new_tokens=2)
    assert off.offloader.moves == 2


def test_bad_offload_settings():
    with pytest.raises(ValueError, match="unknown offload 'disk'"):
        SconePipeline.from_pretrained(SHIPPED, offload="disk")
    with pytest.raises(ValueError, match="offload='group' streams float weights"):
        SconePipeline.from_pretrained(SHIPPED, offload="group", weights="int8")
    with pytest.raises(ValueError, match="group size must be >= 1"):
        SconePipeline.from_pretrained(SHIPPED, offload="group", offload_group_size=0)


def test_benchmark_command_takes_cache_and_weights(tmp_path):
    """The outside-check contract: python -m inference.benchmark ... --cache taylorseer --weights int8 on the
    shipped model writes every image, and the log says how it was made."""
    import json

    from PIL import Image

    bench = tmp_path / "bench"
    (bench / "imgs").mkdir(parents=True)
    for name in ("ref1.png", "ref2.png"):
        Image.open(ROOT / "assets" / "examples" / name).save(bench / "imgs" / name)
    recs = [{"key": f"k{i}", "task_type": "composition_multi", "instruction": TEXT,
             "input_images": ["imgs/ref1.png", "imgs/ref2.png"]} for i in range(3)]  # fmt: skip
    (bench / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "inference.benchmark", "--model_path", SHIPPED, "--benchmark_dir", str(bench),
           "--output_dir", str(out), "--batch_size", "2", "--no_progress", "--cache", "taylorseer",
           "--weights", "int8"]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 3 and all(Image.open(p).size == (96, 96) for p in pngs)
    logged = [
        json.loads(x) for f in out.glob("generation_log.rank*.jsonl") for x in f.read_text().splitlines()
    ]
    assert logged and all(x["cache"] == "taylorseer" and x["cache_interval"] == 4 for x in logged)
