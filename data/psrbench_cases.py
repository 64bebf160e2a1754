"""PSRBench case reader and results-JSON writer.

Layout (docs/psrbench.md)::

    PSRBench/ Attribute.json Action.json Background.json Position.json Complex.json Three.json Four.json
              subjects/ animals/            # reference images

Each subset JSON is a list of records with `instruction`, the reference paths (`input_path`, or
`input_paths` as PSR's README spells it — both accepted, the one used is recorded) relative to the data
root, and `category1..categoryN` (detector queries, one per reference, same order). Records carry no id
upstream, so the sample id is the record's index in its file unless it has an `id`/`sample_id`/`key`.

Generated images go to `{output_dir}/{subset}/{id}.png`; `write_results_json` then writes
`{results_dir}/{subset}.json` = the subset's records with `result_path` added (PSR README step 2), which
is what `eval/psrbench/evaluate.py` (and PSR's own scripts) read.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

log = logging.getLogger(__name__)

# Reporting order and number of subjects per subset.
SUBSET_SUBJECTS: dict[str, int] = {
    "Attribute": 2,
    "Action": 2,
    "Background": 2,
    "Position": 2,
    "Complex": 2,
    "Three": 3,
    "Four": 4,
}
SUBSETS: tuple[str, ...] = tuple(SUBSET_SUBJECTS)

PATH_FIELDS = ("input_path", "input_paths")
ID_FIELDS = ("id", "sample_id", "key")
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Case:
    """One PSRBench sample. `input_images` are resolved paths inside `data_root`."""

    id: str
    subset: str
    index: int  # position of the record in its subset JSON
    instruction: str
    input_images: tuple[Path, ...]
    input_relpaths: tuple[str, ...]
    categories: tuple[str, ...]  # category1..categoryN, same order as input_images
    source_file: Path
    path_field: str  # "input_path" or "input_paths"
    id_field: str | None  # None: id = record index
    result_path: str | None = None  # as written in the JSON (generated image), if present
    record: dict = field(default_factory=dict, compare=False, repr=False)  # the original record

    @property
    def key(self) -> str:
        """Unique within its subset; the output file is `{task_type}/{key}.png`."""
        return self.id

    @property
    def task_type(self) -> str:
        return self.subset

    @property
    def uid(self) -> str:
        """Unique across the benchmark (use this to derive per-sample seeds)."""
        return f"{self.subset}/{self.id}"

    @property
    def n_subjects(self) -> int:
        return len(self.categories)

    @property
    def output_relpath(self) -> str:
        return f"{self.subset}/{self.id}.png"


def resolve_inside(root: Path, rel: str, where: str) -> Path:
    """`root/rel`, refusing absolute paths, drive letters and any `..` component (no escape from root)."""
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"{where}: reference path must be a non-empty string, got {rel!r}")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith(("/", "\\")):
        raise ValueError(
            f"{where}: absolute reference path {rel!r} is not allowed (must be inside data_root)"
        )
    if ".." in posix.parts or ".." in win.parts:
        raise ValueError(f"{where}: reference path {rel!r} escapes data_root ('..' is not allowed)")
    return root / rel


def _record_id(rec: dict, index: int, where: str) -> tuple[str, str | None]:
    for name in ID_FIELDS:
        if name in rec:
            value = rec[name]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"{where}: field {name!r} must be a string or integer, got {value!r}")
            sid = str(value)
            if not _SAFE_ID.fullmatch(sid):
                raise ValueError(f"{where}: {name}={sid!r} is not usable as a file name")
            return sid, name
    return str(index), None


def _parse_record(rec: object, index: int, subset: str, src: Path, root: Path, check_files: bool) -> Case:
    where = f"{src}[{index}]"
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: record must be an object, got {type(rec).__name__}")
    sid, id_field = _record_id(rec, index, where)
    where = f"{where} (id {sid})"

    instruction = rec.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"{where}: missing or empty 'instruction'")

    present = [f for f in PATH_FIELDS if f in rec]
    if not present:
        raise ValueError(f"{where}: no reference paths (expected 'input_path' or 'input_paths')")
    if len(present) == 2 and rec["input_path"] != rec["input_paths"]:
        raise ValueError(f"{where}: 'input_path' and 'input_paths' both present and different")
    path_field = present[0]
    rels = rec[path_field]
    if not isinstance(rels, list) or not rels:
        raise ValueError(f"{where}: {path_field!r} must be a non-empty list of paths, got {rels!r}")

    n = len(rels)
    expected = SUBSET_SUBJECTS[subset]
    if n != expected:
        raise ValueError(f"{where}: subset {subset} has {expected} subjects but {path_field!r} lists {n}")
    categories = []
    for k in range(1, n + 1):
        cat = rec.get(f"category{k}")
        if not isinstance(cat, str) or not cat.strip():
            raise ValueError(f"{where}: missing or empty 'category{k}' (one per reference image)")
        categories.append(cat)
    if f"category{n + 1}" in rec:
        raise ValueError(f"{where}: has 'category{n + 1}' but only {n} reference images")

    images = tuple(resolve_inside(root, r, f"{where} {path_field}") for r in rels)
    if check_files:
        for rel, p in zip(rels, images):
            if not p.is_file():
                raise FileNotFoundError(f"{where}: reference image {rel!r} not found at {p}")

    result_path = rec.get("result_path")
    if result_path is not None and (not isinstance(result_path, str) or not result_path):
        raise ValueError(f"{where}: 'result_path' must be a non-empty string, got {result_path!r}")
    return Case(
        id=sid,
        subset=subset,
        index=index,
        instruction=instruction,
        input_images=images,
        input_relpaths=tuple(rels),
        categories=tuple(categories),
        source_file=src,
        path_field=path_field,
        id_field=id_field,
        result_path=result_path,
        record=rec,
    )


def _check_subsets(subsets: list[str] | tuple[str, ...] | None) -> list[str]:
    if subsets is None:
        return list(SUBSETS)
    unknown = [s for s in subsets if s not in SUBSET_SUBJECTS]
    if unknown:
        raise ValueError(f"unknown PSRBench subset(s) {unknown}; known: {list(SUBSETS)}")
    # keep the benchmark's reporting order, drop duplicates
    return [s for s in SUBSETS if s in set(subsets)]


def load_psrbench_cases(
    data_root: str | os.PathLike,
    subsets: list[str] | tuple[str, ...] | None = None,
    *,
    json_dir: str | os.PathLike | None = None,
    check_files: bool = True,
    errors: list[str] | None = None,
) -> list[Case]:
    """Read the subset JSON files -> cases in subset order, then file order.

    data_root: PSRBench folder (reference paths are resolved inside it).
    subsets: names from SUBSETS (None = all seven; each file must exist).
    json_dir: read `{subset}.json` from here instead of data_root (e.g. results files with `result_path`).
    check_files: require every reference image to exist.
    Raises ValueError / FileNotFoundError naming the file and record on any malformed input; with an
    ``errors`` list, a malformed *record* is appended there (naming it) and left out instead, so that one
    bad record fails that record, not the run (a missing or unreadable file still raises).
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"PSRBench data_root {root} is not a directory")
    jdir = Path(json_dir) if json_dir is not None else root
    cases: list[Case] = []
    for subset in _check_subsets(subsets):
        src = jdir / f"{subset}.json"
        if not src.is_file():
            raise FileNotFoundError(f"PSRBench subset file {src} not found (select subsets with --subsets)")
        try:
            records = json.loads(src.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}: invalid JSON ({e})") from None
        if not isinstance(records, list):
            raise ValueError(f"{src}: expected a JSON list of records, got {type(records).__name__}")
        subset_cases = []
        for i, r in enumerate(records):
            try:
                subset_cases.append(_parse_record(r, i, subset, src, root, check_files))
            except (ValueError, FileNotFoundError) as e:
                if errors is None:
                    raise
                errors.append(str(e))
        dup = [k for k, c in Counter(c.id for c in subset_cases).items() if c > 1]
        if dup:
            raise ValueError(f"{src}: duplicate sample ids {dup[:5]}")
        fields = Counter(c.path_field for c in subset_cases)
        log.info("PSRBench %s: %d cases (reference field: %s)", subset, len(subset_cases), dict(fields))
        cases.extend(subset_cases)
    return cases


