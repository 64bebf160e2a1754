"""End-to-end tests of train/pretrain.py in one process on the tiny fixture checkpoint (CPU, fp32)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from train.config import parse_config
from train.pretrain import NonFiniteLossError, main, train

CKPT = os.path.join(os.path.dirname(__file__), "fixtures", "bagel-tiny", "checkpoint")


def args_for(out, *extra):
    return parse_config(
        [
            "--model_path",
            CKPT,
            "--device",
            "cpu",
            "--results_dir",
            str(out),
            "--checkpoint_dir",
            str(out / "ckpt"),
            "--log_every",
            "1",
            "--save_every",
            "1000",
            "--warmup_steps",
            "0",
            "--activation_checkpointing",
            "False",
            *extra,
        ]
    )


def metrics(out) -> list[dict]:
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def losses(out) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["mse"], r["ce"]) for r in metrics(out) if "event" not in r}


SYN = ["--synthetic_data", "--synthetic_spec"]


def test_tiny_model_overfits_a_handful_of_samples(tmp_path):
    spec = json.dumps({"text_loss": True, "num_distinct": 2, "image_size": 32, "vit_size": 28, "text_len": 8})
    train(args_for(tmp_path, *SYN, spec, "--total_steps", "16", "--lr", "5e-3"))
    rec = losses(tmp_path)
    first_mse = sum(rec[s][0] for s in range(3)) / 3
    last_mse = sum(rec[s][0] for s in range(11, 16)) / 5
    assert rec[15][1] < 0.3 * rec[0][1], (rec[0], rec[15])  # CE memorises the two instructions
    assert last_mse < 0.8 * first_mse, (first_mse, last_mse)


def test_freeze_flags_keep_frozen_weights_unchanged(tmp_path):
    """Stage II step 1 as scripted: ViT, gen expert and gen bridges frozen, semantic mask on."""
    spec = json.dumps({"text_loss": True})
    flags = [
        "--freeze_vit",
        "--freeze_llm_gen",
        "True",
        "--freeze_mlp_gen",
        "True",
        "--use_semantic_mask",
        "True",
    ]
    train(args_for(tmp_path, *SYN, spec, "--total_steps", "2", "--lr", "1e-2", *flags))
    before = load_file(os.path.join(CKPT, "model.safetensors"))
    after = load_file(str(tmp_path / "ckpt" / "0000001" / "model.safetensors"))
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = {
        k
        for k in before
        if k.startswith(("vit_model.", "vae2llm.", "llm2vae.")) or "moe_gen" in k or "pos_embed" in k
    }
    assert not (changed & frozen), sorted(changed & frozen)[:5]
    for k in (
        "language_model.layers.0.self_attn.q_proj.weight",
        "connector.fc1.weight",
        "time_embedder.mlp.0.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
    ):
        k = k.replace("language_model.layers", "language_model.model.layers")
        assert k in changed, k
    assert "semantic_masked_ratio" in metrics(tmp_path)[0]


def _nan_after(monkeypatch, bad_calls):
    from train import losses, pretrain

    orig = losses.flow_matching_losses
    calls = {"n": 0}

    def patched(*a, **kw):
        out = orig(*a, **kw)
        if bad_calls == "all" or calls["n"] in bad_calls:
            out.mse = out.mse * float("nan")
        calls["n"] += 1
        return out

    monkeypatch.setattr(pretrain, "flow_matching_losses", patched)


def test_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    _nan_after(monkeypatch, {1})
    summary = train(args_for(tmp_path, *SYN, "{}", "--total_steps", "3", "--lr", "1e-3"))
    assert summary["nonfinite_skipped"] == 1
    events = [r for r in metrics(tmp_path) if r.get("event") == "skip_nonfinite"]
    assert [e["step"] for e in events] == [1]
    assert metrics(tmp_path)[-1]["nonfinite_skipped"] == 1
    after = load_file(str(tmp_path / "ckpt" / "0000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in after.values())


def test_persistent_nonfinite_loss_stops_clearly(tmp_path, monkeypatch):
    _nan_after(monkeypatch, "all")
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        train(args_for(tmp_path, *SYN, "{}", "--total_steps", "5", "--max_nonfinite_steps", "2"))
    assert not (tmp_path / "ckpt").exists() or not os.listdir(tmp_path / "ckpt")
    argv = [
        "--model_path",
        CKPT,
        "--device",
        "cpu",
        "--results_dir",
        str(tmp_path / "b"),
        "--checkpoint_dir",
        str(tmp_path / "b" / "ckpt"),
        "--synthetic_data",
        "--total_steps",
        "5",
        "--max_nonfinite_steps",
        "2",
    ]
    assert main(argv) == 3


# ------------------------------------------------------------------ kill-and-resume on real tiny parquet data
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from data.tiny_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("tinydata")
    make_tiny_dataset(str(root), num_files=2, rows_per_file=6, rows_per_group=3, num_vlm=6, seed=0)
    return str(root)


def parquet_args(out, data_root, total, *extra):
    return args_for(
        out,
        "--dataset_config_file",
        os.path.join(os.path.dirname(CKPT), "..", "..", "..", "data", "configs", "scone_tiny.yaml"),
        "--data_root",
        data_root,
        "--num_workers",
        "1",
        "--expected_num_tokens",
        "300",
        "--max_num_tokens",
        "420",
        "--max_num_tokens_per_sample",
        "420",
        "--prefer_buffer_before",
        "200",
        "--lr",
        "1e-3",
        "--ema",
        "0.5",
        "--total_steps",
        str(total),
        "--auto_resume",
        *extra,
    )


def test_kill_and_resume_matches_straight_run(tmp_path, tiny_data):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(parquet_args(straight, tiny_data, 6))
    train(parquet_args(resumed, tiny_data, 3))  # "killed" after step 2 (its final save)
    # leftovers of a crash mid-save and foreign folders must not be picked by auto-resume
    (resumed / "ckpt" / ".tmp-0000004-999").mkdir()
    (resumed / "ckpt" / "0000009").mkdir()  # incomplete: no model / train_state
    (resumed / "ckpt" / "notes").mkdir()
    train(parquet_args(resumed, tiny_data, 6))
    assert not (resumed / "ckpt" / ".tmp-0000004-999").exists()  # the crash's leftover is cleaned up

    a, b = losses(straight), losses(resumed)
    assert sorted(a) == list(range(6)) and sorted(b) == list(range(6))
    for s in range(6):
        assert a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-6), (s, a[s], b[s])
    for name in ("model.safetensors", "ema.safetensors"):
        wa = load_file(str(straight / "ckpt" / "0000005" / name))
        wb = load_file(str(resumed / "ckpt" / "0000005" / name))
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    da = torch.load(straight / "ckpt" / "0000005" / "data_status.pt", weights_only=True)
    db = torch.load(resumed / "ckpt" / "0000005" / "data_status.pt", weights_only=True)
    assert da == db  # same data order / positions
    state = json.loads((resumed / "ckpt" / "0000005" / "train_state.json").read_text())
    assert state["step"] == 5 and state["world_size"] == 1

    # the step folder is itself a released-layout folder: the inference pipeline loads and generates
    pipeline = pytest.importorskip("inference.pipeline")
    pipe = pipeline.SconePipeline.from_pretrained(str(resumed / "ckpt" / "0000005"))
    out = pipe.generate(images=[], prompt="a red ball", seed=0, height=32, width=32, num_timesteps=3)
    assert out.image.size == (32, 32)
    trained = load_file(str(resumed / "ckpt" / "0000005" / "model.safetensors"))
    assert torch.equal(pipe.model.llm2vae.weight.detach(), trained["llm2vae.weight"])
    # ... and runs at the image views its data trained at (data/configs/scone_tiny.yaml), not upstream's
    own = json.loads((resumed / "ckpt" / "0000005" / "scone_config.json").read_text())
    assert own == {"inference": {"vae_transform": [128, 64, 16], "vit_transform": [112, 56, 14]}}
    assert (pipe.vae_transform.max_image_size, pipe.vit_transform.max_image_size) == (128, 112)
    assert not torch.equal(
        trained["llm2vae.weight"], wb["llm2vae.weight"]
    )  # EMA differs from the live weights


def test_vae_posterior_cache_gives_the_same_losses_with_fewer_encodes(tmp_path):
    spec = json.dumps({"num_distinct": 2, "image_size": 32, "vit_size": 28, "text_len": 8})
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    train(args_for(plain, *SYN, spec, "--total_steps", "4", "--lr", "1e-3"))
    cache_file = str(tmp_path / "posteriors.safetensors")
    cache_args = ["--vae_cache_gb", "0.01", "--vae_cache_file", cache_file]
    train(args_for(cached, *SYN, spec, "--total_steps", "4", "--lr", "1e-3", *cache_args))
    a, b = losses(plain), losses(cached)
    assert a.keys() == b.keys() == {0, 1, 2, 3}
    for s in a:
        assert b[s][0] == pytest.approx(a[s][0], rel=1e-4, abs=1e-6), (s, a[s], b[s])
    last = [r for r in metrics(cached) if "event" not in r][-1]
    assert last["vae_cache/hits"] > 0 and last["vae_cache/misses"] <= 4  # two distinct samples' images
    # a later run (the next stage) starts from the saved file and encodes nothing
    warm = tmp_path / "warm"
    train(args_for(warm, *SYN, spec, "--total_steps", "2", "--lr", "1e-3", *cache_args))
    last = [r for r in metrics(warm) if "event" not in r][-1]
    assert last["vae_cache/misses"] == 0 and last["vae_cache/hits"] > 0


def test_vae_cache_needs_a_frozen_vae(tmp_path):
    with pytest.raises(SystemExit, match="vae_cache_gb"):
        args_for(tmp_path, *SYN, "{}", "--vae_cache_gb", "1", "--freeze_vae", "False")
    with pytest.raises(SystemExit, match="vae_cache_gb"):
        args_for(tmp_path, *SYN, "{}", "--vae_cache_file", str(tmp_path / "c.safetensors"))


GEN_ONLY = json.dumps({"image_size": 32, "vit_size": 28, "text_len": 8})  # no CE: lm_head never gets a grad


def test_resume_of_a_generation_only_run_with_the_llm_unfrozen(tmp_path):
    """The real Stage I setting: generation-only data, --freeze_llm False (lm_head never gets a real
    gradient); the resume must load and continue exactly."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*SYN, GEN_ONLY, "--lr", "1e-3", "--ema", "0.9", "--freeze_llm", "False", "--save_every", "2"]
    train(args_for(straight, *common, "--total_steps", "5"))
    train(args_for(resumed, *common, "--total_steps", "3"))  # ends with a save at step 2
    train(args_for(resumed, *common, "--total_steps", "5", "--auto_resume", "True"))
    assert [r["step"] for r in metrics(resumed) if "event" not in r] == [0, 1, 2, 3, 4]  # resumed at 3
    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(5))
    for s in range(5):
        assert b[s][0] == pytest.approx(a[s][0], rel=1e-5), (s, a[s], b[s])
    for name in ("model.safetensors", "ema.safetensors"):
        wa = load_file(str(straight / "ckpt" / "0000004" / name))
        wb = load_file(str(resumed / "ckpt" / "0000004" / name))
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-6, msg=k)
    assert torch.equal(
        wa["language_model.lm_head.weight"],
        load_file(os.path.join(CKPT, "model.safetensors"))["language_model.lm_head.weight"],
    )


