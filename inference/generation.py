"""Image generation (batched CFG denoising) and text generation on prepared contexts.

Every denoising step evaluates all CFG branches of all requests in ONE packed forward: the query of a
request (``<|vision_start|>`` + h*w noisy latent tokens + ``<|vision_end|>``) appears once per branch,
each copy at its branch's position and attending to its branch's cache.
Upstream runs the three branches as three serial forwards at batch size 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from inference import trace
from inference.context import Context, item_builder, run_cached
from inference.flow_sampler import branches_needed, cfg_combine, cfg_scales_at, euler_step, timestep_schedule
from inference.sampling import SamplingConfig
from inference.step_cache import StepCache
from modeling.bagel import Bagel
from modeling.kv_cache import CachedAttention, Segment
from modeling.sequence import SequenceBuilder
from modeling.tokenizer import SpecialTokenIds

BRANCHES = ("full", "no_text", "no_image")


@dataclass
class CFGContexts:
    """The three caches of one request (docs/architecture.md §6)."""

    full: Context
    no_text: Context
    no_image: Context


class _Queries:
    """The packed denoising queries: per job (request, branch) one sample holding the request's noisy image
    at its context's next position, attending to that context's cache. The layout depends only on which
    jobs run together, so each set is built once; the caches' tails are claimed once, before the loop."""

    def __init__(self, model: Bagel, special: SpecialTokenIds, contexts: list[CFGContexts], grids):
        self.model, self.special, self.contexts, self.grids = model, special, contexts, grids
        self.built: dict = {}
        n = [1 + h * w + 1 for h, w in grids]  # <|vision_start|> latents <|vision_end|>
        for r, c in enumerate(contexts):
            for name in BRANCHES:
                getattr(c, name).own_tail(n[r])
        trace.denoise_contexts(
            {name: (getattr(contexts[0], name).kv_len, getattr(contexts[0], name).rope) for name in BRANCHES}
        )

    def _build(self, jobs):
        builder = SequenceBuilder(self.special, self.model.config.sequence_geometry())
        segments = []
        for r, name in jobs:
            ctx = getattr(self.contexts[r], name)
            start = builder.curr
            builder.start_sample(ctx.rope).add_vae_image(grid=self.grids[r], noisy=True)
            builder.end_sample()
            segments.append(Segment(builder.curr - start, ctx.cache, ctx.kv_len))
        seq = builder.build().to(self.model.device)
        trace.denoise_query(seq)
        return seq, CachedAttention(segments, compiled=True)

    def velocities(self, jobs: list[tuple[int, str]], xs: list[torch.Tensor], t: float) -> dict:
        """One forward over ``jobs``; returns {(request, branch): velocity [h*w, p*p*C] fp32}."""
        if tuple(jobs) not in self.built:
            self.built[tuple(jobs)] = self._build(jobs)
        seq, plan = self.built[tuple(jobs)]
        dev = self.model.device
        lat = torch.cat([xs[r] for r, _ in jobs]).to(dev)
        out = run_cached(self.model, seq.with_latents(lat, torch.full((lat.shape[0],), t, device=dev)), plan)
        parts = out.velocity.float().split([xs[r].shape[0] for r, _ in jobs])
        return dict(zip(jobs, parts))


@torch.no_grad()
def denoise(
    model: Bagel,
    contexts: list[CFGContexts],
    init_noise: list[torch.Tensor],
    grids: list[tuple[int, int]],
    special: SpecialTokenIds,
    sampling: SamplingConfig,
    batch_branches: bool = True,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
    stats: dict | None = None,
) -> list[torch.Tensor]:
    """Integrate each request's latent tokens from noise to data.

    init_noise[r] [h*w, p*p*C] fp32 (t = 1); grids[r] = (h, w) latent-token grid. Returns the final
    latents [h*w, p*p*C] fp32. ``batch_branches=False`` runs one forward per branch (reference path).
    ``callback(done, total)`` is called after every Euler step (a UI's progress bar). ``sampling.cache``
    decides which branch evaluations a step computes and which it predicts (inference/step_cache.py).
    ``stats``, if given, receives ``evaluations`` (per request), ``forwards`` and ``steps``.
    """
    timesteps, dts = timestep_schedule(sampling.num_timesteps, sampling.timestep_shift)
    steps = StepCache(sampling, len(timesteps))
    queries = _Queries(model, special, contexts, grids)
    xs = [n.float().clone() for n in init_noise]
    evaluations, forwards = [0] * len(contexts), 0
    for i in tqdm(range(len(timesteps)), desc="denoising", disable=not progress, leave=False):
        t = float(timesteps[i])
        s_t, s_i = cfg_scales_at(t, sampling.cfg_interval, sampling.cfg_text_scale, sampling.cfg_img_scale)
        need_text, need_img = branches_needed(s_t, s_i)
        branches = ["full"] + ["no_text"] * need_text + ["no_image"] * need_img
        jobs = [(r, b) for r in range(len(contexts)) for b in branches]
        computed = {}
        todo = steps.to_compute(i, jobs)
        for group in [todo] if batch_branches else [[j] for j in todo]:
            if group:
                computed.update(queries.velocities(group, xs, t))
                forwards += 1
        for r, _ in computed:
            evaluations[r] += 1
        vel = steps.complete(t, jobs, computed)
        for r in range(len(xs)):
            v_full, v_text, v_img = (vel.get((r, b)) for b in BRANCHES)
            v = cfg_combine(
                v_full, v_text, v_img, s_t, s_i, sampling.cfg_renorm_type, sampling.cfg_renorm_min
            )
            trace.denoise_step(r, t, xs[r], v_full, v_text, v_img, v)
            xs[r] = euler_step(xs[r], v.to(xs[r].device), float(dts[i]))
        if callback is not None:
            callback(i + 1, len(timesteps))
    if stats is not None:
        stats.update(evaluations=evaluations, forwards=forwards, steps=len(timesteps))
    return xs


@torch.no_grad()
def generate_text(
    model: Bagel,
    ctx: Context,
    special: SpecialTokenIds,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> tuple[list[int], torch.Tensor | None]:
    """Decode from ``<|im_start|>`` at the context's next position (docs/architecture.md).

    Returns the fed tokens (start token first, as upstream's ``generate_text``) and optionally the
    logits of every forward [steps, V]. Stops when the next token is ``<|im_end|>`` (not appended).
    The caller's context is not modified.
    """
    ctx = ctx.fork()
    dev = model.device
    curr = special.bos_token_id
    ids, logits_all = [], []
    # one token per forward: the layout is built once, each step only swaps the token and its position
    b = item_builder(model, special, ctx)
    b.add_text([curr], wrap=False)
    step_seq = b.end_sample().build().to(dev)
    for _ in range(max_new_tokens):
        seq = dataclasses.replace(
            step_seq,
            text_ids=torch.tensor([curr], device=dev),
            position_ids=torch.tensor([ctx.rope], device=dev),
        )
        ctx.own_tail(1)
        plan = CachedAttention([Segment(1, ctx.cache, ctx.kv_len)], causal=True, update_cache=True)
        h = run_cached(model, seq, plan).hidden
        ctx.kv_len += 1
        ctx.rope += 1
        logits = model.logits(h)[0].float()
        if return_logits:
            logits_all.append(logits.cpu())
        ids.append(curr)
        if do_sample:
            probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        else:
            nxt = int(torch.argmax(logits))
        if nxt == special.eos_token_id:
            break
        curr = nxt
    return ids, (torch.stack(logits_all) if return_logits and logits_all else None)
