"""Image generation (batched CFG denoising) and text generation on prepared contexts.

Every denoising step evaluates all CFG branches of all requests in ONE packed forward: the query of a
request (``<|vision_start|>`` + h*w noisy latent tokens + ``<|vision_end|>``) is embedded once and
repeated per branch, each copy with its branch's position id and attending to its branch's cache.
Upstream runs the three branches as three serial forwards at batch size 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from inference.context import Context, prefill_text
from inference.flow_sampler import branches_needed, cfg_combine, cfg_scales_at, euler_step, timestep_schedule
from modeling.bagel import Bagel
from modeling.kv_cache import Segment
from modeling.position_ids import flattened_position_ids
from modeling.tokenizer import SpecialTokenIds


@dataclass
class CFGContexts:
    """The three caches of one request (spec inference.md §2.2)."""

    full: Context
    no_text: Context
    no_image: Context


@dataclass
class SamplingConfig:
    num_timesteps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 2.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_renorm_type: str = "text_channel"
    cfg_renorm_min: float = 0.0


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
    record: list | None = None,
) -> list[torch.Tensor]:
    """Integrate each request's latent tokens from noise to data.

    init_noise[r] [h*w, p*p*C] fp32 (t = 1); grids[r] = (h, w) latent-token grid. Returns the final
    latents [h*w, p*p*C] fp32. ``batch_branches=False`` runs one forward per branch (reference path).
    ``record`` (a list) receives per-step dicts of x_t / branch velocities / v_t for parity checks.
    """
    dev = model.device
    timesteps, dts = timestep_schedule(sampling.num_timesteps, sampling.timestep_shift)
    xs = [n.float().clone() for n in init_noise]
    cfg = model.config
    lat_pos = [
        flattened_position_ids(h, w, cfg.max_latent_size, cfg.interpolate_pos).to(dev) for h, w in grids
    ]
    markers = model.embed_text(torch.tensor([special.start_of_image, special.end_of_image], device=dev))
    steps = range(len(timesteps))
    for i in tqdm(steps, desc="denoising", disable=not progress, leave=False):
        t = float(timesteps[i])
        s_t, s_i = cfg_scales_at(t, sampling.cfg_interval, sampling.cfg_text_scale, sampling.cfg_img_scale)
        need_text, need_img = branches_needed(s_t, s_i)
        jobs = []  # (request, branch name, context)
        for r, ctxs in enumerate(contexts):
            jobs.append((r, "full", ctxs.full))
            if need_text:
                jobs.append((r, "no_text", ctxs.no_text))
            if need_img:
                jobs.append((r, "no_image", ctxs.no_image))
        queries = []
        for r, x in enumerate(xs):
            tt = torch.full((x.shape[0],), t, device=dev)
            lat = model.embed_latents(x.to(dev), tt, lat_pos[r])
            queries.append(torch.cat([markers[:1], lat.to(markers.dtype), markers[1:]], 0))
        groups = [jobs] if batch_branches else [[j] for j in jobs]
        vel = {}
        for group in groups:
            embeds, pos, gen_idx, segs, offset = [], [], [], [], 0
            for r, _name, ctx in group:
                q = queries[r]
                n = q.shape[0]
                embeds.append(q)
                pos.append(torch.full((n,), ctx.rope, device=dev, dtype=torch.long))
                gen_idx.append(torch.arange(offset + 1, offset + n - 1, device=dev))
                segs.append(Segment(n, ctx.cache, ctx.kv_len))
                offset += n
            hidden = model.forward_cached(
                torch.cat(embeds), torch.cat(pos), segs, gen_indexes=torch.cat(gen_idx)
            )
            offset = 0
            for (r, name, _), q in zip(group, [queries[j[0]] for j in group]):
                n = q.shape[0]
                vel[(r, name)] = model.velocity(hidden[offset + 1 : offset + n - 1]).float()
                offset += n
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
            if record is not None and r == 0:
                record.append(
                    {
                        "t": t,
                        "x_t": xs[r].clone(),
                        "v_cond": vel[(r, "full")].cpu(),
                        "v_cfg_text": None if (r, "no_text") not in vel else vel[(r, "no_text")].cpu(),
                        "v_cfg_img": None if (r, "no_image") not in vel else vel[(r, "no_image")].cpu(),
                        "v_t": v.cpu(),
                    }
                )
            xs[r] = euler_step(xs[r], v.to(xs[r].device), float(dts[i]))
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
    """Decode from ``<|im_start|>`` at the context's next position (spec inference.md §5.1).

    Returns the fed tokens (start token first, as upstream's ``generate_text``) and optionally the
    logits of every forward [steps, V]. Stops when the next token is ``<|im_end|>`` (not appended).
    The caller's context is not modified.
    """
    ctx = ctx.fork()
    dev = model.device
    curr = special.bos_token_id
    ids, logits_all = [], []
    for _ in range(max_new_tokens):
        emb = model.embed_text(torch.tensor([curr], device=dev))
        pos = torch.tensor([ctx.rope], device=dev)
        h = model.forward_cached(
            emb, pos, [Segment(1, ctx.cache, ctx.kv_len)], causal=True, update_cache=True
        )
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


def append_text_to(model: Bagel, ctxs: list[Context], ids: list[int], special: SpecialTokenIds) -> None:
    for c in ctxs:
        prefill_text(model, c, ids, special)