def check_results_against_benchmark(benchmark: list[Case], results: list[Case]) -> tuple[list[Case], dict]:
    """Match the results files' records with the benchmark's own by (subset, id).

    Returns the result cases to score (present in the benchmark, with the same instruction, categories
    and references) and a coverage dict: how many of the benchmark's cases are scored, and the ids that
    are missing from the results, extra (not in the benchmark) or edited (a field differs).
    """
    bench = {(c.subset, c.id): c for c in benchmark}
    kept, extra, edited, seen = [], [], [], set()
    for c in results:
        ref = bench.get((c.subset, c.id))
        if ref is None:
            extra.append(c.uid)
            continue
        seen.add((c.subset, c.id))
        if (c.instruction, c.categories, c.input_relpaths) != (
            ref.instruction,
            ref.categories,
            ref.input_relpaths,
        ):
            edited.append(c.uid)
            continue
        kept.append(c)
    missing = [c.uid for k, c in bench.items() if k not in seen]
    coverage = {
        "benchmark_cases": len(benchmark),
        "scored_cases": len(kept),
        "missing": missing,
        "extra": extra,
        "edited": edited,
    }
    return kept, coverage


def case_output_path(case: Case, output_dir: str | os.PathLike) -> Path:
    """Where the generated image of `case` lives: `{output_dir}/{subset}/{id}.png`."""
    return Path(output_dir) / case.subset / f"{case.id}.png"


