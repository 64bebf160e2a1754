"""YAML dataset mixes -> group datasets (docs/data.md).

One top-level key per group (a registry key: s2i, t2i_pretrain, unified_edit, vlm_sft)::

    s2i:
      dataset_names: [scone_single_candidate_refined, scone_multi_candidate]
      num_used_data: [22, 36]          # files (parquet) or lines (jsonl) per dataset, paired 1:1
      weight: 1                        # group sampling weight (default 0.0)
      is_mandatory: false              # one sample of this group opens every pack
      image_transform_args: {image_stride: 16, max_image_size: 1024, min_image_size: 512}
      vit_image_transform_args: {image_stride: 14, max_image_size: 518, min_image_size: 224}
      resume_data_status: true         # restore this group's position on resume
      dataset_info: {name: {data_dir: ..., parquet_info_path: ...}}   # optional per-run entries

Differences from upstream, on purpose: ``dataset_names`` and ``num_used_data`` of different lengths
are an error (upstream's ``zip`` silently dropped datasets — Scone's stage-2 YAML lost its whole
multi-candidate set that way); unknown keys are an error naming the accepted ones.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass

import yaml

from data.dataset_info import dataset_meta, registry_classes
from data.parquet_io import DataConfigError, load_parquet_info
from data.sharding import ShardedSource
from data.transforms import ImageTransform

logger = logging.getLogger(__name__)

# keys consumed here; everything else is forwarded to the dataset class (and checked against it)
_POPPED = {
    "dataset_names",
    "num_used_data",
    "weight",
    "is_mandatory",
    "image_transform_args",
    "vit_image_transform_args",
    "frame_sampler_args",
    "resume_data_status",
    "dataset_info",
}


@dataclass
class DataGroup:
    """One group of the mix, with its built dataset."""

    name: str
    dataset: ShardedSource
    weight: float
    is_mandatory: bool
    resume_data_status: bool


def load_data_config(config: str | dict) -> dict:
    """Read a YAML file (or copy a dict) describing the mix; basic structural validation."""
    if isinstance(config, str):
        try:
            with open(config, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError as e:
            raise DataConfigError(f"dataset config file does not exist: {config}") from e
        where = config
    else:
        data = copy.deepcopy(config)
        where = "<dict>"
    if not isinstance(data, dict) or not data:
        raise DataConfigError(f"{where}: expected a mapping of group name -> group settings")
    known = registry_classes()
    for group, args in data.items():
        if group not in known:
            raise DataConfigError(f"{where}: unknown dataset group {group!r}; known groups: {sorted(known)}")
        if not isinstance(args, dict):
            raise DataConfigError(f"{where}: group {group!r} must be a mapping")
        names, nums = args.get("dataset_names"), args.get("num_used_data")
        if not isinstance(names, list) or not names:
            raise DataConfigError(f"{where}: {group}.dataset_names must be a non-empty list")
        if not isinstance(nums, list):
            raise DataConfigError(f"{where}: {group}.num_used_data must be a list")
        if len(names) != len(nums):
            raise DataConfigError(
                f"{where}: {group} lists {len(names)} dataset_names {names} but {len(nums)} num_used_data "
                f"{nums}; they are paired one-to-one (upstream's zip silently dropped the unpaired datasets)"
            )
        for n in nums:
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise DataConfigError(
                    f"{where}: {group}.num_used_data entries must be positive ints, got {n!r}"
                )
        weight = args.get("weight", 0.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise DataConfigError(f"{where}: {group}.weight must be a number >= 0, got {weight!r}")
    return data


def build_groups(
    config: str | dict,
    tokenizer,
    *,
    rank: int,
    world_size: int,
    data_seed: int,
    data_root: str | None,
) -> list[DataGroup]:
    """Build every group dataset of the mix (in YAML order)."""
    data = load_data_config(config)
    classes = registry_classes()
    groups = []
    for group, raw in data.items():
        args = dict(raw)
        cls = classes[group]
        names = args.pop("dataset_names")
        nums = args.pop("num_used_data")
        weight = float(args.pop("weight", 0.0))
        is_mandatory = bool(args.pop("is_mandatory", False))
        resume = bool(args.pop("resume_data_status", True))
        overrides = args.pop("dataset_info", None) or {}
        kwargs: dict = {"dataset_name": group, "tokenizer": tokenizer, "num_used_data": nums}
        if "image_transform_args" in args:
            kwargs["transform"] = ImageTransform(**args.pop("image_transform_args"))
        if "vit_image_transform_args" in args:
            kwargs["vit_transform"] = ImageTransform(**args.pop("vit_image_transform_args"))
        if "frame_sampler_args" in args:
            args.pop("frame_sampler_args")
            logger.info("%s: frame_sampler_args ignored (video samples are not supported)", group)

        metas = [dataset_meta(group, name, data_root, overrides) for name in names]
        for name in names:
            logger.info("preparing dataset %s/%s", group, name)
        kwargs["data_dir_list"] = [_require(m, "data_dir", group, n) for m, n in zip(metas, names)]
        params = inspect.signature(cls.__init__).parameters
        if "parquet_info" in params:
            info_paths = [_require(m, "parquet_info_path", group, n) for m, n in zip(metas, names)]
            kwargs["parquet_info"] = load_parquet_info(info_paths)
        if "jsonl_path_list" in params:
            kwargs["jsonl_path_list"] = [_require(m, "jsonl_path", group, n) for m, n in zip(metas, names)]

        unknown = set(args) - set(params)
        if unknown:
            accepted = sorted(
                _POPPED | (set(params) - {"self", "rank", "world_size", "data_seed"} - set(kwargs))
            )
            raise DataConfigError(
                f"group {group!r}: unknown keys {sorted(unknown)}; accepted keys: {accepted}"
            )
        kwargs.update(args)
        missing = [
            p.name
            for p in params.values()
            if p.name != "self" and p.default is inspect.Parameter.empty and p.name not in kwargs
        ]
        if missing:
            raise DataConfigError(f"group {group!r} needs {missing} (e.g. image_transform_args)")
        dataset = cls(**kwargs, rank=rank, world_size=world_size, data_seed=data_seed)
        groups.append(DataGroup(group, dataset, weight, is_mandatory, resume))
    if sum(g.weight for g in groups) <= 0:
        raise DataConfigError("the sum of group weights must be > 0")
    return groups


def _require(meta: dict, key: str, group: str, name: str) -> str:
    if key not in meta:
        raise DataConfigError(f"dataset {group}/{name} has no {key!r} in its registry entry")
    return meta[key]


@dataclass(frozen=True)
class ModelGeometry:
    """What a data mix must fit: the model's largest VAE image side (latent position table side x pixels
    per latent token) and largest ViT image side (patch table side x patch size, unless positions are
    interpolated)."""

    max_latent_size: int = 32
    vae_image_downsample: int = 16
    max_num_patch_per_side: int = 70
    vit_patch_size: int = 14
    interpolate_pos: bool = False

    @classmethod
    def of(cls, config, latent_downsample: int | None = None) -> ModelGeometry:
        """From a ``modeling.config.BagelConfig``; ``latent_downsample``: pixels per latent token when known
        from the VAE file itself (``modeling.checkpoint.latent_downsample``), else the config's."""
        return cls(
            config.max_latent_size,
            latent_downsample or config.latent_downsample,
            config.vit_max_num_patch_per_side,
            config.vit.patch_size,
            config.interpolate_pos,
        )

    @property
    def max_vae_side(self) -> int:
        return self.max_latent_size * self.vae_image_downsample

    @property
    def max_vit_side(self) -> int:
        return self.max_num_patch_per_side * self.vit_patch_size


