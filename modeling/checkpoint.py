"""Loading a released BAGEL / Scone folder (the layout: ckpts/README.md).

A folder holds ``llm_config.json``, ``vit_config.json``, ``ae.safetensors``, the weights
(``model.safetensors`` for Scone, ``ema.safetensors`` for BAGEL-7B-MoT) and the Qwen2 tokenizer files.
``path`` may also be a Hugging Face hub id (``Ryann829/Scone``), fetched with ``snapshot_download``
(``HF_HUB_OFFLINE=1`` uses the local cache only).

The model is built on the meta device and every tensor is read from the safetensors file, cast and
moved to its device one at a time, so host RAM peaks near one tensor rather than a second copy of the
29 GB model. Loading is strict: a missing file, a missing / unexpected key or a shape mismatch raises
``CheckpointError`` naming it (upstream loads with ``strict=False`` and prints).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open

from modeling.autoencoder import AutoEncoder, load_autoencoder
from modeling.bagel import Bagel
from modeling.config import MOT_LAYER, SCONE_CONFIG_FILE, BagelConfig, LLMConfig
from modeling.errors import CheckpointError, check_finite, check_state_keys
from modeling.siglip import SiglipVisionConfig
from modeling.tokenizer import TOKENIZER_FILES, SpecialTokenIds, load_tokenizer
from modeling.weight_formats import check_supported, quantize_weight, quantized_keys, split_weights

log = logging.getLogger(__name__)

CONFIG_FILES = ("llm_config.json", "vit_config.json")
AE_FILE = "ae.safetensors"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
# Tables that are pure functions of their shape: recomputed when a (training) checkpoint omits them.
RECOMPUTABLE = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")


@dataclass
class LoadedModel:
    model: Bagel
    vae: AutoEncoder
    tokenizer: object
    special_ids: SpecialTokenIds
    config: BagelConfig
    folder: str
    weights_file: str


def resolve_model_path(path_or_repo: str, weights_file: str | None = None) -> str:
    """A local folder is used as is; anything else is treated as a hub repo id and downloaded."""
    if os.path.isdir(path_or_repo):
        return path_or_repo
    if os.path.exists(path_or_repo):
        raise CheckpointError(f"--model_path {path_or_repo} is a file; expected a checkpoint folder")
    if path_or_repo.startswith((".", "/", "~")) or path_or_repo.count("/") != 1:
        raise CheckpointError(f"checkpoint folder not found: {path_or_repo}")
    from huggingface_hub import snapshot_download

    patterns = list(CONFIG_FILES) + [SCONE_CONFIG_FILE, AE_FILE, *TOKENIZER_FILES, "tokenizer.json"]
    patterns += [weights_file] if weights_file else ["model.safetensors", "ema.safetensors"]
    try:
        return snapshot_download(repo_id=path_or_repo, allow_patterns=patterns)
    except Exception as e:  # offline, unknown repo, network
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"could not fetch {path_or_repo!r} from the hub ({type(e).__name__}: {first}); pass a local "
            "folder, or download it first (ckpts/README.md)"
        ) from e


def check_model_folder(path_or_repo: str, weights_file: str | None = None) -> str:
    """Resolve ``path_or_repo`` (a hub id is downloaded) and check that every file loading needs is there,
    naming all missing ones at once, before anything is read. Returns the folder."""
    folder = resolve_model_path(path_or_repo, weights_file)
    missing = [n for n in (*CONFIG_FILES, AE_FILE) if not os.path.isfile(os.path.join(folder, n))]
    if weights_file is not None:
        missing += [] if os.path.isfile(os.path.join(folder, weights_file)) else [weights_file]
    elif not any(os.path.isfile(os.path.join(folder, n)) for n in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        missing += [n for n in TOKENIZER_FILES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise CheckpointError(
            f"{folder} is not a model folder in the released layout; missing: {', '.join(missing)} "
            "(see ckpts/README.md)"
        )
    return folder


def pick_weights_file(folder: str, weights_file: str | None) -> str:
    """``None`` -> ``model.safetensors`` (Scone), falling back to ``ema.safetensors`` (BAGEL) if only that exists."""
    if weights_file is not None:
        path = os.path.join(folder, weights_file)
        if not os.path.isfile(path):
            raise CheckpointError(f"weights file not found: {path}")
        return path
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise CheckpointError(f"{folder} has neither {' nor '.join(WEIGHT_FILES)}")


def _peek_shape(path: str, key: str) -> list[int] | None:
    try:
        with safe_open(path, framework="pt") as f:
            if key in f.keys():
                return list(f.get_slice(key).get_shape())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights file {path}: {e}") from e
    return None


def build_config(folder: str, weights_path: str | None = None) -> BagelConfig:
    """Read the two JSON configs and apply upstream's inference-loader adjustments."""
    for name in CONFIG_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise CheckpointError(f"missing {name} in {folder}")
    llm = _read_config(LLMConfig, os.path.join(folder, "llm_config.json"))
    llm.qk_norm, llm.tie_word_embeddings, llm.layer_module = True, False, MOT_LAYER
    vit = _read_config(SiglipVisionConfig, os.path.join(folder, "vit_config.json"))
    # Upstream keeps the penultimate SigLIP layer: the file says 27 layers, 26 are built and stored.
    vit.num_hidden_layers -= 1
    max_latent = 64
    if weights_path is not None:
        shape = _peek_shape(weights_path, "latent_pos_embed.pos_embed")
        if shape is not None:
            side = int(round(shape[0] ** 0.5))
            if side * side != shape[0]:
                raise CheckpointError(
                    f"{weights_path}: latent_pos_embed.pos_embed has {shape[0]} rows, not a square"
                )
            max_latent = side
    from modeling.autoencoder import AutoEncoderParams

    # The real VAE geometry is read from ae.safetensors by the loader; this is a placeholder of the
    # right latent width until then.
    config = BagelConfig(llm=llm, vit=vit, vae=AutoEncoderParams(), max_latent_size=max_latent)
    scone_path = os.path.join(folder, SCONE_CONFIG_FILE)
    if os.path.isfile(scone_path):  # optional: bridge layers and inference defaults of a non-7B model
        try:
            with open(scone_path) as f:
                raw = json.load(f)
        except ValueError as e:
            raise CheckpointError(f"{scone_path} is not valid JSON: {e}") from e
        try:
            config.apply_scone_config(raw, scone_path)
        except (ValueError, TypeError) as e:
            raise CheckpointError(str(e)) from e  # the message names the file
    return config


