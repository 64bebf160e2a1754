"""Training forward parity with the fixture's ``train`` case (fp32 reference), bridge off and on."""

from __future__ import annotations

import pytest
import torch


def _batch(cases):
    batch = {k[len("train.batch.") :]: v for k, v in cases.items() if k.startswith("train.batch.")}
    batch["padded_latent"] = cases["train.padded_latent"]
    return batch


@pytest.mark.parametrize("sem", [0, 1])
def test_training_losses_match_fixture(pipe, cases, sem):
    out = pipe.model.training_losses(
        _batch(cases), cases["train.flow_noise"], use_semantic_mask=bool(sem), timestep_shift=1.0
    )
    p = f"train.sem{sem}.fp32."
    torch.testing.assert_close(out["mse"], cases[p + "mse"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["ce"], cases[p + "ce"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["mse_pred"], cases[p + "mse_pred"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["ce_logits"], cases[p + "ce_logits"], atol=1e-4, rtol=1e-4)
    mse_loss = out["mse"].mean(-1).sum() / out["mse"].shape[0]
    expected = {0: 2.0362186, 1: 2.0411189}[sem]
    assert float(mse_loss) == pytest.approx(expected, abs=1e-5)
    assert float(out["ce"].mean()) == pytest.approx(6.0183425, abs=1e-5)
    if sem:
        assert torch.equal(out["semantic_mask"].float(), cases[p + "semantic_mask"].float())
        res = out["semantic"]
        assert torch.equal(res.target_rows, cases[p + "target_token_mask"])
        for i in range(3):
            torch.testing.assert_close(res.sim_vit[i], cases[p + f"sim_vit{i}"], atol=1e-5, rtol=0)
            torch.testing.assert_close(res.sim_vae[i], cases[p + f"sim_vae{i}"], atol=1e-5, rtol=0)
        assert int(torch.isinf(out["semantic_mask"].float()).sum()) == 72
        assert res.skipped_samples == 1  # the vlm sample has no VAE tokens: counted, not printed
    else:
        assert out["semantic_mask"] is None


def test_semantic_mask_changes_only_target_rows(pipe, cases):
    """The bridge must change the target predictions but leave every CE (text) row untouched."""
    b = _batch(cases)
    off = pipe.model.training_losses(
        b, cases["train.flow_noise"], use_semantic_mask=False, timestep_shift=1.0
    )
    on = pipe.model.training_losses(b, cases["train.flow_noise"], use_semantic_mask=True, timestep_shift=1.0)
    assert torch.equal(off["ce_logits"], on["ce_logits"])
    assert (off["mse_pred"] - on["mse_pred"]).abs().max() > 1e-3


def test_training_timestep_shift_from_config(pipe, cases):
    b = _batch(cases)
    base = pipe.model.training_losses(b, cases["train.flow_noise"], timestep_shift=1.0)["mse"]
    shifted = pipe.model.training_losses(b, cases["train.flow_noise"], timestep_shift=3.0)["mse"]
    assert not torch.allclose(base, shifted)
    old = pipe.model.config.timestep_shift
    try:
        pipe.model.config.timestep_shift = 3.0
        from_cfg = pipe.model.training_losses(b, cases["train.flow_noise"])["mse"]
    finally:
        pipe.model.config.timestep_shift = old
    torch.testing.assert_close(from_cfg, shifted)
