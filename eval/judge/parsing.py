"""Parsers for judge replies. Each raises ValueError on anything it cannot read with certainty.

A ValueError makes the judge client retry the request and, after the last attempt, record the item as
failed. Nothing here substitutes a default score (upstream's evaluators fell back to random numbers or 5).
"""

from __future__ import annotations

import json
import math
import re

# a 0/1 that is a number of its own: not part of "-1", "1.5", "10" or "image1"
_BINARY_RE = re.compile(r"(?<![\w.\-])([01])(?![\w]|\.\d)")
# an explicit final answer: "Answer: 0", "final answer is 1", "Output - 0", "**Answer:** 1"
_ANSWER_RE = re.compile(
    r"(?:final\s+)?(?:answer|output|result|verdict)\W{0,6}(?:is\s+)?\W{0,3}(?<![\-\d.])([01])(?![\w]|\.\d)",
    re.I,
)


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

    In order: a reply that is just "0" or "1" (punctuation around it allowed); an explicit final answer
    ("Answer: 0", "the answer is 1", the last one if several); a JSON object with an "answer" / "present"
    / "score" field of 0 or 1; a reply whose only standalone 0/1 numbers all agree. Anything else (no
    answer, "-1", answers that disagree, digits that only number the images) raises ValueError, so the
    client asks again and then records the item as failed.
    """
    if text is None:
        raise ValueError("empty reply")
    stripped = text.strip()
    bare = stripped.strip(" .!*`'\"")
    if bare in ("0", "1"):
        return int(bare)
    answers = _ANSWER_RE.findall(stripped)
    if answers:
        return int(answers[-1])
    if "{" in stripped:
        try:
            obj = _json_object(stripped)
        except ValueError:
            obj = {}
        for key in ("answer", "present", "score", "value"):
            v = obj.get(key)
            if not isinstance(v, bool) and v in (0, 1):
                return int(v)
    found = set(_BINARY_RE.findall(stripped))
    if len(found) == 1 and not re.search(
        r"\b(?:image|picture|subject|reference)\s*#?\s*[01]\b", stripped, re.I
    ):
        return int(found.pop())
    raise ValueError(f"no unambiguous 0/1 answer in reply: {stripped[:200]!r}")


# ----------------------------------------------------------------------------- PSRBench semantic alignment
BRACKET_SCORE = re.compile(r"\[Score\]:\s*([\d.]+)")
PLACEHOLDER = "{instruction}"  # PSRBench rubric templates


def build_prompt(template: str, instruction: str) -> str:
    """A PSRBench rubric with the instruction: str.replace, not str.format (rubric text may hold braces)."""
    return template.replace(PLACEHOLDER, instruction.strip())


def parse_bracket_score(text: str) -> float:
    """First `[Score]: x` in `text` -> float in [0, 10]; ValueError otherwise (the client then retries)."""
    if not text:
        raise ValueError("empty reply")
    m = BRACKET_SCORE.search(text)
    if m is None:
        raise ValueError(f"no '[Score]: x' in reply: {text[-200:]!r}")
    try:
        score = float(m.group(1))
    except ValueError:
        raise ValueError(f"score {m.group(1)!r} is not a number") from None
    if not math.isfinite(score) or not 0.0 <= score <= 10.0:
        raise ValueError(f"score {score} outside [0, 10]")
    return score


def bracket_score(text: str) -> tuple[float, bool]:
    """``parse_bracket_score`` as (score, defaulted=False): the semantic reading of our protocol."""
    return parse_bracket_score(text), False
