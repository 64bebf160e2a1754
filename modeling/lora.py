"""LoRA adapters on the MoT decoder's linear layers, saved in PEFT's on-disk format.

A LoRA adapter adds ``scale * B(A(dropout(x)))`` to a frozen linear layer's output, with A [r, in] and
B [out, r] (B starts at zero, so a fresh adapter changes nothing) and ``scale = alpha / r``.

Why not ``peft`` itself: PEFT wraps each targeted layer in a new module that holds the original as
``base_layer``, which renames every base weight (``q_proj.weight`` -> ``q_proj.base_layer.weight``); our strict
loader, the FSDP per-block wrapping and the released checkpoint layout all key on the original names. Here
the adapter's two small linears are attached *inside* the targeted ``nn.Linear`` (``q_proj.lora_A``,
``q_proj.lora_B``) and a forward hook adds their output, so the base keys never change. The files are
PEFT's: ``adapter_config.json`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``target_modules``, ...) and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``.

Targets name experts and module groups: ``gen:attn,mlp;und:attn`` (the default) adapts the generation
expert's attention and MLP, which produce every image token, and the understanding expert's attention,
through which the instruction and the references reach the image (keys/values of the context); the
understanding MLP only refines text/ViT context tokens and is left frozen to keep the adapter small and the
model's understanding intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from torch import nn

from modeling.errors import check_finite
from modeling.files import save_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LAYERS_PREFIX = "language_model.model.layers."
DEFAULT_TARGETS = "gen:attn,mlp;und:attn"

# Module names inside one decoder block, per expert and group.
EXPERT_MODULES = {
    "und": {
        "attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
        "mlp": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    },
    "gen": {
        "attn": [
            "self_attn.q_proj_moe_gen",
            "self_attn.k_proj_moe_gen",
            "self_attn.v_proj_moe_gen",
            "self_attn.o_proj_moe_gen",
        ],
        "mlp": ["mlp_moe_gen.gate_proj", "mlp_moe_gen.up_proj", "mlp_moe_gen.down_proj"],
    },
}


def parse_targets(spec: str) -> list[str]:
    """``"gen:attn,mlp;und:attn"`` -> block-relative module names. ValueError names the bad part."""
    names: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        expert, _, groups = part.partition(":")
        if expert not in EXPERT_MODULES or not groups:
            raise ValueError(f"bad LoRA target {part!r}: use expert:groups, experts {list(EXPERT_MODULES)}")
        for g in filter(None, (x.strip() for x in groups.split(","))):
            if g not in EXPERT_MODULES[expert]:
                raise ValueError(
                    f"bad LoRA target group {g!r} in {part!r}: groups {list(EXPERT_MODULES[expert])}"
                )
            names += [n for n in EXPERT_MODULES[expert][g] if n not in names]
    if not names:
        raise ValueError(f"LoRA targets {spec!r} name no module")
    return names


@dataclass
class LoraConfig:
    r: int
    lora_alpha: float
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: parse_targets(DEFAULT_TARGETS))

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.r

    def to_peft(self, base: str | None = None) -> dict:
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": base,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
        }

    @classmethod
    def from_peft(cls, d: dict) -> LoraConfig:
        if d.get("peft_type") != "LORA" or d.get("bias", "none") != "none" or d.get("fan_in_fan_out"):
            raise ValueError(f"only bias-free LoRA adapters are supported, got {d.get('peft_type')!r}")
        return cls(
            int(d["r"]), float(d["lora_alpha"]), float(d.get("lora_dropout", 0.0)), list(d["target_modules"])
        )


def _hook(module: nn.Linear, args, out):
    # the adapter may be kept in a higher precision than the frozen base (fp32 adapters on a bf16 base)
    x = args[0].to(module.lora_A.weight.dtype)
    delta = module.lora_B(module.lora_A(module.lora_dropout(x)))
    return out + (delta * module.lora_scale).to(out.dtype)


def targeted(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Linear]:
    """Full module names -> the decoder-block linears whose block-relative name is in ``target_modules``."""
    out = {}
    for name, m in model.named_modules():
        if name.startswith(LAYERS_PREFIX) and isinstance(m, nn.Linear):
            rel = name[len(LAYERS_PREFIX) :].split(".", 1)[1]  # drop the layer index
            if rel in target_modules:
                out[name] = m
    return out


def add_lora(
    model: nn.Module,
    config: LoraConfig,
    scale: float = 1.0,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, nn.Linear]:
    """Attach fresh adapters (A Kaiming-uniform as in PEFT, B = 0) to the targets; freezes everything else.
    ``scale`` multiplies ``alpha / r`` (``lora_scale`` of the pipeline); ``dtype`` of the adapters defaults
    to the base weights'. Returns the adapted modules."""
    mods = targeted(model, config.target_modules)
    if not mods:
        raise ValueError(f"no module of the model matches the LoRA targets {config.target_modules}")
    init = initial_lora_state(mods, config, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in mods.items():
        if hasattr(m, "lora_A"):
            raise ValueError("the model already has LoRA adapters")
        w = m.weight
        dt = dtype or w.dtype
        m.lora_A = nn.Linear(m.in_features, config.r, bias=False, device=w.device, dtype=dt)
        m.lora_B = nn.Linear(config.r, m.out_features, bias=False, device=w.device, dtype=dt)
        if w.device.type != "meta":  # a meta-built model gets its values later (e.g. broadcast by rank 0)
            m.lora_A.weight.data.copy_(init[f"{name}.lora_A.weight"])
            m.lora_B.weight.data.copy_(init[f"{name}.lora_B.weight"])
        m.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        m.lora_scale = config.scale * scale
        m._lora_handle = m.register_forward_hook(_hook)
    return mods


def initial_lora_state(
    mods: dict[str, nn.Linear], config: LoraConfig, seed: int | None
) -> dict[str, torch.Tensor]:
    """Fresh adapter values (fp32, CPU) for ``mods`` (name -> linear, also on the meta device): A
    Kaiming-uniform as in PEFT, drawn in module order from ``seed``; B zero, so nothing changes at first."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = {}
    for name, m in mods.items():
        a = torch.empty(config.r, m.in_features)
        nn.init.kaiming_uniform_(a, a=5**0.5, generator=gen)
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = torch.zeros(m.out_features, config.r)
    return out


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under PEFT's key names."""
    return {
        f"{PEFT_PREFIX}{k}": v.detach().contiguous()
        for k, v in model.state_dict().items()
        if ".lora_A." in k or ".lora_B." in k
    }


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def save_adapter(model: nn.Module, config: LoraConfig, folder: str, base: str | None = None) -> int:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (fp32 tensors); returns bytes written."""
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in lora_state_dict(model).items()}
    return write_adapter(state, config, folder, base)


def write_adapter(
    state: dict[str, torch.Tensor], config: LoraConfig, folder: str, base: str | None = None
) -> int:
    """``state``: the adapter tensors under the model's own names (``...q_proj.lora_A.weight``)."""
    os.makedirs(folder, exist_ok=True)
    state = {f"{PEFT_PREFIX}{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}
    path = os.path.join(folder, ADAPTER_WEIGHTS)
    save_safetensors(state, path)
    with open(os.path.join(folder, ADAPTER_CONFIG), "w") as f:
        json.dump(config.to_peft(base), f, indent=2)
    return os.path.getsize(path)


def resolve_adapter(path_or_repo: str) -> str:
    """A local adapter folder, or a hub id fetched with huggingface_hub (only the adapter files)."""
    if os.path.isdir(path_or_repo):
        return path_or_repo
    if os.path.exists(path_or_repo) or path_or_repo.count("/") != 1:
        raise ValueError(f"LoRA adapter {path_or_repo!r} is neither a folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_repo, allow_patterns=[ADAPTER_CONFIG, ADAPTER_WEIGHTS])


def read_adapter(folder: str) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """An adapter folder's config and tensors (keys without PEFT's prefix). ValueError names what is wrong."""
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ValueError(f"{folder} is not a LoRA adapter folder: missing {', '.join(missing)}")
    path = os.path.join(folder, ADAPTER_CONFIG)
    with open(path) as f:
        try:
            config = LoraConfig.from_peft(json.load(f))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    path = os.path.join(folder, ADAPTER_WEIGHTS)
    try:
        state = load_file(path)
    except Exception as e:  # safetensors raises its own error type for a truncated or foreign file
        raise ValueError(f"cannot read adapter weights {path}: {e}") from e
    for name, t in state.items():
        check_finite(name, t, path)
    return config, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}


def load_adapter(
    model: nn.Module, folder: str, scale: float = 1.0, dtype: torch.dtype | None = None
) -> LoraConfig:
    """Attach the adapter saved in ``folder`` to ``model`` (strict: every tensor must find its module and
    every adapted module its two tensors). ``dtype``: of the adapters (default: the base weights')."""
    config, state = read_adapter(folder)
    attach_adapter(model, config, state, scale, dtype, name=folder)
    return config


def attach_adapter(
    model: nn.Module,
    config: LoraConfig,
    state: dict[str, torch.Tensor],
    scale: float = 1.0,
    dtype: torch.dtype | None = None,
    name: str = "adapter",
) -> None:
    """Attach an adapter read with ``read_adapter`` (strict, as ``load_adapter``; ``name`` for messages).
    Checked against the model before anything is attached, so a misfit leaves the model as it was."""
    mods = targeted(model, config.target_modules)
    expected = {
        f"{n}.lora_{ab}.weight": (config.r, m.in_features) if ab == "A" else (m.out_features, config.r)
        for n, m in mods.items()
        for ab in "AB"
    }
    if set(state) != set(expected):
        extra, absent = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        raise ValueError(
            f"adapter {name} does not fit this model: unexpected {extra[:4]}, missing {absent[:4]}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"adapter tensor {key} has shape {tuple(state[key].shape)}, model {shape}")
    for module_name, m in add_lora(model, config, scale, dtype=dtype).items():
        for ab in "AB":
            getattr(m, f"lora_{ab}").weight.data.copy_(state[f"{module_name}.lora_{ab}.weight"])


def remove_lora(model: nn.Module) -> int:
    """Detach every adapter (the base weights were never changed); returns how many layers had one."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and hasattr(m, "lora_A"):
            m._lora_handle.remove()
            del m.lora_A, m.lora_B, m.lora_dropout
            del m.lora_scale, m._lora_handle
            n += 1
    return n


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every attached adapter into its base weight (W += scale * B A, computed in fp32) and remove it.
    Returns how many layers were merged."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and hasattr(m, "lora_A"):
            delta = (m.lora_B.weight.float() @ m.lora_A.weight.float()) * m.lora_scale
            m.weight.data = (m.weight.float() + delta).to(m.weight.dtype)
            n += 1
    remove_lora(model)
    return n
