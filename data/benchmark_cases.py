"""Benchmark cases: reading the jsonl (OmniContext-jsonl and SconeEval layouts) and resolving image paths
safely inside the benchmark folder. Shared by the generation runner and the scorers.

Record fields read: `key`, `task_type`, `instruction`, `input_images` (list of paths relative to the
benchmark folder; fallback `input_image`, str or list), SconeEval also `case_type`, `subject_list`,
`subject_label`. All other fields are carried through in `BenchmarkCase.raw`.
A bad record does not stop the others: it is returned as a `CaseProblem` naming the file, line and key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath


@dataclass
class BenchmarkCase:
    key: str
    task_type: str
    instruction: str
    input_images: list[str]  # as written in the jsonl (relative to the benchmark folder)
    case_type: str = ""
    subject_list: list | None = None
    subject_label: list | None = None
    raw: dict = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return f"{self.task_type}/{self.key}"


@dataclass
class CaseProblem:
    where: str  # "file:line" or "task_type/key"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class PathEscapeError(ValueError):
    """An image path in the jsonl points outside the benchmark folder."""


def resolve_in_dir(base: str | os.PathLike, rel: str) -> Path:
    """`base/rel`, refusing absolute paths, drive letters and any `..` component.

    The check is lexical (symlinks inside the folder are trusted, e.g. a Hugging Face snapshot whose
    files link into the cache's blob store).
    """
    if not isinstance(rel, str) or not rel.strip():
        raise PathEscapeError(f"image path {rel!r} is empty or not a string")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith(("\\", "~")):
        raise PathEscapeError(f"image path {rel!r} is absolute; it must be relative to the benchmark folder")
    if ".." in posix.parts or ".." in win.parts:
        raise PathEscapeError(f"image path {rel!r} leaves the benchmark folder ('..')")
    return Path(base) / rel


def _str_field(rec: dict, name: str) -> str:
    v = rec.get(name)
    if v is None or (isinstance(v, str) and not v.strip()):
        raise ValueError(f"missing field '{name}'")
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise ValueError(f"field '{name}' must be a string, got {type(v).__name__}")
    return str(v)


def _case_from_record(rec: dict) -> BenchmarkCase:
    if not isinstance(rec, dict):
        raise ValueError(f"record is a {type(rec).__name__}, not an object")
    key, task_type, instruction = (
        _str_field(rec, "key"),
        _str_field(rec, "task_type"),
        _str_field(rec, "instruction"),
    )
    if (
        "/" in key
        or "\\" in key
        or key in (".", "..")
        or "/" in task_type
        or "\\" in task_type
        or task_type in (".", "..")
    ):
        raise ValueError(f"key {key!r} / task_type {task_type!r} cannot be used as a file name")
    images = rec.get("input_images", rec.get("input_image"))
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise ValueError("field 'input_images' must be a non-empty list of relative paths")
    sl, lab = rec.get("subject_list"), rec.get("subject_label")
    if (sl is None) != (lab is None):
        raise ValueError("'subject_list' and 'subject_label' must be given together")
    if sl is not None:
        if (
            not isinstance(sl, list)
            or not isinstance(lab, list)
            or len(sl) != len(images)
            or len(lab) != len(images)
        ):
            raise ValueError("'subject_list'/'subject_label' need one list per input image")
        for i, (names, labels) in enumerate(zip(sl, lab)):
            if not isinstance(names, list) or not isinstance(labels, list) or len(names) != len(labels):
                raise ValueError(f"subject_list[{i}] and subject_label[{i}] differ in length")
            if any(v not in (0, 1) or isinstance(v, bool) for v in labels):
                raise ValueError(f"subject_label[{i}] must contain only 0/1")
        if not any(sl):
            raise ValueError("'subject_list' is empty")
    return BenchmarkCase(
        key=key,
        task_type=task_type,
        instruction=instruction,
        input_images=list(images),
        case_type=str(rec.get("case_type") or ""),
        subject_list=sl,
        subject_label=lab,
        raw=rec,
    )


def read_cases(metadata_file: str | os.PathLike) -> tuple[list[BenchmarkCase], list[CaseProblem]]:
    """Read a `.jsonl` (one record per line) or `.json` (list of records) benchmark file.

    Returns (cases in file order, problems). Duplicated (task_type, key) pairs are problems (both would
    write the same output file); the first occurrence is kept.
    """
    path = Path(metadata_file)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark metadata file not found: {path}")
    entries: list[tuple[str, object]] = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    entries.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    entries.append((f"{path}:{i}", ValueError(f"invalid JSON ({e.msg})")))
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json benchmark file must hold a list of records")
        entries = [(f"{path}[{i}]", rec) for i, rec in enumerate(data)]
    else:
        raise ValueError(f"{path}: unsupported benchmark file type (expected .jsonl or .json)")
    cases, problems, seen = [], [], set()
    for where, rec in entries:
        try:
            if isinstance(rec, Exception):
                raise rec
            case = _case_from_record(rec)
        except ValueError as e:
            key = rec.get("key") if isinstance(rec, dict) else None
            problems.append(CaseProblem(f"{where}" + (f" (key {key!r})" if key is not None else ""), str(e)))
            continue
        if case.uid in seen:
            problems.append(CaseProblem(where, f"duplicate case {case.uid}; first occurrence kept"))
            continue
        seen.add(case.uid)
        cases.append(case)
    return cases, problems


def input_image_paths(case: BenchmarkCase, benchmark_dir: str | os.PathLike) -> list[Path]:
    """Resolved, existing reference image paths of `case`; raises PathEscapeError / FileNotFoundError."""
    paths = [resolve_in_dir(benchmark_dir, p) for p in case.input_images]
    for rel, p in zip(case.input_images, paths):
        if not p.is_file():
            raise FileNotFoundError(f"input image {rel!r} not found in {benchmark_dir}")
    return paths
