"""Write a tiny synthetic dataset in the exact Scone-S2I parquet layout (plus a VLM SFT jsonl).

Example::

    python scripts/make_tiny_data.py --out /tmp/scone_data
    SCONE_DATA_ROOT=/tmp/scone_data python -m ... --dataset_config_file data/configs/scone_tiny.yaml

The output directory is a data root: registry names ``tiny_single_candidate``,
``tiny_multi_candidate`` (group ``s2i``) and ``tiny_vlm`` (group ``vlm_sft``) resolve into it, and
``data/configs/scone_tiny.yaml`` trains on it. Note: parquet_info keys are the absolute parquet paths
at creation time; re-run the script after moving the directory.
"""

from __future__ import annotations

import argparse
import logging
import os

from data.tiny_data import make_tiny_dataset

logger = logging.getLogger("make_tiny_data")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="data root to write into (created if missing)")
    parser.add_argument("--num_files", type=int, default=2, help="parquet files per s2i dataset")
    parser.add_argument("--rows_per_file", type=int, default=8, help="rows per parquet file")
    parser.add_argument("--rows_per_group", type=int, default=4, help="rows per parquet row group")
    parser.add_argument("--num_vlm", type=int, default=8, help="lines of the vlm_sft jsonl")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the drawn images/texts")
    args = parser.parse_args(argv)
    for name in ("num_files", "rows_per_file", "rows_per_group", "num_vlm"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = os.path.abspath(args.out)
    written = make_tiny_dataset(
        out,
        num_files=args.num_files,
        rows_per_file=args.rows_per_file,
        rows_per_group=args.rows_per_group,
        num_vlm=args.num_vlm,
        seed=args.seed,
    )
    for name, files in written.items():
        logger.info("%s: %d file(s) under %s", name, len(files), os.path.dirname(files[0]))
    logger.info(
        "data root: %s  (use --data_root %s or SCONE_DATA_ROOT; mix: data/configs/scone_tiny.yaml)", out, out
    )


if __name__ == "__main__":
    main()