def check_groups(groups: list[DataGroup], geometry: ModelGeometry | None, num_workers: int) -> None:
    """The checks a mix passes before any worker starts, each a DataConfigError that says what to change:
    its image sizes fit the model, every rank's DataLoader worker gets at least one unit of data, and the
    selected parquet files have the columns their dataset reads."""
    import pyarrow.parquet as pq

    for g in groups:
        ds = g.dataset
        builder = getattr(ds, "builder", ds)  # the transforms live on the sample builder
        if geometry is not None:
            vit_limit = None if geometry.interpolate_pos else geometry.max_vit_side  # interpolated: any size
            for key, transform, limit, what in (
                ("image_transform_args", getattr(builder, "transform", None), geometry.max_vae_side, "VAE"),
                ("vit_image_transform_args", getattr(builder, "vit_transform", None), vit_limit, "ViT"),
            ):
                if transform is None or limit is None:
                    continue
                if transform.max_image_size > limit:
                    raise DataConfigError(
                        f"group {g.name!r}: {key}.max_image_size {transform.max_image_size} exceeds the "
                        f"model's largest {what} image side, {limit} px; lower it in the data YAML "
                        f"(scripts/make_s2i_parquet.py --model_path MODEL writes sizes that fit)"
                    )
                if transform.min_image_size > transform.max_image_size:
                    raise DataConfigError(
                        f"group {g.name!r}: {key}.min_image_size {transform.min_image_size} is larger than "
                        f"its max_image_size {transform.max_image_size}"
                    )
        workers, per_rank = max(num_workers, 1), len(ds.rank_units)
        if per_rank < workers:
            fix = (
                f"Use --num_workers {per_rank} (NUM_WORKERS for scripts/train_lora.sh), " if per_rank else ""
            )
            raise DataConfigError(
                f"group {g.name!r}: {len(ds.units)} unit(s) of data (parquet row groups or files) for "
                f"{ds.world_size} rank(s) x {workers} DataLoader worker(s); every worker needs at least one. "
                f"{fix}fewer GPUs, or more row groups (scripts/make_s2i_parquet.py --rows_per_group N with N "
                "smaller)"
            )
        columns = getattr(ds, "columns", None)
        if columns:
            for path in sorted({u[0] if isinstance(u, tuple) else u for u in ds.units}):
                try:
                    names = set(pq.read_schema(path).names)
                except Exception as e:  # not a parquet file, truncated footer
                    raise DataConfigError(f"group {g.name!r}: cannot read parquet file {path}: {e}") from e
                absent = [c for c in columns if c not in names]
                if absent:
                    raise DataConfigError(
                        f"group {g.name!r}: {path} has no column {', '.join(map(repr, absent))} "
                        f"(it has {sorted(names)}); this dataset reads {list(columns)}"
                    )


def image_views(groups: list[DataGroup]) -> dict[str, tuple[int, int, int]]:
    """The image views a mix trains at, as ``scone_config.json``'s inference keys: ``"vae_transform"`` and
    ``"vit_transform"`` -> (max side, min side, stride), each only when every group that feeds that side
    agrees (a model trained on one view should be run at it; mixed views name none)."""
    views: dict[str, set] = {"vae_transform": set(), "vit_transform": set()}
    for g in groups:
        ds = g.dataset
        builder = getattr(ds, "builder", ds)  # the transforms live on the sample builder
        # an understanding-only group's one transform feeds the ViT
        sides = (
            {"vit_transform": ds.transform}
            if getattr(ds, "understanding_only", False)
            else {"vae_transform": getattr(builder, "transform", None)}
        )
        sides.setdefault("vit_transform", getattr(builder, "vit_transform", None))
        for side, t in sides.items():
            if t is not None:
                views[side].add((t.max_image_size, t.min_image_size, t.stride))
    return {side: next(iter(v)) for side, v in views.items() if len(v) == 1}
