"""``compile=True``: the denoising step's decoder layers through torch.compile, the same graphs for every
layer, no graph breaks (``fullgraph=True`` raises on one), within 1e-4 of eager and of the upstream fixture."""

from __future__ import annotations

import pytest
import torch

from inference.pipeline import SconePipeline
from tests.conftest import CHECKPOINT, ROOT
from tests.test_parity_inference import _gen_kwargs, gen_case_inputs


@pytest.fixture(scope="module")
def compiled():
    return SconePipeline.from_pretrained(str(CHECKPOINT), compile=True)


def test_compiled_generation_matches_eager_and_the_fixture(compiled, pipe, cases, cases_json):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    inputs = gen_case_inputs(cases, cases_json)
    eager = pipe.generate(**inputs, **_gen_kwargs(cases_json))
    out = compiled.generate(**inputs, **_gen_kwargs(cases_json))
    assert (out.latent - eager.latent).abs().max() <= 1e-4
    assert (out.latent - cases["gen.final_latent"]).abs().max() <= 1e-4
    # two graphs per layer (before and after its attention), compiled for the first query shape (3 CFG
    # branches) and once more, dynamic, when the fixture's schedule leaves the CFG interval (1 branch):
    # 4 in all, shared by the fixture's 18 layers (a layer index in the graphs would make it 72)
    assert counters["stats"]["unique_graphs"] == 4
    again = compiled.generate(**inputs, **_gen_kwargs(cases_json))
    assert counters["stats"]["unique_graphs"] == 4  # a second image reuses them
    assert torch.equal(again.latent, out.latent)


def test_compile_refuses_group_offload():
    with pytest.raises(ValueError, match="group offload"):
        SconePipeline.from_pretrained(str(CHECKPOINT), compile=True, offload="group")


def test_compiled_int8_weights_match_eager_int8():
    shipped = str(ROOT / "ckpts" / "scone-tiny")
    refs = [str(ROOT / "assets" / "examples" / f) for f in ("ref1.png", "ref2.png")]
    kw = dict(images=refs, prompt="Place the green cross from image 1 on the right.", seed=0, num_timesteps=4)
    eager = SconePipeline.from_pretrained(shipped, weights="int8").generate(**kw)
    compiled = SconePipeline.from_pretrained(shipped, weights="int8", compile=True).generate(**kw)
    assert (eager.latent - compiled.latent).abs().max() <= 1e-4
