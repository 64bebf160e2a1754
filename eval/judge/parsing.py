"""Parsers for judge replies. Each raises ValueError on anything it cannot read with certainty.

A ValueError makes the judge client retry the request and, after the last attempt, record the item as
failed. Nothing here substitutes a default score (upstream's evaluators fell back to random numbers or 5).
"""

from __future__ import annotations

import json
import math
import re

_BINARY_RE = re.compile(r"\b([01])\b")


def _json_object(text: str) -> dict:
    """The JSON object between the first '{' and the last '}' of `text` (code fences and prose around it
    are tolerated; newlines inside are dropped the way the benchmark authors did)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError(f"no JSON object in reply: {text[:200]!r}")
    blob = text[start : end + 1].replace("\n", " ").replace("\r", " ")
    try:
        obj = json.loads(blob)
    except json.JSONDecodeError as e:
        raise ValueError(f"reply is not valid JSON ({e.msg}): {blob[:200]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"reply JSON is not an object: {blob[:200]!r}")
    return obj


def _score_value(value: object, text: str) -> float:
    # bool is a subclass of int: "true" is not a score
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"score is not a number: {value!r} in {text[:200]!r}")
    score = float(value)
    if not math.isfinite(score) or not 0.0 <= score <= 10.0:
        raise ValueError(f"score {score} outside [0, 10] in {text[:200]!r}")
    return score


def parse_score_reason(text: str) -> tuple[float, str]:
    """Parse a `{"score": s, "reasoning": "..."}` reply -> (score in [0, 10], reasoning or "").

    A bare integer 0..10 (no braces at all) is accepted as the score, as the benchmark authors did.
    """
    if text is None:
        raise ValueError("empty reply")
    stripped = text.strip()
    if "{" not in stripped and re.fullmatch(r"\d{1,2}", stripped):
        return _score_value(int(stripped), text), ""
    obj = _json_object(stripped)
    if "score" not in obj:
        raise ValueError(f"reply JSON has no 'score' key: {stripped[:200]!r}")
    reasoning = obj.get("reasoning", "")
    return _score_value(obj["score"], text), reasoning if isinstance(reasoning, str) else str(reasoning)


def parse_score_json(text: str) -> float:
    """Parse a PF/SC judge reply -> score as float in [0, 10]; ValueError on garbage."""
    return parse_score_reason(text)[0]


def parse_binary(text: str) -> int:
    """Parse a presence judgement -> 0 or 1.

    The trimmed reply must be exactly "0"/"1", else the first standalone 0 or 1 (word boundaries) wins;
    a reply containing neither raises ValueError.
    """
    if text is None:
        raise ValueError("empty reply")
    stripped = text.strip()
    if stripped in ("0", "1"):
        return int(stripped)
    m = _BINARY_RE.search(stripped)
    if m is None:
        raise ValueError(f"no standalone 0 or 1 in reply: {stripped[:200]!r}")
    return int(m.group(1))
