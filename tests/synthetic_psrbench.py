"""A tiny synthetic PSRBench folder (same layout and fields as the release) for tests and smoke runs of
the runner/evaluator without the real data. Images are flat-colour squares; nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from data.psrbench_cases import SUBSET_SUBJECTS, SUBSETS

_CATEGORIES = ("cat", "dog", "teddy bear", "backpack")
_RELATIONS = ("to the left of", "on the right of", "above", "under")


def make_synthetic_psrbench(
    root: str | os.PathLike,
    subsets: tuple[str, ...] = SUBSETS,
    n_per_subset: int = 2,
    *,
    path_field: str = "input_path",
    size: int = 64,
) -> Path:
    """Write `{root}/{subset}.json` + `{root}/subjects/*.png`; returns root. Case i of a subset uses
    categories rotated by i; Position instructions name a relation phrase."""
    root = Path(root)
    (root / "subjects").mkdir(parents=True, exist_ok=True)
    for k, cat in enumerate(_CATEGORIES):
        colour = (40 + 50 * k, 200 - 40 * k, 90 + 30 * k)
        Image.new("RGB", (size, size), colour).save(root / "subjects" / f"{cat.replace(' ', '_')}.png")
    for subset in subsets:
        n = SUBSET_SUBJECTS[subset]
        records = []
        for i in range(n_per_subset):
            cats = [_CATEGORIES[(i + k) % len(_CATEGORIES)] for k in range(n)]
            if subset == "Position":
                text = f"a {cats[0]} {_RELATIONS[i % len(_RELATIONS)]} a {cats[1]}"
            else:
                text = f"{subset.lower()} scene with " + ", ".join(f"a {c}" for c in cats)
            rec = {"instruction": text, path_field: [f"subjects/{c.replace(' ', '_')}.png" for c in cats]}
            rec.update({f"category{k + 1}": c for k, c in enumerate(cats)})
            records.append(rec)
        (root / f"{subset}.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    return root
