"""Plain-dataclass configs for the BAGEL/Scone model.

``LLMConfig`` mirrors the fields of ``llm_config.json`` that the model uses; ``BagelConfig`` is the
wrapper config that upstream builds in code (it is stored in no file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from modeling.sequence import SequenceGeometry

MOT_LAYER = "Qwen2MoTDecoderLayer"
# Optional file of a model folder (released checkpoints have none; the tiny ShapeWorld model has one):
# {"semantic_layer": int, "semantic_mask_layers": [lo, hi], "semantic_threshold": float,
#  "inference": {generation defaults: vae_transform, vit_transform, height, width, num_timesteps, ...},
#  "generation_only": true when the understanding side was never trained to answer}
SCONE_CONFIG_FILE = "scone_config.json"
# The references' preprocessing, ImageTransform(max side, min side, stride) of the VAE and ViT views, at
# which a folder without its own "inference" entries runs (upstream's).
UPSTREAM_TRANSFORMS: dict = {"vae_transform": (1024, 512, 16), "vit_transform": (980, 224, 14)}


def run_transforms(inference: dict) -> dict[str, tuple[int, int, int]]:
    """The views a folder runs at: its ``scone_config.json`` "inference" entries, else upstream's."""
    return {k: tuple(inference.get(k, v)) for k, v in UPSTREAM_TRANSFORMS.items()}


SCONE_CONFIG_KEYS = (
    "semantic_layer",
    "semantic_mask_layers",
    "semantic_threshold",
    "inference",
    "generation_only",
)


@dataclass
class LLMConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    rope_scaling: dict | None = None
    # fork fields (set by the loaders, never read from the file in upstream inference)
    qk_norm: bool = True
    layer_module: str = MOT_LAYER

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str) -> LLMConfig:
        with open(path) as f:
            raw = json.load(f)
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        if cfg.hidden_act != "silu":
            raise ValueError(f"{path}: hidden_act={cfg.hidden_act!r} is not supported (Qwen2 uses 'silu')")
        if cfg.rope_scaling not in (None, {}) and cfg.rope_scaling.get(
            "type", cfg.rope_scaling.get("rope_type")
        ) not in (None, "default"):
            raise ValueError(
                f"{path}: rope_scaling={cfg.rope_scaling} is not supported (released checkpoints use none)"
            )
        return cfg


@dataclass
class BagelConfig:
    """Wrapper config; defaults are those the released-checkpoint loaders use (not the class defaults)."""

    llm: LLMConfig
    vit: object  # modeling.siglip.SiglipVisionConfig
    vae: object  # modeling.autoencoder.AutoEncoderParams
    visual_gen: bool = True
    visual_und: bool = True
    latent_patch_size: int = 2
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    interpolate_pos: bool = False
    timestep_shift: float = 1.0  # training forward only; inference passes its own shift
    # Scone's understanding bridge (training, stage II step 1). Defaults are upstream's constants.
    semantic_layer: int = 8  # similarity from the output of this decoder layer (0-based)
    semantic_mask_layers: tuple[int, int] = (9, 16)  # inclusive range of layers that receive the mask
    semantic_threshold: float = 0.88
    extra: dict = field(
        default_factory=dict
    )  # "inference": per-model generation defaults (scone_config.json)

    def apply_scone_config(self, raw: dict, where: str = SCONE_CONFIG_FILE) -> None:
        """Take the bridge layers and inference defaults from a ``scone_config.json`` dict (validated)."""
        unknown = sorted(set(raw) - set(SCONE_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} (known: {list(SCONE_CONFIG_KEYS)})")
        n = self.llm.num_hidden_layers
        # an inference-only file (as training writes for a trained image view) keeps upstream's layers
        if "semantic_layer" in raw or "semantic_mask_layers" in raw:
            layer = int(raw.get("semantic_layer", self.semantic_layer))
            lo, hi = (int(v) for v in raw.get("semantic_mask_layers", self.semantic_mask_layers))
            if not (0 <= layer < lo <= hi < n):
                raise ValueError(
                    f"{where}: need 0 <= semantic_layer < mask layers lo <= hi < {n} layers, "
                    f"got semantic_layer={layer}, semantic_mask_layers=[{lo}, {hi}]"
                )
            self.semantic_layer, self.semantic_mask_layers = layer, (lo, hi)
        self.semantic_threshold = float(raw.get("semantic_threshold", self.semantic_threshold))
        if "inference" in raw:
            if not isinstance(raw["inference"], dict):
                raise ValueError(f"{where}: 'inference' must be an object")
            self.extra["inference"] = dict(raw["inference"])
        if "generation_only" in raw:  # the model was never trained to answer questions
            if not isinstance(raw["generation_only"], bool):
                raise ValueError(f"{where}: 'generation_only' must be true or false")
            self.extra["generation_only"] = raw["generation_only"]

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token side (8 * 2 = 16)."""
        return self.vae.downsample * self.latent_patch_size

    @property
    def latent_channel(self) -> int:
        return self.vae.z_channels

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.vae.z_channels

    def sequence_geometry(self) -> SequenceGeometry:
        """Patch sizes and position-table sides the sequence builder needs (``modeling.sequence``)."""
        return SequenceGeometry(
            vit_patch_size=self.vit.patch_size,
            vit_max_patch_per_side=self.vit_max_num_patch_per_side,
            latent_downsample=self.latent_downsample,
            max_latent_size=self.max_latent_size,
            interpolate_pos=self.interpolate_pos,
        )
