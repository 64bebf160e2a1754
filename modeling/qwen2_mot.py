"""Qwen2 Mixture-of-Transformers decoder (BAGEL's ``Qwen2MoTDecoderLayer``); docs/architecture.md §1.

Every layer holds two full sets of weights: the *understanding* expert (plain Qwen2 names) and the
*generation* expert (the ``_moe_gen`` twins). Each token is routed to one expert by its modality —
text, image markers and ViT tokens to und, VAE latent tokens to gen — while attention is one joint
softmax over the packed sequence. Routing is given per forward as two index tensors.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.config import MOT_LAYER, LLMConfig


class RMSNorm(nn.Module):
    """``w * (x * rsqrt(mean(x^2) + eps))`` computed in fp32, cast back before the weight (as HF Qwen2)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


@functools.lru_cache(maxsize=8)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    # Not a buffer: it is not in the checkpoint and a meta-device build would lose it.
    return 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim)
    )


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [N] -> cos, sin [N, 1, head_dim] (angles in fp32, halves duplicated)."""
    freqs = position_ids.float()[:, None] * _inv_freq(head_dim, theta, position_ids.device)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


# Rows per MLP chunk at inference: a [rows, intermediate] activation of this size stays in a CPU's L2/L3
# cache between the gate/up matmuls, SiLU and the product (a whole batched CFG step's does not).
MLP_CHUNK_ROWS = 1024


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, hidden] -> [N, hidden]; without autograd, in chunks of ``MLP_CHUNK_ROWS`` rows (compiled code
        fuses instead)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.shape[0] <= MLP_CHUNK_ROWS:
            return self._rows(x)
        out = x.new_empty(x.shape)
        for a in range(0, x.shape[0], MLP_CHUNK_ROWS):
            out[a : a + MLP_CHUNK_ROWS] = self._rows(x[a : a + MLP_CHUNK_ROWS])
        return out


def _routed(x: torch.Tensor, route: Routing, f_und, f_gen, out_dim: int) -> torch.Tensor:
    """Apply ``f_und`` to und rows and ``f_gen`` to gen rows of x [N, *] -> [N, out_dim]."""
    if route.all_und:
        return f_und(x)
    out = x.new_empty(x.shape[0], out_dim)
    if route.und_idx.numel():
        out.index_copy_(0, route.und_idx, f_und(x.index_select(0, route.und_idx)))
    if route.gen_idx.numel():
        out.index_copy_(0, route.gen_idx, f_gen(x.index_select(0, route.gen_idx)))
    return out


class Routing:
    """Which rows of a packed forward go to which expert. ``gen_idx=None`` means all rows are und."""

    def __init__(self, und_idx: torch.Tensor | None = None, gen_idx: torch.Tensor | None = None):
        self.all_und = gen_idx is None or gen_idx.numel() == 0
        self.und_idx = und_idx
        self.gen_idx = gen_idx


class MoTAttention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        h, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hd
        self.q_proj = nn.Linear(h, nh * hd, bias=True)
        self.k_proj = nn.Linear(h, nkv * hd, bias=True)
        self.v_proj = nn.Linear(h, nkv * hd, bias=True)
        self.o_proj = nn.Linear(nh * hd, h, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.q_proj_moe_gen = nn.Linear(h, nh * hd, bias=True)
        self.k_proj_moe_gen = nn.Linear(h, nkv * hd, bias=True)
        self.v_proj_moe_gen = nn.Linear(h, nkv * hd, bias=True)
        self.o_proj_moe_gen = nn.Linear(nh * hd, h, bias=False)
        self.q_norm_moe_gen = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm_moe_gen = RMSNorm(hd, cfg.rms_norm_eps)

    def qkv(self, x, cos, sin, route: Routing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, hidden] -> q [N, heads, d], k and v [N, kv_heads, d] (QK-norm and RoPE applied)."""
        n, nh, nkv, hd = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim

        def qk(proj, norm, heads):
            # per-head QK-norm of each expert, then RoPE
            return lambda a: norm(proj(a).view(-1, heads, hd)).view(-1, heads * hd)

        q = _routed(
            x,
            route,
            qk(self.q_proj, self.q_norm, nh),
            qk(self.q_proj_moe_gen, self.q_norm_moe_gen, nh),
            nh * hd,
        )
        k = _routed(
            x,
            route,
            qk(self.k_proj, self.k_norm, nkv),
            qk(self.k_proj_moe_gen, self.k_norm_moe_gen, nkv),
            nkv * hd,
        )
        v = _routed(x, route, self.v_proj, self.v_proj_moe_gen, nkv * hd)
        q = apply_rotary(q.view(n, nh, hd), cos, sin)
        k = apply_rotary(k.view(n, nkv, hd), cos, sin)
        return q, k, v.view(n, nkv, hd)

    def project_out(self, out: torch.Tensor, route: Routing) -> torch.Tensor:
        """Attention output [N, heads, d] -> [N, hidden] through each expert's o_proj."""
        out = out.reshape(out.shape[0], -1)
        return _routed(out, route, self.o_proj, self.o_proj_moe_gen, self.o_proj.out_features)