def test_optimizer_state_without_some_parameters_loads(tmp_path, monkeypatch):
    """A checkpoint whose AdamW state lacks a parameter (written when unused parameters got no gradient)
    loads, and that parameter is left without state, as it was when the checkpoint was written."""
    from train import checkpointing as ckpt
    from train import pretrain
    from train.model_setup import load_for_training
    from train.optim import build_optimizer

    with monkeypatch.context() as m:
        m.setattr(pretrain, "fill_missing_grads", lambda params: 0)  # the old behaviour
        train(
            args_for(tmp_path, *SYN, GEN_ONLY, "--lr", "1e-3", "--freeze_llm", "False", "--total_steps", "2")
        )
    step_dir = tmp_path / "ckpt" / "0000001"
    model = load_for_training(CKPT, os.path.join(CKPT, "model.safetensors"), torch.float32).model
    opt = build_optimizer(model, 1e-3)
    ckpt.load_optimizer(str(step_dir), model, opt)
    head = model.language_model.lm_head.weight
    assert head not in opt.state and len(opt.state) == len(opt.param_groups[0]["params"]) - 1


def test_a_diverged_run_stops_nonzero_and_saves_no_broken_weights(tmp_path):
    spec = json.dumps({"text_loss": True, "image_size": 32, "vit_size": 28, "text_len": 8})
    argv = ["--model_path", CKPT, "--device", "cpu", "--results_dir", str(tmp_path), "--checkpoint_dir",
            str(tmp_path / "ckpt"), "--log_every", "1", "--save_every", "3", "--warmup_steps", "0",
            "--activation_checkpointing", "False", *SYN, spec, "--total_steps", "12", "--lr", "1e8"]  # fmt: skip
    assert main(argv) == 3
    events = [r for r in metrics(tmp_path) if "event" in r]
    assert any(e["event"] == "skip_nonfinite" for e in events)
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("0*")) if (tmp_path / "ckpt").exists() else []
    for name in saved:  # whatever was written before the divergence is finite
        w = load_file(str(tmp_path / "ckpt" / name / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in w.values()), name
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "ckpt").glob(".*")) if saved else True


def test_nonfinite_weights_stop_the_run_before_a_save(tmp_path, monkeypatch):
    from train import pretrain

    real = pretrain.apply_update
    calls = {"n": 0}

    def poison(optimizer, ema):
        real(optimizer, ema)
        calls["n"] += 1
        if calls["n"] == 2:  # the update of step 1
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("inf"))

    monkeypatch.setattr(pretrain, "apply_update", poison)
    with pytest.raises(NonFiniteLossError, match="no longer finite"):
        train(args_for(tmp_path, *SYN, GEN_ONLY, "--total_steps", "6", "--save_every", "2", "--lr", "1e-3",
                       "--check_finite_every", "1000"))  # fmt: skip
    assert not (tmp_path / "ckpt" / "0000002").exists()  # the save at step 2 found the weights broken
