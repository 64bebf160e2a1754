"""Disk cache of judge replies and the usage ledger.

One JSON file per finished judgement under `cache_dir/<k[:2]>/<k>.json`, written atomically (temp file +
rename), so a killed run leaves either a complete entry or none and a rerun makes zero calls for cached
items. Only successfully parsed replies are stored; failures are retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from modeling.files import give_default_mode


def cache_key(model: str, prompt: str, image_hashes: list[str], scoring_round: int, send: int = 0) -> str:
    """sha256 over (model, prompt, image content hashes in order, scoring round[, send index when > 0: a
    protocol that sends the same request several times keeps every answer])."""
    fields = {
        "model": model,
        "prompt": prompt,
        "images": list(image_hashes),
        "scoring_round": int(scoring_round),
    }
    if send:
        fields["send"] = int(send)
    material = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder + os.replace (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        give_default_mode(tmp)  # mkstemp creates 0600; score files are shared like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JudgeCache:
    """Key -> {"raw": reply text, ...} on disk. Thread-safe (one file per key, atomic renames)."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.root = Path(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # cannot happen with atomic writes unless edited by hand: treat as a miss, it gets rewritten
            return None

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self._path(key), json.dumps(entry, ensure_ascii=False))


@dataclass
class UsageLedger:
    """Counters of one client's traffic. `requests` counts HTTP calls actually issued."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    successes: int = 0
    errors: dict = field(default_factory=dict)  # error kind -> count (every failed attempt)
    dropped_params: list = field(default_factory=list)
    fatal: str | None = None
    started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, d in deltas.items():
                setattr(self, name, getattr(self, name) + d)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict:
        with self._lock:
            d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
            d["errors"] = dict(self.errors)
            d["dropped_params"] = list(self.dropped_params)
        d["elapsed_s"] = round(time.time() - self.started, 3)
        return d


def append_usage(output_dir, entry: dict) -> None:
    """Append one run's judge usage (requests, tokens, retries, cache hits) to ``output_dir/usage.jsonl``."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(output_dir) / "usage.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


class LiveLedgerFile:
    """Keeps a run's usage ledger on disk while it runs, so that a killed run's spend is not lost.

    ``{output_dir}/.usage-live-{pid}.json`` is rewritten atomically every ``interval`` seconds (and by
    ``flush``); ``close`` removes it once the run has appended its final line to ``usage.jsonl``. A later run
    calls ``recover`` first: every live file left behind by a killed run becomes a ``usage.jsonl`` line
    marked ``"interrupted": true``.
    """

    def __init__(self, output_dir, snapshot, interval: float = 0.5):
        self.path = Path(output_dir) / f".usage-live-{os.getpid()}.json"
        self.snapshot, self.interval = snapshot, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def recover(output_dir) -> int:
        """Fold the live files of interrupted runs into ``usage.jsonl``; returns how many there were."""
        n = 0
        for live in sorted(Path(output_dir).glob(".usage-live-*.json")):
            try:
                entry = json.loads(live.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                entry = {"unreadable_live_ledger": live.name}
            entry["interrupted"] = True
            append_usage(output_dir, entry)
            live.unlink(missing_ok=True)
            n += 1
        return n

    def start(self) -> LiveLedgerFile:
        self.flush()
        self._thread.start()
        return self

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()), encoding="utf-8")
        os.replace(tmp, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
