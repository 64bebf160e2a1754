"""Dataset registry: which class reads each group, and where each named dataset lives
(docs/data.md).

Paths are **relative to a data root** chosen at run time (``--data_root`` / ``data_root=`` argument,
else the ``SCONE_DATA_ROOT`` environment variable), so nothing here needs editing. Absolute paths are
used as they are. A YAML group may also carry a ``dataset_info:`` mapping that adds or overrides
entries for that run (see docs/data.md).

Layout expected under the data root for the released data::

    Scone-S2I-57K/parquet_data/{scone_single_candidate_base,scone_single_candidate_refined,scone_multi_candidate}/*.parquet
    Scone-S2I-57K/parquet_info/{...same names...}.json      (keys = full parquet paths, see parquet_io.py)
    bagel_example/{t2i, editing/..., vlm/...}               (BAGEL's example data)
    scone_tiny/...                                          (written by scripts/make_tiny_data.py)
    shapeworld/...                                          (python -m data.synthetic.make_shapeworld)
"""

from __future__ import annotations

import copy
import os

from data.parquet_io import DataConfigError

DATA_ROOT_ENV = "SCONE_DATA_ROOT"

_S2I = "Scone-S2I-57K"


def _s2i_entry(name: str, num_files: int, num_total_samples: int) -> dict:
    return {
        "data_dir": f"{_S2I}/parquet_data/{name}",
        "parquet_info_path": f"{_S2I}/parquet_info/{name}.json",
        "num_files": num_files,  # informational
        "num_total_samples": num_total_samples,  # informational
    }


DATASET_INFO: dict[str, dict[str, dict]] = {
    "s2i": {
        "scone_single_candidate_base": _s2i_entry("scone_single_candidate_base", 70, 70000),
        "scone_single_candidate_refined": _s2i_entry("scone_single_candidate_refined", 22, 21728),
        "scone_multi_candidate": _s2i_entry("scone_multi_candidate", 36, 35023),
        # scripts/make_tiny_data.py
        "tiny_single_candidate": {
            "data_dir": "scone_tiny/parquet_data/tiny_single_candidate",
            "parquet_info_path": "scone_tiny/parquet_info/tiny_single_candidate.json",
        },
        "tiny_multi_candidate": {
            "data_dir": "scone_tiny/parquet_data/tiny_multi_candidate",
            "parquet_info_path": "scone_tiny/parquet_info/tiny_multi_candidate.json",
        },
        # python -m data.synthetic.make_shapeworld --out <data_root>/shapeworld (scripts/tiny/)
        "shapeworld_single_candidate": {
            "data_dir": "shapeworld/parquet_data/shapeworld_single_candidate",
            "parquet_info_path": "shapeworld/parquet_info/shapeworld_single_candidate.json",
        },
        "shapeworld_multi_candidate": {
            "data_dir": "shapeworld/parquet_data/shapeworld_multi_candidate",
            "parquet_info_path": "shapeworld/parquet_info/shapeworld_multi_candidate.json",
        },
    },
    # s2i rows with a think-mode plan column (data/s2i_dataset.py: S2IThinkDataset)
    "s2i_think": {
        # python -m data.synthetic.make_shapeworld --num_think N
        "shapeworld_think": {
            "data_dir": "shapeworld/parquet_data/shapeworld_think",
            "parquet_info_path": "shapeworld/parquet_info/shapeworld_think.json",
        },
    },
    "t2i_pretrain": {
        "t2i": {"data_dir": "bagel_example/t2i", "num_files": 10, "num_total_samples": 1000},
    },
    "unified_edit": {
        "seedxedit_multi": {
            "data_dir": "bagel_example/editing/seedxedit_multi",
            "parquet_info_path": "bagel_example/editing/parquet_info/seedxedit_multi_nas.json",
            "num_files": 10,
            "num_total_samples": 1000,
        },
    },
    "vlm_sft": {
        "llava_ov": {
            "data_dir": "bagel_example/vlm/images",
            "jsonl_path": "bagel_example/vlm/llava_ov_si.jsonl",
            "num_total_samples": 1000,
        },
        # scripts/make_tiny_data.py
        "tiny_vlm": {"data_dir": "scone_tiny/vlm/images", "jsonl_path": "scone_tiny/vlm/tiny_vlm.jsonl"},
        # python -m data.synthetic.make_shapeworld --num_vlm N (captions of training references)
        "shapeworld_vlm": {
            "data_dir": "shapeworld/vlm/images",
            "jsonl_path": "shapeworld/vlm/shapeworld_vlm.jsonl",
        },
        # make_shapeworld --num_vqa N / --num_vqa_eval M (questions with known answers, data/synthetic/vqa.py)
        "shapeworld_vqa": {
            "data_dir": "shapeworld/vqa/images",
            "jsonl_path": "shapeworld/vqa/shapeworld_vqa.jsonl",
        },
        "shapeworld_vqa_eval": {
            "data_dir": "shapeworld/vqa_eval/images",
            "jsonl_path": "shapeworld/vqa_eval/shapeworld_vqa_eval.jsonl",
        },
    },
}

PATH_KEYS = ("data_dir", "parquet_info_path", "jsonl_path", "json_dir")


def registry_classes() -> dict[str, type]:
    """Group key -> dataset class (imported lazily to keep this module import-light)."""
    from data.edit_dataset import UnifiedEditDataset
    from data.s2i_dataset import S2IDataset, S2IThinkDataset
    from data.t2i_dataset import T2IDataset
    from data.vlm_dataset import VlmSftDataset

    return {
        "t2i_pretrain": T2IDataset,
        "vlm_sft": VlmSftDataset,
        "unified_edit": UnifiedEditDataset,
        "s2i": S2IDataset,
        "s2i_think": S2IThinkDataset,
    }


def data_root_from_env(data_root: str | None = None) -> str | None:
    """Explicit ``data_root`` wins, else ``$SCONE_DATA_ROOT``, else None."""
    return data_root if data_root else os.environ.get(DATA_ROOT_ENV) or None


def resolve_path(path: str, data_root: str | None, what: str) -> str:
    if os.path.isabs(path):
        return path
    if not data_root:
        raise DataConfigError(
            f"{what}: relative path {path!r} needs a data root: pass --data_root or set {DATA_ROOT_ENV}"
        )
    return os.path.join(data_root, path)


def dataset_meta(
    group: str, name: str, data_root: str | None, overrides: dict[str, dict] | None = None
) -> dict:
    """Registry entry of ``group/name`` with its paths resolved against ``data_root``."""
    entries = dict(DATASET_INFO.get(group, {}))
    entries.update(overrides or {})
    if name not in entries:
        raise DataConfigError(
            f"dataset {name!r} is not registered under group {group!r}; known: {sorted(entries)} "
            "(add it to data/dataset_info.py or to the group's `dataset_info:` in the YAML)"
        )
    meta = copy.deepcopy(entries[name])
    for key in PATH_KEYS:
        if key in meta:
            meta[key] = resolve_path(meta[key], data_root, f"{group}/{name}.{key}")
    return meta
