"""Parquet datasets sharded by row group (s2i, unified_edit; docs/data.md).

Units are ``(parquet_path, row_group_idx)`` pairs taken from ``parquet_info``; the resume index of a
row is ``[worker-local row-group index, row index inside the row group]`` (upstream's format).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from data.image_io import decode_image
from data.parquet_io import DataConfigError, read_row_group, row_groups_of_files, selected_parquet_files
from data.sample_builder import SampleBuilder
from data.sharding import ShardedSource, count_read_error
from data.transforms import ImageTransform


def image_bytes(value) -> bytes:
    """Parquet image cell -> encoded bytes (plain binary, or a HF-datasets style {"bytes": ...} struct)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"image cell must hold encoded image bytes, got {type(value).__name__}")
    return bytes(value)


class ParquetRowGroupDataset(ShardedSource):
    """Base for parquet datasets whose rows are parsed by ``parse_row``.

    Args:
        dataset_name: group key (e.g. ``"s2i"``), used in logs, stats and ``data_indexes``.
        data_dir_list / num_used_data: directories and how many files of each (paired, equal lengths).
        parquet_info: merged parquet_info mapping (full path -> {"num_row_groups": n}).
    """

    columns: tuple[str, ...] | None = None  # columns to read (None = all)

    def __init__(
        self,
        dataset_name: str,
        tokenizer,
        data_dir_list: list[str],
        num_used_data: list[int],
        parquet_info: dict[str, dict],
        transform: ImageTransform | None = None,
        vit_transform: ImageTransform | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        data_seed: int = 42,
    ):
        units: list[tuple[str, int]] = []
        self.missing_in_parquet_info: list[str] = []
        selected = selected_parquet_files(dataset_name, data_dir_list, num_used_data, parquet_info)
        for data_dir, files in zip(data_dir_list, selected):
            row_groups, missing = row_groups_of_files(files, parquet_info, where=f"{dataset_name} {data_dir}")
            units.extend(row_groups)
            self.missing_in_parquet_info.extend(missing)
        if not units:
            raise DataConfigError(
                f"{dataset_name}: none of the selected parquet files is listed in parquet_info "
                f"({len(self.missing_in_parquet_info)} missing; keys must be full paths such as "
                f"{self.missing_in_parquet_info[:1]})"
            )
        super().__init__(dataset_name, units, rank=rank, world_size=world_size, data_seed=data_seed)
        self.builder = SampleBuilder(tokenizer, transform, vit_transform)
        self._cached_unit: tuple[str, int] | None = None
        self._cached_rows: list[dict] = []

    def _rows_of(self, path: str, row_group: int) -> list[dict]:
        # A one-entry cache: restoring a buffer usually re-reads several rows of the same row group.
        if self._cached_unit != (path, row_group):
            cols = list(self.columns) if self.columns else None
            self._cached_rows = read_row_group(path, row_group, columns=cols)
            self._cached_unit = (path, row_group)
        return self._cached_rows

    def _walk(self, units: list, after, stats: Counter) -> Iterator[tuple[list[int], str, dict]]:
        start_rg, start_row = (after[0], after[1] + 1) if after is not None else (0, 0)
        for rg_idx in range(start_rg, len(units)):
            path, row_group = units[rg_idx]
            try:
                rows = read_row_group(path, row_group, columns=list(self.columns) if self.columns else None)
            except Exception as e:
                count_read_error(stats, self.dataset_name, f"{path} row group {row_group}", e)
                start_row = 0
                continue
            for row_idx in range(start_row, len(rows)):
                yield [rg_idx, row_idx], f"{path} row group {row_group} row {row_idx}", rows[row_idx]
            start_row = 0

    def _fetch(self, units: list, data_indexes) -> tuple[str, dict]:
        rg_idx, row_idx = data_indexes
        path, row_group = units[rg_idx]
        return f"{path} row group {row_group} row {row_idx}", self._rows_of(path, row_group)[row_idx]

    def decode(self, value, stats: Counter):
        return decode_image(image_bytes(value), stats, where=self.current_where)