@dataclass(frozen=True)
class ResultsFile:
    path: Path
    n_cases: int
    n_missing: int  # cases whose image did not exist (written without `result_path`)


def write_results_json(
    cases: list[Case],
    output_dir: str | os.PathLike,
    results_dir: str | os.PathLike | None = None,
    *,
    require_outputs: bool = False,
) -> dict[str, ResultsFile]:
    """Write `{results_dir}/{subset}.json` (default results_dir = output_dir) for each subset in `cases`.

    Each entry is the case's original record plus `result_path` (and `id` when the id was the record
    index, so that a results file holding only some records keeps the same ids) = `{output_dir}/{subset}/{id}.png`
    written exactly as composed (relative when output_dir is relative; PSR's scripts open it relative
    to the current directory, our evaluator relative to `--result_root`). A case whose image does not
    exist is written without `result_path` and counted (error instead when `require_outputs`).
    Files are replaced atomically, so a crashed run never leaves a half-written results file.
    """
    out_root = Path(results_dir) if results_dir is not None else Path(output_dir)
    by_subset: dict[str, list[Case]] = {}
    for c in cases:
        by_subset.setdefault(c.subset, []).append(c)
    written: dict[str, ResultsFile] = {}
    for subset, group in by_subset.items():
        entries, missing = [], 0
        for c in sorted(group, key=lambda c: c.index):
            entry = {k: v for k, v in c.record.items() if k != "result_path"}
            if c.id_field is None:
                # the id was the record's index; pin it so a partial results file keeps the same ids
                entry["id"] = c.id
            img = case_output_path(c, output_dir)
            if img.is_file():
                entry["result_path"] = str(img)
            elif require_outputs:
                raise FileNotFoundError(f"{c.uid}: generated image {img} does not exist")
            else:
                missing += 1
            entries.append(entry)
        out_root.mkdir(parents=True, exist_ok=True)
        dst = out_root / f"{subset}.json"
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, dst)
        if missing:
            log.warning(
                "%s: %d of %d cases have no generated image (no result_path)", dst, missing, len(group)
            )
        written[subset] = ResultsFile(path=dst, n_cases=len(group), n_missing=missing)
    return written


def resolve_result_path(case: Case, result_root: str | os.PathLike = ".") -> Path | None:
    """The generated image of `case` (None when the entry has no `result_path`); relative paths are
    taken relative to `result_root`."""
    if case.result_path is None:
        return None
    p = Path(case.result_path)
    return p if p.is_absolute() else Path(result_root) / p
