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
from inference.context import Context, item_builder
from inference.flow_sampler import branches_needed, cfg_combine, cfg_scales_at, euler_step, timestep_schedule
from inference.sampling import SamplingConfig
from inference.step_cache import TaylorCache, is_full_step
from modeling.bagel import Bagel
from modeling.kv_cache import CachedAttention, Segment
from modeling.sequence import PackedSequence, SequenceBuilder
from modeling.tokenizer import SpecialTokenIds


@dataclass
class CFGContexts:
    """The three caches of one request (docs/architecture.md §6)."""

    full: Context
    no_text: Context
    no_image: Context


def _query(
    model: Bagel, special: SpecialTokenIds, jobs: list[tuple[int, str, Context]], grids: list[tuple[int, int]]
) -> tuple[PackedSequence, list[Segment]]:
    """The packed query of one denoising forward: per job (request, branch, context) one sample holding
    the request's noisy image at its context's next position, attending to that context's cache."""
    builder = SequenceBuilder(special, model.config.sequence_geometry())
    segments = []
    for r, _branch, ctx in jobs:
        start = builder.curr
        builder.start_sample(ctx.rope).add_vae_image(grid=grids[r], noisy=True)
        builder.end_sample()
        segments.append(Segment(builder.curr - start, ctx.cache, ctx.kv_len))
    return builder.build().to(model.device), segments


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
    other than "none" skips network evaluations on some steps (inference/step_cache.py). ``stats``, if
    given, receives ``evaluations`` (branch evaluations per request), ``forwards`` and ``steps``.
    Under ``trace.recording()`` request 0's x_t / branch velocities / v_t are recorded per step.
    """
    dev = model.device
    timesteps, dts = timestep_schedule(sampling.num_timesteps, sampling.timestep_shift)
    n_steps = len(timesteps)
    xs = [n.float().clone() for n in init_noise]
    caching = sampling.cache != "none"
    taylor = TaylorCache(sampling.cache_order) if caching else None
    evaluations = [0] * len(contexts)  # branch evaluations per request
    forwards = 0
    queries: dict = {}  # the query layout depends only on which (request, branch) run: built once per set
    for i in tqdm(range(n_steps), desc="denoising", disable=not progress, leave=False):
        t = float(timesteps[i])
        s_t, s_i = cfg_scales_at(t, sampling.cfg_interval, sampling.cfg_text_scale, sampling.cfg_img_scale)
        need_text, need_img = branches_needed(s_t, s_i)
        branches = ["full"] + ["no_text"] * need_text + ["no_image"] * need_img
        full_step = not caching or is_full_step(
            i, n_steps, sampling.cache_interval, sampling.cache_warmup_steps, sampling.cache_final_steps
        )

        extrapolated = set()  # (request, branch) predicted from the cache on this step
        if caching and not full_step:
            only_uncond = sampling.cache == "taylorseer_uncond"
            extrapolated = {
                (r, b)
                for r in range(len(contexts))
                for b in branches
                if (r, b) in taylor and not (only_uncond and b == "full")  # no history yet: compute
            }
        jobs = [
            (r, b, getattr(c, b))
            for r, c in enumerate(contexts)
            for b in branches
            if (r, b) not in extrapolated
        ]
        groups = [jobs] if batch_branches else [[j] for j in jobs]
        vel = {}
        for group in groups:
            if not group:
                continue
            key = tuple((r, name) for r, name, _ in group)
            if key not in queries:
                queries[key] = _query(model, special, group, grids)
                rec = trace.active()
                if rec is not None and rec.query_seq is None:
                    rec.query_seq = queries[key][0].to("cpu", non_blocking=False)
            seq, segments = queries[key]
            lat = torch.cat([xs[r] for r, _, _ in group]).to(dev)
            out = model(
                seq.with_latents(lat, torch.full((lat.shape[0],), t, device=dev)), CachedAttention(segments)
            )
            forwards += 1
            parts = out.velocity.float().split([xs[r].shape[0] for r, _, _ in group])
            for (r, name, _), v in zip(group, parts):
                vel[(r, name)] = v
                evaluations[r] += 1
                if caching:
                    taylor.update((r, name), t, v)
        for r, name in extrapolated:
            vel[(r, name)] = taylor.predict((r, name), t)
        rec = trace.active()
        for r in range(len(xs)):
            v = cfg_combine(
                vel[(r, "full")],
                vel.get((r, "no_text")),
                vel.get((r, "no_image")),
                s_t,
                s_i,
                sampling.cfg_renorm_type,
                sampling.cfg_renorm_min,
            )
            if rec is not None and r == 0:
                rec.denoise_steps.append(
                    {
                        "t": t,
                        "x_t": xs[r].clone(),
                        **{
                            k: None if vel.get((r, b)) is None else vel[(r, b)].cpu()
                            for k, b in (
                                ("v_cond", "full"),
                                ("v_cfg_text", "no_text"),
                                ("v_cfg_img", "no_image"),
                            )
                        },
                        "v_t": v.cpu(),
                    }
                )
            xs[r] = euler_step(xs[r], v.to(xs[r].device), float(dts[i]))
        if callback is not None:
            callback(i + 1, n_steps)
    if stats is not None:
        stats.update(evaluations=evaluations, forwards=forwards, steps=n_steps)
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
        plan = CachedAttention([Segment(1, ctx.cache, ctx.kv_len)], causal=True, update_cache=True)
        h = model(seq, plan).hidden
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
