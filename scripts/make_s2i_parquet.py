"""Turn a folder of your own images + a JSONL into Scone-S2I training data (parquet, parquet_info, data mix).

    python scripts/make_s2i_parquet.py --images my_photos --jsonl my_pairs.jsonl --out datasets/mine

Each JSONL line is one training pair, paths relative to ``--images``:

    {"references": ["dog.jpg", "sofa.png"], "target": "dog_on_sofa.jpg",
     "instruction": "The dog from image 1 lies on the sofa from image 2."}

Writes, under ``--out``:

* ``parquet_data/<name>/part-00000.parquet`` ... — the Scone-S2I schema (``image``: list of encoded images,
  references first and the target last; ``instruction``: string), ``--rows_per_file`` rows per file in row
  groups of ``--rows_per_group`` (the unit the loader shards over ranks and workers);
* ``parquet_info/<name>.json`` — the row-group counts the loader needs, keyed by absolute paths (so
  training finds them from any folder);
* ``<name>.yaml`` — a data mix for ``train.pretrain --dataset_config_file``, with ``--data_root <out>``.
  Its image sizes are the target model's (``--model_path``: the ones in its ``scone_config.json``, so the
  shipped tiny model gets 96 px views) or Scone's 7B sizes (1024/512 VAE, 980/224 ViT) without it;
  ``--max_image_size/--min_image_size`` override the VAE view's.

Every bad line is reported with its file and line number (malformed JSON, missing keys, a path outside
``--images``, a missing or unreadable image) and skipped; the exit code is 1 if any line was bad (the
good ones are written), 2 if none was usable.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

log = logging.getLogger("make_s2i_parquet")


def read_pairs(jsonl: str, image_dir: str) -> tuple[list[dict], list[str]]:
    """(good rows as {"paths": [...refs, target], "instruction": str}, problems "file:line: reason")."""
    from PIL import Image

    base = os.path.realpath(image_dir)
    rows, problems = [], []
    with open(jsonl, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            where = f"{jsonl}:{n}"
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not JSON ({e.msg})")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{where}: a line must be a JSON object")
                continue
            refs, target, text = rec.get("references"), rec.get("target"), rec.get("instruction")
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
                problems.append(f"{where}: 'references' must be a non-empty list of image paths")
                continue
            if not isinstance(target, str) or not isinstance(text, str) or not text.strip():
                problems.append(f"{where}: needs 'target' (an image path) and a non-empty 'instruction'")
                continue
            paths, bad = [], None
            for rel in [*refs, target]:
                full = os.path.realpath(os.path.join(base, rel))
                if os.path.commonpath([base, full]) != base:
                    bad = f"{rel!r} is outside {image_dir}"
                elif not os.path.isfile(full):
                    bad = f"image {rel!r} not found"
                else:
                    try:
                        with Image.open(full) as im:
                            im.verify()
                    except Exception as e:
                        bad = f"image {rel!r} is not readable ({type(e).__name__})"
                if bad:
                    break
                paths.append(full)
            if bad:
                problems.append(f"{where}: {bad}")
                continue
            rows.append({"paths": paths, "instruction": text})
    return rows, problems


def encoded(path: str) -> bytes:
    """The file's bytes when it is a PNG or JPEG (no re-encoding loss), else a PNG of it."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format in ("PNG", "JPEG"):
            with open(path, "rb") as f:
                return f.read()
        buf = io.BytesIO()
        im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, format="PNG")
        return buf.getvalue()


# A small set is cut into at least this many row groups, so that 2 GPUs x 4 workers all get data.
MIN_ROW_GROUPS = 8


def write_dataset(
    rows: list[dict], out: str, name: str, rows_per_file: int, rows_per_group: int
) -> list[str]:
    from data.tiny_data import write_parquet_info, write_s2i_parquet

    paths = []
    for k, start in enumerate(range(0, len(rows), rows_per_file)):
        chunk = rows[start : start + rows_per_file]
        path = os.path.join(out, "parquet_data", name, f"part-{k:05d}.parquet")
        records = [
            {"image": [encoded(p) for p in r["paths"]], "instruction": r["instruction"]} for r in chunk
        ]
        write_s2i_parquet(path, records, rows_per_group)
        paths.append(os.path.abspath(path))  # parquet_info keys: absolute, found from any folder
    write_parquet_info(os.path.join(out, "parquet_info", f"{name}.json"), paths)
    return paths


