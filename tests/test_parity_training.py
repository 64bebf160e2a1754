"""Training forward parity with the fixture's ``train`` case (fp32 reference), bridge off and on."""

from __future__ import annotations

import pytest
import torch

from tests.packed_adapters import sequence_from_fixture
from train.losses import flow_matching_losses


@pytest.fixture(scope="module")
def seq(cases, cases_json):
    return sequence_from_fixture(cases, cases_json)


def _losses(pipe, cases, seq, **kw):
    kw.setdefault("timestep_shift", 1.0)
    return flow_matching_losses(
        pipe.model, seq, cases["train.padded_latent"], cases["train.flow_noise"], **kw
    )


def test_fixture_masks_are_the_layout_rules(seq, cases):
    # the fixture stores upstream's per-sample masks; ours come from the split layout alone
    for i, mask in enumerate(seq.attention_masks()):
        assert torch.equal(mask, cases[f"train.batch.attention_allowed{i}"]), f"sample {i}"


@pytest.mark.parametrize("sem", [0, 1])
def test_training_losses_match_fixture(pipe, cases, seq, sem):
    out = _losses(pipe, cases, seq, use_semantic_mask=bool(sem))
    p = f"train.sem{sem}.fp32."
    torch.testing.assert_close(out.mse, cases[p + "mse"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.ce, cases[p + "ce"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.output.velocity, cases[p + "mse_pred"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.output.logits, cases[p + "ce_logits"], atol=1e-4, rtol=1e-4)
    mse_loss = out.mse.mean(-1).sum() / out.mse.shape[0]
    expected = {0: 2.0362186, 1: 2.0411189}[sem]
    assert float(mse_loss) == pytest.approx(expected, abs=1e-5)
    assert float(out.ce.mean()) == pytest.approx(6.0183425, abs=1e-5)
    res = out.output.semantic
    if sem:
        assert torch.equal(res.mask.float(), cases[p + "semantic_mask"].float())
        assert torch.equal(res.target_rows, cases[p + "target_token_mask"])
        for i in range(3):
            torch.testing.assert_close(res.sim_vit[i], cases[p + f"sim_vit{i}"], atol=1e-5, rtol=0)
            torch.testing.assert_close(res.sim_vae[i], cases[p + f"sim_vae{i}"], atol=1e-5, rtol=0)
        assert int(torch.isinf(res.mask.float()).sum()) == 72
        assert res.skipped_samples == 1  # the vlm sample has no VAE tokens: counted, not printed
        assert out.stats["semantic_skipped_samples"] == 1
    else:
        assert res is None and out.stats == {}


def test_semantic_mask_changes_only_target_rows(pipe, cases, seq):
    """The bridge must change the target predictions but leave every CE (text) row untouched."""
    off = _losses(pipe, cases, seq, use_semantic_mask=False)
    on = _losses(pipe, cases, seq, use_semantic_mask=True)
    assert torch.equal(off.output.logits, on.output.logits)
    assert (off.output.velocity - on.output.velocity).abs().max() > 1e-3


def test_training_timestep_shift_from_config(pipe, cases, seq):
    base = _losses(pipe, cases, seq, timestep_shift=1.0).mse
    shifted = _losses(pipe, cases, seq, timestep_shift=3.0).mse
    assert not torch.allclose(base, shifted)
    old = pipe.model.config.timestep_shift
    try:
        pipe.model.config.timestep_shift = 3.0
        from_cfg = _losses(pipe, cases, seq, timestep_shift=None).mse
    finally:
        pipe.model.config.timestep_shift = old
    torch.testing.assert_close(from_cfg, shifted)


def test_noise_drawn_from_the_generator_when_not_given(pipe, cases, seq):
    latent = cases["train.padded_latent"]
    a = flow_matching_losses(pipe.model, seq, latent, generator=torch.Generator().manual_seed(3)).mse
    b = flow_matching_losses(pipe.model, seq, latent, generator=torch.Generator().manual_seed(3)).mse
    c = flow_matching_losses(pipe.model, seq, latent, generator=torch.Generator().manual_seed(4)).mse
    assert torch.equal(a, b) and not torch.allclose(a, c)
