"""Training configuration: one dataclass per section, each component built from its own section.

The command line of ``train/pretrain.py`` is generated from these dataclasses (one ``--flag`` per field,
grouped by section, upstream's names), and a YAML/JSON file may give any of them (``--config FILE``:
sections as below, or flat names); flags on the command line override the file. Every step folder gets
the resolved configuration as ``train_config.json``, which ``--config`` reads back into the same run.

Every option accepts dashes and underscores (``--resume-model-only`` = ``--resume_model_only``), booleans
accept upstream's ``--flag True`` / ``--flag False`` as well as a bare ``--flag``, and unique prefixes
work (``--num_worker 3``) as with upstream's HfArgumentParser.
"""

from __future__ import annotations

import argparse
import json
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

CONFIG_FILE = "train_config.json"  # the resolved configuration, in every step folder
CHECKPOINT = "the checkpoint's value"  # an upstream flag that must equal what the loaded model has
IGNORED = "anything (accepted, unused)"


def option(
    default: Any = MISSING, help: str = "", *, choices=None, must_equal: Any = MISSING, checkpoint=None, **kw
):
    """A dataclass field that is also a ``--flag``: its help, its choices and, for upstream-only flags,
    the value it must have (``must_equal``; ``IGNORED``: anything) or, with ``checkpoint`` (a function of the
    loaded ``BagelConfig``), the checkpoint's own value."""
    meta = {"help": help, "choices": choices}
    if checkpoint is not None:
        meta.update(must_equal=CHECKPOINT, checkpoint=checkpoint)
    elif must_equal is not MISSING:
        meta["must_equal"] = must_equal
    if isinstance(default, dict):
        return field(default_factory=lambda d=default: dict(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelSection:
    """model: the released-layout folder a run starts from"""

    model_path: str | None = option(
        None, "released-layout folder: llm_config.json, vit_config.json, ae.safetensors, tokenizer, weights"
    )


@dataclass
class DataSection:
    """data: the YAML mix (data/configs/*.yaml) or synthetic packs, packing and conditioning dropout"""

    dataset_config_file: str | None = option(None, "YAML of dataset groups (data/configs/*.yaml)")
    data_root: str | None = option(
        None, "root that relative data_dir / parquet_info paths are resolved against"
    )
    synthetic_data: bool = option(False, "random s2i-shaped packs instead of files (tests, benchmarks)")
    synthetic_spec: dict = option(
        {}, 'JSON overrides of train.synthetic.SyntheticSpec, e.g. \'{"text_loss": true, "num_distinct": 2}\''
    )
    prefetch_factor: int = option(2)
    num_workers: int = option(4)
    max_num_tokens_per_sample: int = option(16384)
    max_num_tokens: int = option(36864)
    prefer_buffer_before: int = option(16384)
    max_buffer_size: int = option(50)
    expected_num_tokens: int = option(32768)
    data_seed: int = option(42)
    text_cond_dropout_prob: float = option(0.1)
    vae_cond_dropout_prob: float = option(0.3)
    vit_cond_dropout_prob: float = option(0.3)

    def validate(self) -> None:
        if not self.synthetic_data and not self.dataset_config_file:
            raise SystemExit("give --dataset_config_file (or --synthetic_data for a smoke run)")


@dataclass
class OptimizerSection:
    """optimizer and schedule: AdamW, warm-up then constant or cosine"""

    lr: float = option(1e-4)
    min_lr: float = option(1e-7)
    beta1: float = option(0.9)
    beta2: float = option(0.95)
    eps: float = option(1e-15)
    lr_scheduler: str = option("constant", choices=["constant", "cosine"])
    warmup_steps: int = option(2000)
    total_steps: int = option(100_000)
    max_grad_norm: float = option(1.0)
    gradient_accumulation_steps: int = option(1)

    def validate(self) -> None:
        if self.gradient_accumulation_steps < 1:
            raise SystemExit("--gradient_accumulation_steps must be >= 1")


@dataclass
class ObjectiveSection:
    """objective: losses, the understanding bridge, seeds and the non-finite guards"""

    global_seed: int = option(4396)
    timestep_shift: float = option(1.0)
    mse_weight: float = option(1.0)
    ce_weight: float = option(1.0)
    ce_loss_reweighting: bool = option(False)
    use_semantic_mask: bool = option(False, "Scone understanding bridge (stage II step 1)")
    max_nonfinite_steps: int = option(20, "stop after this many consecutive non-finite steps")
    check_finite_every: int = option(
        100, "check that every weight is finite every N steps (and before every save); stop if not"
    )

    def validate(self) -> None:
        if self.check_finite_every < 1:
            raise SystemExit("--check_finite_every must be >= 1")


@dataclass
class FreezeSection:
    """freezing: upstream's parameter sets (train/freeze.py)"""

    freeze_vae: bool = option(True)
    freeze_vit: bool = option(False)
    freeze_llm: bool = option(False)
    freeze_llm_und: bool = option(False)
    freeze_llm_gen: bool = option(False)
    freeze_mlp_und: bool = option(False)
    freeze_mlp_gen: bool = option(False)


@dataclass
class VaeCacheSection:
    """VAE posterior cache: train/vae_cache.py"""

    vae_cache_gb: float = option(
        0.0,
        "keep the frozen VAE's posteriors of up to this many GB in host memory; 0 = off, as upstream. Worth it "
        "when the encoder is a large part of a step (tiny models, CPU)",
    )
    vae_cache_file: str = option(
        "",
        "load the posterior cache from / save it to this safetensors file (per rank: .rank<r> added when "
        "there are several), so later stages on the same images start warm; needs --vae_cache_gb",
    )

    def validate(self, freeze_vae: bool) -> None:
        if self.vae_cache_gb < 0 or (self.vae_cache_gb > 0 and not freeze_vae):
            raise SystemExit("--vae_cache_gb needs a frozen VAE (--freeze_vae True) and a value >= 0")
        if self.vae_cache_file and self.vae_cache_gb <= 0:
            raise SystemExit("--vae_cache_file needs --vae_cache_gb > 0")


@dataclass
class LoraSection:
    """LoRA: adapters on a frozen base (modeling/lora.py, train/trained_weights.py)"""

    lora_rank: int = option(0, "> 0: train LoRA adapters of this rank; the base stays frozen")
    lora_alpha: float | None = option(None, "LoRA alpha (scale alpha/rank; default: the rank)")
    lora_dropout: float = option(0.0)
    lora_targets: str = option(
        "gen:attn,mlp;und:attn",
        "experts and module groups to adapt: 'gen:attn,mlp;und:attn' (default; why: modeling/lora.py)",
    )
    lora_base_weights: str = option(
        "dtype",
        "the frozen base under LoRA: dtype = in the compute dtype (bf16 on a GPU); int8 = the decoder "
        "blocks' linears in weight-only int8 (QLoRA-style, half the memory of bf16; one device)",
        choices=["dtype", "int8"],
    )

    def validate(self) -> None:
        if self.lora_rank < 0 or not 0 <= self.lora_dropout < 1:
            raise SystemExit("--lora_rank must be >= 0 and --lora_dropout in [0, 1)")
        if not self.lora_rank:
            if self.lora_base_weights != "dtype":
                raise SystemExit("--lora_base_weights needs --lora_rank (a trained base cannot be int8)")
            return
        from modeling.lora import parse_targets

        try:
            parse_targets(self.lora_targets)
        except ValueError as e:
            raise SystemExit(f"--lora_targets: {e}") from None


@dataclass
class EmaSection:
    """EMA: an exponential moving average of the trained weights"""

    ema: float = option(0.0, "EMA decay (e.g. 0.9999 like BAGEL); 0 = off (Scone)")


@dataclass
class ParallelSection:
    """parallelism and precision: device mesh, FSDP2, compute and reduction dtypes"""

    sharding_strategy: str = option("HYBRID_SHARD", choices=["FULL_SHARD", "HYBRID_SHARD", "NO_SHARD"])
    num_replicate: int = option(1)
    num_shard: int | None = option(None, "default: the world size (upstream: 8)")
    cpu_offload: bool = option(False)
    load_weights_on_rank0: bool = option(
        True,
        "with several ranks: rank 0 reads the weights and broadcasts them, the others build on the meta "
        "device (host RAM per rank: a shard, not the model). False: every rank reads the whole file",
    )
    activation_checkpointing: bool = option(True)
    device: str = option(
        "auto", "auto | cpu | cuda (torchrun: cuda:<local rank>)", choices=["auto", "cpu", "cuda"]
    )
    dtype: str = option(
        "auto",
        "compute dtype; master weights and saved checkpoints stay fp32. auto = bf16 on CUDA, fp32 on CPU",
        choices=["auto", "bf16", "fp32"],
    )
    reduce_dtype: str = option("fp32", "gradient reduction dtype (upstream bf16)", choices=["fp32", "bf16"])
    upstream_compat: bool = option(
        False, "reproduce upstream numerics where they differ (bf16 gradient reduction)"
    )

    def validate(self) -> None:
        if self.upstream_compat:
            self.reduce_dtype = "bf16"


@dataclass
class CheckpointSection:
    """checkpoints: where step folders go, what a run starts from"""

    checkpoint_dir: str = option("results/checkpoints")
    save_every: int = option(2000)
    auto_resume: bool = option(False, "continue from the newest step folder in --checkpoint_dir, if any")
    resume_from: str | None = option(None, "a step folder (or a released-layout folder) to start from")
    resume_model_only: bool = option(
        False, "take only the weights of --resume_from (fresh optimizer and data)"
    )
    finetune_from_ema: bool = option(False, "take the EMA weights of --resume_from")

    def validate(self) -> None:
        if self.save_every < 1:
            raise SystemExit("--save_every must be >= 1")


@dataclass
class MetricsSection:
    """metrics and logging: metrics.jsonl, train.log, optional W&B"""

    results_dir: str = option("results", "logs and metrics.jsonl")
    log_every: int = option(10)
    peak_device_tflops: float = option(0.0, "per-device peak for MFU; 0 = guess from the GPU name")
    wandb_project: str | None = option(None, "enable W&B logging into this project (off by default)")
    wandb_name: str | None = option(None)
    wandb_runid: str | None = option(None)
    wandb_resume: str = option("allow")
    wandb_offline: bool = option(False)

    def validate(self) -> None:
        if self.log_every < 1:
            raise SystemExit("--log_every must be >= 1")


@dataclass
class UpstreamSection:
    """upstream compatibility: flags of upstream's train/pretrain_unified_navit.py that this trainer accepts
    only with the value every released run used (or that the checkpoint fixes); see docs/training.md"""

    finetune_from_hf: bool = option(True, "build from --model_path (the only supported way)", must_equal=True)
    llm_path: str | None = option(
        None, "separate HF LLM folder: not supported, use --model_path", must_equal=None
    )
    vae_path: str | None = option(None, "separate VAE file: not supported, use --model_path", must_equal=None)
    vit_path: str | None = option(
        None, "separate SigLIP folder: not supported, use --model_path", must_equal=None
    )
    layer_module: str = option("Qwen2MoTDecoderLayer", must_equal="Qwen2MoTDecoderLayer")
    llm_qk_norm: bool = option(True, must_equal=True)
    tie_word_embeddings: bool = option(False, must_equal=False)
    vit_select_layer: int = option(-2, must_equal=-2)
    vit_rope: bool = option(False, must_equal=False)
    use_flex: bool = option(False, "FlexAttention path: not supported", must_equal=False)
    visual_gen: bool = option(True, must_equal=True)
    visual_und: bool = option(True, must_equal=True)
    freeze_und: bool = option(
        False, "detaches und-path activations; every released run trains with False", must_equal=False
    )
    copy_init_moe: bool = option(
        True, "only matters for random init; weights are always loaded", must_equal=IGNORED
    )
    backward_prefetch: str = option(
        "BACKWARD_PRE", "FSDP1 setting; FSDP2 prefetches on its own", must_equal=IGNORED
    )
    # geometry: the value the loaded checkpoint's own config holds
    max_latent_size: int | None = option(
        None, "64 for released checkpoints", checkpoint=lambda c: c.max_latent_size
    )
    latent_patch_size: int = option(2, checkpoint=lambda c: c.latent_patch_size)
    vit_patch_size: int = option(14, checkpoint=lambda c: c.vit.patch_size)
    vit_max_num_patch_per_side: int = option(70, checkpoint=lambda c: c.vit_max_num_patch_per_side)
    connector_act: str = option("gelu_pytorch_tanh", checkpoint=lambda c: c.connector_act)
    interpolate_pos: bool = option(False, checkpoint=lambda c: c.interpolate_pos)

    def validate(self) -> None:
        if not self.finetune_from_hf or self.llm_path or self.vae_path or self.vit_path:
            raise SystemExit(
                "building from separate --llm_path/--vit_path/--vae_path checkpoints is not supported; pass a "
                "released-layout folder as --model_path (with --finetune_from_hf True)"
            )
        for f in fields(self):
            want = f.metadata.get("must_equal", IGNORED)
            got = getattr(self, f.name)
            if want not in (IGNORED, CHECKPOINT) and got != want:
                raise SystemExit(f"--{f.name} {got} is not supported (released checkpoints need {want})")

    def check_against(self, config, model_path: str) -> None:
        """Geometry flags must agree with the loaded checkpoint's ``BagelConfig`` (they cannot change a
        trained model)."""
        for f in fields(self):
            if "checkpoint" not in f.metadata:
                continue
            want, have = getattr(self, f.name), f.metadata["checkpoint"](config)
            if want is not None and want != have:
                raise SystemExit(f"--{f.name} {want} does not match the checkpoint in {model_path} ({have})")


@dataclass
class TrainConfig:
    """Everything one training run reads, by section."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    vae_cache: VaeCacheSection = field(default_factory=VaeCacheSection)
    lora: LoraSection = field(default_factory=LoraSection)
    ema: EmaSection = field(default_factory=EmaSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {flag name: value}}``: what ``train_config.json`` holds."""
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """From ``{flag name: value}`` (an argparse namespace's ``vars``); names not given keep defaults."""
        return cls(
            **{
                s.name: s.type_cls(**{f.name: values[f.name] for f in fields(s.type_cls) if f.name in values})
                for s in _sections()
            }
        )

    def validate(self) -> None:
        """Reject values and combinations the trainer does not support, naming the option."""
        if self.model.model_path is None:
            raise SystemExit("--model_path is required (a released-layout folder)")
        self.upstream.validate()
        self.data.validate()
        self.optimizer.validate()
        self.objective.validate()
        self.vae_cache.validate(self.freeze.freeze_vae)
        self.lora.validate()
        self.parallel.validate()
        self.checkpoint.validate()
        self.metrics.validate()
        if self.lora.lora_rank and self.checkpoint.finetune_from_ema:
            raise SystemExit("--finetune_from_ema with --lora_rank: the base weights are --model_path's")


@dataclass(frozen=True)
class _Section:
    name: str
    type_cls: type


def _sections() -> list[_Section]:
    hints = typing.get_type_hints(TrainConfig)
    return [_Section(f.name, hints[f.name]) for f in fields(TrainConfig)]


def _field_index() -> dict[str, tuple[str, Any, type]]:
    """``{flag name: (section name, dataclass field, value type)}``."""
    out = {}
    for s in _sections():
        hints = typing.get_type_hints(s.type_cls)
        for f in fields(s.type_cls):
            out[f.name] = (s.name, f, _value_type(hints[f.name]))
    return out


def _value_type(hint) -> type:
    """``int | None`` -> int; plain types unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "t", "yes", "y"):
        return True
    if s in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {v!r}")


def _parser_type(kind: type):
    return {bool: str2bool, dict: json.loads}.get(kind, kind)


def build_parser() -> argparse.ArgumentParser:
    """``train/pretrain.py``'s command line: one group per section, one ``--flag`` per field."""
    p = argparse.ArgumentParser(
        prog="python -m train.pretrain",
        description="Scone / BAGEL unified training (FSDP2). Launch with torchrun, or plainly for one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"YAML or JSON file of these options, by section (as {CONFIG_FILE} in every step folder) or flat; "
        "flags given here override it",
    )
    index = _field_index()
    for s in _sections():
        title, _, description = (s.type_cls.__doc__ or s.name).partition(":")
        g = p.add_argument_group(title.strip(), description.strip() or None)
        for f in fields(s.type_cls):
            kind = index[f.name][2]
            names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            kw: dict[str, Any] = {
                "dest": f.name,
                "type": _parser_type(kind),
                "help": f.metadata["help"] or None,
            }
            kw["default"] = f.default if f.default is not MISSING else f.default_factory()
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            if kind is bool:
                kw.update(nargs="?", const=True)
            if "must_equal" in f.metadata:
                must = f.metadata["must_equal"]
                note = must if must in (CHECKPOINT, IGNORED) else repr(must)
                kw["help"] = f"{kw['help'] + '; ' if kw['help'] else ''}must be: {note}"
            g.add_argument(*names, **kw)
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """``{flag name: value}`` from a YAML/JSON file with sections (``{"optimizer": {"lr": ...}}``, as
    ``train_config.json`` is written) or flat names. Unknown names, sections and badly typed values are
    errors naming the file."""
    import yaml

    try:
        with open(path) as f:
            text = f.read()
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SystemExit(f"--config {path}: {e}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"--config {path}: expected a mapping of sections or option names")
    index = _field_index()
    sections = {s.name for s in _sections()}
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in sections and isinstance(value, dict):  # ("ema" is a section and an option)
            for name, v in value.items():
                if name not in index or index[name][0] != key:
                    raise SystemExit(f"--config {path}: section {key!r} has no option {name!r}")
                flat[name] = v
        elif key in index:
            flat[key] = value
        else:
            raise SystemExit(f"--config {path}: unknown option or section {key!r}")
    return {name: _coerce(path, name, v, index[name][2]) for name, v in flat.items()}


def _coerce(path: str, name: str, value: Any, kind: type) -> Any:
    if value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return _parser_type(kind)(value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise SystemExit(f"--config {path}: {name}: {e}") from None
    raise SystemExit(f"--config {path}: {name} must be {kind.__name__}, got {value!r}")


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < ``--config FILE`` < command-line flags; validated."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        if not os.path.isfile(first.config):
            raise SystemExit(f"--config {first.config}: no such file")
        parser.set_defaults(**read_config_file(first.config))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    cfg = TrainConfig.from_flat(values)
    cfg.validate()
    return cfg