def _read_config(cls, path: str):
    """``cls.from_json(path)`` with every failure (bad JSON, wrong fields) as a CheckpointError naming the file."""
    try:
        return cls.from_json(path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise CheckpointError(msg if path in msg else f"{path}: {msg}") from e


def latent_downsample(folder: str, config: BagelConfig) -> int:
    """Pixels per latent token side of the model in ``folder`` (VAE downsample x latent patch), the VAE's
    part read from the names in the ``ae.safetensors`` header (no tensor is read)."""
    path = os.path.join(folder, AE_FILE)
    try:
        with safe_open(path, framework="pt") as f:
            levels = {k.split(".")[2] for k in f.keys() if k.startswith("encoder.down.")}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read autoencoder checkpoint {path}: {e}") from e
    downsample = 2 ** (len(levels) - 1) if levels else config.vae.downsample
    return downsample * config.latent_patch_size


def max_output_side(folder: str, weights_file: str | None = None, config: BagelConfig | None = None) -> int:
    """The largest image side the model in ``folder`` can generate, read from its configs and the two
    safetensors headers: latent position table side x pixels per latent token. ``config``: the folder's
    ``build_config`` when the caller has it already."""
    config = config or build_config(folder, pick_weights_file(folder, weights_file))
    return config.max_latent_size * latent_downsample(folder, config)


def load_bagel_weights(
    model: Bagel, path: str, device, dtype: torch.dtype, quantize: str | None = None
) -> None:
    """Assign every tensor of ``path`` into the meta-built ``model``; strict with named errors.
    ``quantize`` ("int8" / "fp8"): the decoder blocks' linear weights are quantized one by one as they are
    read (modeling/weight_formats.py)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    to_quantize = quantized_keys(model, quantize) if quantize else set()
    try:
        f = safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights file {path}: {e}") from e
    with f:
        keys = set(f.keys())
        found = {k: f.get_slice(k).get_shape() for k in keys}
        check_state_keys(
            f"{path} does not match the model built from the configs", expected, found, RECOMPUTABLE
        )
        state = {}
        for k in keys:
            try:
                t = f.get_tensor(k)
            except Exception as e:  # truncated / corrupt data region
                raise CheckpointError(f"cannot read tensor {k} from {path}: {e}") from e
            t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            check_finite(k, t, path)
            state[k] = quantize_weight(t, quantize) if k in to_quantize else t
            del t
    absent = [k for k in RECOMPUTABLE if k in expected and k not in state]
    model.load_state_dict(state, strict=False, assign=True)
    for k in absent:
        log.info("%s not in %s: recomputing the fixed sin-cos table", k, path)
        mod = model.get_submodule(k.rsplit(".", 1)[0])
        mod.pos_embed = torch.nn.Parameter(
            torch.empty(mod.pos_embed.shape, device=device, dtype=dtype), False
        )
        mod.reset_table()
    freeze_fixed_tables(model)


def freeze_fixed_tables(model: Bagel) -> None:
    """The RECOMPUTABLE sin-cos position tables are constants: never trained (also on a meta-built model)."""
    names = dict(model.named_parameters())
    for name in RECOMPUTABLE:
        if name in names:
            names[name].requires_grad_(False)


def load_pretrained(
    path_or_repo: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights_file: str | None = None,
    vae_dtype: torch.dtype | None = None,
    weights: str | None = None,
) -> LoadedModel:
    """Load model + VAE + tokenizer from a released folder or hub id. ``vae_dtype`` defaults to fp32.
    ``weights``: None keeps ``dtype``; "bf16" / "fp16" / "fp32" replace it; "int8" / "fp8" quantize the
    decoder blocks' linear weights while loading and compute in ``dtype``."""
    device = torch.device(device)
    dtype, quantize = split_weights(weights, dtype)
    if quantize:
        check_supported(quantize, device)
    folder = check_model_folder(path_or_repo, weights_file)
    weights_path = pick_weights_file(folder, weights_file)
    tokenizer, special_ids, n_new = load_tokenizer(folder)
    vae = load_autoencoder(os.path.join(folder, AE_FILE), device=device, dtype=vae_dtype or torch.float32)
    config = build_config(folder, weights_path)
    config.vae = vae.params
    if len(tokenizer) > config.llm.vocab_size:
        raise CheckpointError(
            f"tokenizer has {len(tokenizer)} tokens but the model vocab is {config.llm.vocab_size} ({folder})"
        )
    with torch.device("meta"):
        model = Bagel(config)
    load_bagel_weights(model, weights_path, device, dtype, quantize)
    model.eval()
    log.info(
        "loaded %s (%s) on %s as %s%s",
        folder,
        os.path.basename(weights_path),
        device,
        dtype,
        f", {quantize} decoder weights" if quantize else "",
    )
    return LoadedModel(model, vae, tokenizer, special_ids, config, folder, weights_path)
