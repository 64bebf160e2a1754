"""Parquet file selection and row-group reading (docs/data.md).

* Files of a data directory are listed **sorted** (upstream used unsorted ``os.listdir``), repeated
  cyclically when more are requested than exist, then truncated.
* ``parquet_info`` JSON files map the full path of every parquet file (exactly as listed here,
  ``os.path.join(data_dir, name)``) to ``{"num_row_groups": int, ...}``. Files missing from that map
  are *reported* (upstream skipped them silently).
* Rows are read one row group at a time with pyarrow (no pandas).
"""

from __future__ import annotations

import json
import logging
import os

import pyarrow.parquet as pq

logger = logging.getLogger(__name__)


class DataConfigError(ValueError):
    """Bad data configuration (missing directory/file, malformed info file, bad YAML values)."""


def selected_parquet_files(
    dataset_name: str, data_dir_list: list[str], num_used_data: list[int], parquet_info: dict | None = None
) -> list[list[str]]:
    """Per data dir of a dataset, its ``num_used_data`` parquet files (see ``list_parquet_files``)."""
    if len(data_dir_list) != len(num_used_data):
        raise DataConfigError(
            f"{dataset_name}: {len(data_dir_list)} data dirs but {len(num_used_data)} num_used_data entries"
        )
    return [list_parquet_files(d, n, parquet_info) for d, n in zip(data_dir_list, num_used_data)]


def list_parquet_files(data_dir: str, num_used: int, parquet_info: dict | None = None) -> list[str]:
    """Sorted ``*.parquet`` paths of ``data_dir``, cycled/truncated to exactly ``num_used`` entries.

    When fewer files exist than requested and ``parquet_info`` lists files of ``data_dir`` that are gone,
    that is a deleted or moved file, not a small data set: a DataConfigError names them."""
    if not os.path.isdir(data_dir):
        raise DataConfigError(f"parquet data directory does not exist: {data_dir}")
    if not isinstance(num_used, int) or isinstance(num_used, bool) or num_used <= 0:
        raise DataConfigError(f"num_used_data for {data_dir} must be a positive integer, got {num_used!r}")
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".parquet"))
    if not names:
        raise DataConfigError(f"no .parquet files in {data_dir}")
    paths = [os.path.join(data_dir, n) for n in names]
    if num_used > len(paths) and parquet_info:
        here = os.path.realpath(data_dir)
        gone = sorted(
            k for k in parquet_info if os.path.dirname(os.path.realpath(k)) == here and not os.path.exists(k)
        )
        if gone:
            raise DataConfigError(
                f"{data_dir}: {num_used} files requested but only {len(paths)} exist; parquet_info lists "
                f"{len(gone)} that are missing: {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''} "
                "(restore them, or rewrite parquet_info and num_used_data)"
            )
    if num_used > len(paths):
        logger.warning(
            "%s: %d files requested but only %d exist; the listing is repeated cyclically (upstream behaviour)",
            data_dir,
            num_used,
            len(paths),
        )
    repeats = -(-num_used // len(paths))
    return (paths * repeats)[:num_used]


def load_parquet_info(info_paths: list[str]) -> dict[str, dict]:
    """Merge several parquet_info JSON files (later files override earlier ones, like ``dict.update``)."""
    merged: dict[str, dict] = {}
    for path in info_paths:
        if not os.path.isfile(path):
            raise DataConfigError(f"parquet_info file does not exist: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                info = json.load(f)
            except json.JSONDecodeError as e:
                raise DataConfigError(f"parquet_info file {path} is not valid JSON: {e}") from e
        if not isinstance(info, dict):
            raise DataConfigError(f"parquet_info file {path} must contain a JSON object (path -> info)")
        for key, value in info.items():
            if not isinstance(value, dict) or not isinstance(value.get("num_row_groups"), int):
                raise DataConfigError(
                    f"parquet_info file {path}: entry {key!r} lacks an integer 'num_row_groups'"
                )
        merged.update(info)
    return merged


def row_groups_of_files(
    files: list[str], parquet_info: dict[str, dict], where: str = ""
) -> tuple[list[tuple[str, int]], list[str]]:
    """Expand files into ``(path, row_group_idx)`` units using ``parquet_info``.

    Returns ``(row_groups, missing)`` where ``missing`` lists the files absent from ``parquet_info``
    (each distinct file once). Missing files are logged as a warning with their count.
    """
    row_groups: list[tuple[str, int]] = []
    missing: list[str] = []
    by_real = None  # keys written relative to another folder, or through a link, still find their file
    for path in files:
        info = parquet_info.get(path)
        if info is None:
            if by_real is None:
                by_real = {os.path.realpath(k): v for k, v in parquet_info.items()}
            info = by_real.get(os.path.realpath(path))
        if info is None:
            if path not in missing:
                missing.append(path)
            continue
        row_groups.extend((path, rg) for rg in range(info["num_row_groups"]))
    if missing:
        logger.warning(
            "%s%d parquet file(s) are listed in the data dir but absent from parquet_info and are NOT used "
            "(keys must be the full paths as listed, e.g. %s). First missing: %s",
            f"{where}: " if where else "",
            len(missing),
            files[0],
            ", ".join(missing[:3]),
        )
    return row_groups, missing


def num_row_groups(path: str) -> int:
    """Row-group count read from the parquet footer."""
    return pq.ParquetFile(path).num_row_groups


def read_row_group(path: str, row_group: int, columns: list[str] | None = None) -> list[dict]:
    """All rows of one row group as python dicts (binary columns come back as ``bytes``)."""
    table = pq.ParquetFile(path).read_row_group(row_group, columns=columns)
    return table.to_pylist()


def make_parquet_info(paths: list[str]) -> dict[str, dict]:
    """Build a parquet_info mapping for existing files (used by scripts/make_tiny_data.py and tests)."""
    return {p: {"num_row_groups": num_row_groups(p)} for p in paths}
