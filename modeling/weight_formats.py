"""Weight formats of the loaded model: the checkpoint's floating dtype, or weight-only int8 / fp8.

``weights="int8"``: every linear layer inside the LLM's decoder blocks (attention q/k/v/o and MLP
gate/up/down, both experts: about 90% of the 7B model's parameters) stores its weight as int8 with one scale per
output channel; activations and everything else (ViT, VAE, embeddings, norms, ``lm_head``, the
connectors) stay in the compute dtype. ``weights="fp8"``: the same layers in float8 e4m3 with per-channel
scales, on GPUs that have fp8 (compute capability 8.9+: Ada, Hopper, Blackwell).

Both use torchao (``Int8WeightOnlyConfig`` / ``Float8WeightOnlyConfig``), which runs on CPU and CUDA. It
is applied one weight at a time *while loading* (``quantize_weight`` on each tensor as it is read), so
neither host RAM nor the GPU ever holds the full-precision model: the peak is the quantized model plus
one layer's weight.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

FLOAT_FORMATS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# int8_und: only the understanding expert's linears in int8. During denoising that expert serves just the
# two marker tokens of each image per step, so its precision barely reaches the image there; it builds the
# text/ViT context once per request (docs/inference_speed.md has the measured effect).
QUANTIZED_FORMATS = ("int8", "fp8", "int8_und")
WEIGHT_FORMATS = (*FLOAT_FORMATS, *QUANTIZED_FORMATS)
QUANTIZED_PREFIX = "language_model.model.layers."  # the decoder blocks


def compute_dtype(name: str, device_type: str) -> torch.dtype:
    """The dtype of a ``--dtype`` value (``auto`` or a ``FLOAT_FORMATS`` name) on a device type: ``auto``
    is bf16 on CUDA and fp32 elsewhere (CPUs without native bf16 are slow in it)."""
    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return FLOAT_FORMATS[name]


def float_format_name(dtype: torch.dtype) -> str:
    """``FLOAT_FORMATS``' name of ``dtype`` (``torch.bfloat16`` -> ``"bf16"``)."""
    return next(k for k, v in FLOAT_FORMATS.items() if v == dtype)


def split_weights(weights: str | None, dtype: torch.dtype) -> tuple[torch.dtype, str | None]:
    """(compute dtype, quantized format or None) of a ``weights=`` value; None keeps ``dtype``."""
    if weights is None:
        return dtype, None
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weights format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    if weights in FLOAT_FORMATS:
        return FLOAT_FORMATS[weights], None
    return dtype, weights


def check_supported(fmt: str, device: torch.device) -> None:
    """Raise ``ValueError`` where ``fmt`` cannot run (fp8 off a capable GPU, torchao missing)."""
    if fmt == "fp8":
        if device.type != "cuda":
            raise ValueError(
                f"weights='fp8' needs a CUDA GPU with fp8 (compute capability 8.9+); this is {device}"
            )
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(f"weights='fp8' needs compute capability 8.9+; {device} has {major}.{minor}")
    import_torchao()


def import_torchao():
    """Import torchao, quietly: its CPU wheels log a failure for each CUDA kernel library they cannot load
    and torch warns about one of its enums; neither concerns our users. ValueError if it is missing."""
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        import torchao
        import torchao.quantization  # noqa: F401 - the warnings come from here
    except ImportError as e:
        raise ValueError("weights='int8' / 'fp8' need torchao: pip install torchao") from e
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return torchao


def quantized_keys(model: nn.Module, fmt: str = "int8") -> set[str]:
    """State-dict keys of the weights that ``fmt`` quantizes (also on a meta-built model)."""
    keys = {
        f"{name}.weight"
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith(QUANTIZED_PREFIX)
    }
    if fmt == "int8_und":  # the generation expert's modules are the *_moe_gen ones
        keys = {k for k in keys if "moe_gen" not in k}
    return keys


def _config(fmt: str):
    import_torchao()
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Float8WeightOnlyConfig() if fmt == "fp8" else Int8WeightOnlyConfig()


def quantize_weight(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """One linear weight [out, in] (in the compute dtype, on its device) -> torchao's quantized tensor of
    the same shape (per output channel scales)."""
    import_torchao()
    from torchao.quantization import quantize_

    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    quantize_(lin, _config(fmt))
    return lin.weight.data


def storage_bytes(t: torch.Tensor) -> int:
    """Bytes a (possibly quantized, tensor-subclass) weight occupies: the sum of its inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(storage_bytes(getattr(t, n)) for n in names)
    if isinstance(t, nn.Parameter) and type(t.data) is not torch.Tensor:
        return storage_bytes(t.data)
    return t.numel() * t.element_size()


def quantize_model(model: nn.Module, fmt: str) -> int:
    """Quantize an already-built model's decoder linears in place, one weight at a time (random-weight
    benches; loading from a folder quantizes while reading instead). Returns how many were quantized."""
    keys = quantized_keys(model, fmt)
    for key in sorted(keys):
        module = model.get_submodule(key.rsplit(".", 1)[0])
        module.weight = nn.Parameter(quantize_weight(module.weight.data, fmt), requires_grad=False)
    return len(keys)