class MoTDecoderLayer(nn.Module):
    """Pre-norm residual block with per-expert norms, attention projections and MLPs."""

    def __init__(self, cfg: LLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = MoTAttention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.mlp_moe_gen = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, route: Routing, attn
    ) -> torch.Tensor:
        """x [N, hidden] -> [N, hidden]; ``attn`` is this layer's attention (a plan's ``layer(i)``)."""
        return self.after_attention(x, attn.attend(*self.before_attention(x, cos, sin, route)), route)

    def before_attention(
        self, x, cos, sin, route: Routing
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, hidden] -> q [N, heads, d], k and v [N, kv_heads, d] of the normed input."""
        a = _routed(x, route, self.input_layernorm, self.input_layernorm_moe_gen, x.shape[1])
        return self.self_attn.qkv(a, cos, sin, route)

    def after_attention(self, x: torch.Tensor, attn_out: torch.Tensor, route: Routing) -> torch.Tensor:
        """The residual stream x [N, hidden] and the attention output [N, heads, d] -> the layer's output."""
        x = x + self.self_attn.project_out(attn_out, route)
        m = _routed(
            x,
            route,
            lambda t: self.mlp(self.post_attention_layernorm(t)),
            lambda t: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(t)),
            x.shape[1],
        )
        return x + m


# The compiled pieces of a layer: plain functions taking the layer as an argument, so that one graph (per
# shape) serves every layer; nothing in them reads ``layer_idx``. The attention between them stays eager: it
# depends on each segment's cache length, which would otherwise become a constant of the graph.
def _before_attention(layer: MoTDecoderLayer, x, cos, sin, route: Routing):
    return layer.before_attention(x, cos, sin, route)


def _after_attention(layer: MoTDecoderLayer, x, attn_out, route: Routing):
    return layer.after_attention(x, attn_out, route)


class Qwen2MoTModel(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        if cfg.layer_module != MOT_LAYER:
            raise ValueError(
                f"layer_module {cfg.layer_module!r} is not supported; released checkpoints use {MOT_LAYER}"
            )
        if not cfg.qk_norm:
            raise ValueError("qk_norm=False is not supported: released checkpoints have q/k norms")
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2MoTForCausalLM(nn.Module):
    """Keys: ``model.*`` and ``lm_head.weight`` (prefixed ``language_model.`` inside Bagel)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen2MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [N] -> RoPE cos, sin [N, 1, head_dim]."""
        return rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, dtype)

    def compile_layers(self, enable: bool = True, mode: str | None = None) -> None:
        """Run the decoder layers of repeating forwards (plans with ``compiled=True``: the denoising steps)
        through ``torch.compile``: the norms, projections, RoPE and MLPs before and after each attention,
        as two graphs (``fullgraph``: a graph break is an error) that serve every layer, their weights being
        inputs. A new token count compiles once more, with dynamic shapes. ``mode`` is torch.compile's."""
        self._compiled = None
        if enable:
            self._compiled = tuple(
                torch.compile(f, fullgraph=True, mode=mode) for f in (_before_attention, _after_attention)
            )

    def run_layers(
        self, x: torch.Tensor, rope: tuple, route: Routing, plan, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Decoder layers ``start`` .. ``stop - 1`` on x [N, H]; ``plan.layer(i)`` is layer i's attention."""
        cos, sin = rope
        stop = len(self.model.layers) if stop is None else stop
        compiled = getattr(self, "_compiled", None) if getattr(plan, "compiled", False) else None
        for i in range(start, stop):
            layer = self.model.layers[i]
            if compiled is None:
                x = layer(x, cos, sin, route, plan.layer(i))
            else:
                before, after = compiled
                x = after(layer, x, plan.layer(i).attend(*before(layer, x, cos, sin, route)), route)
        return x

    def final_norm(self, x: torch.Tensor, route: Routing) -> torch.Tensor:
        """``norm`` on und rows, ``norm_moe_gen`` on gen rows."""
        return _routed(x, route, self.model.norm, self.model.norm_moe_gen, x.shape[1])
