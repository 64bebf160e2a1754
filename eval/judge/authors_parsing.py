"""How the benchmark authors' evaluators read judge replies (``--protocol authors``), quirks included.

Both SconeEval's scorer (Ryann-Ran/Scone ``eval/s2i/sconeeval/json_util.py``) and OmniContext's original one
(VectorSpaceLab/OmniGen2 ``omnicontext/json_util.py``) read a PF/SC reply as the JSON between the first
``{`` and the last ``}`` (newlines dropped; when that is not valid JSON, unquoted keys are quoted and bare
values wrapped by their ``fix_json`` before a second try), or, without braces, as a bare integer 0-10.
Scone reads a presence reply as exactly ``0`` / ``1``, else the *first* standalone 0 or 1 anywhere in the
text: "the subject from image 1 is not present. Answer: 0" reads as 1 (our parser, eval/judge/parsing.py,
takes the final answer). PSR's semantic-alignment scripts take the first ``[Score]: x`` and count 5 when
there is none. Written from their behaviour, not copied; docs/evaluation.md §5 lists where we
still differ (a score that is not a number in [0, 10] fails the judgement instead of entering the mean).
"""

from __future__ import annotations

import json
import math
import re

from eval.judge.parsing import BRACKET_SCORE

_STANDALONE_01 = re.compile(r"\b[01]\b")


def authors_presence(text: str) -> int:
    """A presence reply -> 0 or 1: the whole reply if it is 0 or 1, else its first standalone 0/1."""
    if text is None:
        raise ValueError("empty reply")
    s = str(text).strip()
    if s in ("0", "1"):
        return int(s)
    m = _STANDALONE_01.search(s)
    if m is None:
        raise ValueError(f"no standalone 0 or 1 in reply: {s[:200]!r}")
    return int(m.group())


def _requote(blob: str) -> str:
    """The authors' repair of almost-JSON: every ``word:`` becomes ``"word":``, then each ``"key": value``
    up to the next comma or brace gets a number wrapped in a list, true/false/null kept, anything else quoted."""
    quoted = re.sub(r"(\w+):", r'"\1":', blob)

    def value(m: re.Match) -> str:
        key, val, end = m.group(1), m.group(2).strip(), m.group(3)
        if re.match(r"^-?\d+(\.\d+)?$", val):
            val = f"[{val}]"
        elif not re.match(r"^(true|false|null)$", val, re.IGNORECASE):
            val = f'"{val}"'
        return f"{key}: {val}{end}"

    return re.sub(r'(".*?"):(.*?)(,|})', value, quoted)


def _bare_int(text: str) -> int | None:
    try:
        n = int(text)  # as Python's int(): surrounding whitespace and a sign are accepted
    except ValueError:
        return None
    return n if 0 <= n <= 10 else None


def authors_score_reason(text: str) -> tuple[float, str]:
    """A PF/SC reply -> (score, reasoning) as the authors' parser reads it. ValueError where their parser
    raises, and where the score it yields is not a number in [0, 10] (their statistics cannot average it)."""
    if text is None:
        raise ValueError("empty reply")
    start, end = text.find("{"), text.rfind("}") + 1
    if start == -1 or end == 0:
        n = _bare_int(text)
        if n is None:
            raise ValueError(f"no JSON object and not a bare 0-10 integer: {text[:200]!r}")
        return float(n), "System: output is simply a number"
    if start >= end:
        raise ValueError(f"braces out of order in reply: {text[:200]!r}")
    blob = text[start:end].strip().replace("\n", "")
    try:
        obj = json.loads(blob)
    except ValueError:
        try:
            obj = json.loads(_requote(blob))
        except ValueError as e:
            raise ValueError(f"not JSON even after the authors' repair ({e}): {blob[:200]!r}") from None
    if not isinstance(obj, dict) or "score" not in obj:
        raise ValueError(f"reply JSON has no 'score': {blob[:200]!r}")
    score = obj["score"]
    if isinstance(score, list) and len(score) == 1:  # the repair wraps a bare number in a list
        score = score[0]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"score is not a number: {score!r}")
    if not 0 <= score <= 10:
        raise ValueError(f"score {score} outside [0, 10]")
    reasoning = obj.get("reasoning", "")
    return float(score), reasoning if isinstance(reasoning, str) else str(reasoning)


PSR_DEFAULT_SCORE = 5.0


def authors_bracket_score(text: str) -> tuple[float, bool]:
    """The PSR scripts' reading of a semantic-alignment reply: (first `[Score]: x` as a float, False), or
    (5.0, True) when there is none. A match that is not a number (``8.5.1``) raises ValueError (their script
    then drops the sample)."""
    m = BRACKET_SCORE.search(text or "")
    if m is None:
        return PSR_DEFAULT_SCORE, True
    return float(m.group(1)), False