def model_image_sizes(model_path: str | None) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """(VAE view, ViT view, largest VAE side) of the target model, each view (max, min, stride); Scone's
    7B values when ``model_path`` is None. Reads only configs and file headers."""
    from inference.pipeline import model_defaults
    from modeling.checkpoint import build_config, check_model_folder, max_output_side, pick_weights_file
    from modeling.config import UPSTREAM_TRANSFORMS

    if model_path is None:
        return UPSTREAM_TRANSFORMS["vae_transform"], UPSTREAM_TRANSFORMS["vit_transform"], 1024
    folder = check_model_folder(model_path)
    config = build_config(folder, pick_weights_file(folder, None))
    _, transforms = model_defaults(config)
    return transforms["vae_transform"], transforms["vit_transform"], max_output_side(folder, config=config)


def write_mix(out: str, name: str, num_files: int, vae: tuple, vit: tuple) -> str:
    import yaml

    mix = {
        "s2i": {
            "dataset_names": [name],
            "num_used_data": [num_files],  # every file once per pass
            "image_transform_args": {
                "image_stride": vae[2],
                "max_image_size": vae[0],
                "min_image_size": vae[1],
            },
            "vit_image_transform_args": {
                "image_stride": vit[2],
                "max_image_size": vit[0],
                "min_image_size": vit[1],
            },
            "is_mandatory": True,
            "weight": 1,
            "dataset_info": {
                name: {"data_dir": f"parquet_data/{name}", "parquet_info_path": f"parquet_info/{name}.json"}
            },
        }
    }
    path = os.path.join(out, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# written by scripts/make_s2i_parquet.py; use with --data_root {os.path.abspath(out)}\n")
        yaml.safe_dump(mix, f, sort_keys=False)
    return path


def main(argv: list[str] | None = None) -> int:
    from modeling.errors import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder the JSONL's paths are relative to")
    p.add_argument("--jsonl", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="my_s2i", help="dataset name (files, parquet_info, YAML)")
    p.add_argument("--rows_per_file", type=int, default=500)
    p.add_argument(
        "--rows_per_group",
        type=int,
        default=None,
        help="rows per parquet row group, the unit shared out to GPUs x DataLoader workers (default: 10, "
        f"fewer for a small set so that it has at least {MIN_ROW_GROUPS} row groups)",
    )
    p.add_argument(
        "--model_path",
        default=None,
        help="the model you will fine-tune (folder or hub id): the mix takes its image sizes (default: "
        "Scone's 7B sizes)",
    )
    p.add_argument(
        "--max_image_size", type=int, default=None, help="VAE view's largest side (default: model's)"
    )
    p.add_argument(
        "--min_image_size", type=int, default=None, help="VAE view's smallest side (default: model's)"
    )
    args = p.parse_args(argv)
    if args.rows_per_file < 1 or (args.rows_per_group is not None and args.rows_per_group < 1):
        p.error("--rows_per_file and --rows_per_group must be >= 1")
    for path, what in ((args.images, "folder"), (args.jsonl, "file")):
        if not (os.path.isdir(path) if what == "folder" else os.path.isfile(path)):
            log.error("%s %s not found", what, path)
            return 2
    try:
        vae, vit, largest = model_image_sizes(args.model_path)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    vae = (args.max_image_size or vae[0], args.min_image_size or vae[1], vae[2])
    if vae[0] > largest or vae[1] > vae[0]:
        log.error(
            "--max_image_size %d / --min_image_size %d do not fit %s (largest side %d px, and min <= max)",
            vae[0],
            vae[1],
            args.model_path or "Scone's 7B model",
            largest,
        )
        return 2
    rows, problems = read_pairs(args.jsonl, args.images)
    for msg in problems:
        log.error("%s", msg)
    if not rows:
        log.error("no usable line in %s", args.jsonl)
        return 2
    per_group = args.rows_per_group or max(1, min(10, len(rows) // MIN_ROW_GROUPS))
    files = write_dataset(rows, args.out, args.name, args.rows_per_file, per_group)
    mix = write_mix(args.out, args.name, len(files), vae, vit)
    groups = sum(
        -(-min(args.rows_per_file, len(rows) - i) // per_group)
        for i in range(0, len(rows), args.rows_per_file)
    )
    log.info(
        "%d pairs -> %d parquet file(s), %d row group(s) (GPUs x --num_workers must not exceed it); "
        "%d bad line(s); data mix %s (VAE view %s, ViT view %s)",
        len(rows),
        len(files),
        groups,
        len(problems),
        mix,
        vae,
        vit,
    )
    print(mix)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
