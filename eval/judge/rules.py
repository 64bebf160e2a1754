"""The judging rules of one protocol, chosen once per run: how a reference image is prepared, which SC
rubric a case gets, how prompts are filled and replies read, how many times each request is sent, and
(PSRBench) which detection boxes its geometric metrics keep.

``OURS`` is this project's protocol. With ``--protocol authors`` the rules are those of the upstream
evaluator followed (eval/authors_protocol.py holds their prompts and request settings), quirks included:

* ``scone`` (Ryann-Ran/Scone, SconeEval and its OmniContext copy): the scene SC rubric when the task type
  names a scene *or* the record's ``case_type`` contains "S" (for OmniContext too); replies read by their
  parser (eval/judge/authors_parsing.py: the first standalone 0/1 of a presence reply); a case gets up
  to three tries, and a reply that cannot be read sends every request of the case again (their retry
  loop covers the whole case and breaks after the first try whose replies all read).
* ``psr`` (wang-shulei/PSR, PSRBench): the rubric filled by ``str.format``, the first ``[Score]: x`` read
  once (5 when there is none), their box rule for subject consistency and position.
* ``omnigen2`` (VectorSpaceLab/OmniGen2, OmniContext's original evaluator): references decoded with their
  EXIF orientation and resized in their stored mode; every PF/SC request sent three times per judging
  pass (their retry loop has no ``break``), the last readable reply kept.

In every try the requests of one batch (PF and SC) are all sent before their replies are read; replies
are read in order, an unreadable one ends the try's reading (and no later batch is sent), and each request
keeps the last readable reply any try got. Our own protocol has one try: the judge client asks again
for an unreadable reply itself (``--max_retries``, ``reask``); the authors' scorers never do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from data.benchmark_cases import BenchmarkCase
from eval.judge.authors_parsing import authors_bracket_score, authors_presence, authors_score_reason
from eval.judge.images import ImageLike, load_reference, load_reference_decoded
from eval.judge.parsing import bracket_score, build_prompt, parse_binary, parse_score_reason


def scene_by_task_type(case: BenchmarkCase) -> bool:
    return "scene" in case.task_type


def scene_by_task_or_case_type(case: BenchmarkCase) -> bool:
    return "scene" in case.task_type or "S" in case.case_type


@dataclass(frozen=True)
class JudgingRules:
    name: str
    prepare_reference: Callable[[ImageLike], Image.Image]
    parse_score: Callable[[str], tuple[float, str]]  # PF/SC reply -> (score in [0, 10], reasoning)
    parse_presence: Callable[[str], int]  # presence reply -> 0 / 1
    scene_rubric: dict[str, Callable[[BenchmarkCase], bool]]  # benchmark -> does this case get scene SC?
    tries: int = 1  # times the requests of a case may be sent per judging pass (the authors' retry loop)
    every_try: bool = False  # True: all tries are sent even after one whose replies all read (no break)
    reask: bool = False  # the judge client asks again for an unreadable reply (--max_retries)
    # PSRBench semantic alignment: (rubric, instruction) -> prompt; reply -> (score, defaulted to 5)
    render_semantic: Callable[[str, str], str] = build_prompt
    parse_semantic: Callable[[str], tuple[float, bool]] = bracket_score
    box_rule: str = "general"  # PSRBench SC/position: "general" or the authors' "upstream" box rule


def _format(template: str, instruction: str) -> str:
    return template.format(instruction)  # PSR's `self.task.format(instruction)`: no stripping


OURS = JudgingRules(
    "ours",
    load_reference,
    parse_score_reason,
    parse_binary,
    {"omnicontext": scene_by_task_type, "sconeeval": scene_by_task_or_case_type},
    reask=True,
)
AUTHORS = {
    "scone": JudgingRules(
        "scone",
        load_reference,
        authors_score_reason,
        authors_presence,
        {"omnicontext": scene_by_task_or_case_type, "sconeeval": scene_by_task_or_case_type},
        tries=3,
    ),
    "omnigen2": JudgingRules(
        "omnigen2",
        load_reference_decoded,
        authors_score_reason,
        authors_presence,
        {"omnicontext": scene_by_task_type},
        tries=3,
        every_try=True,
    ),
    "psr": JudgingRules(
        "psr",
        load_reference,
        authors_score_reason,
        authors_presence,
        {},
        render_semantic=_format,
        parse_semantic=authors_bracket_score,
        box_rule="upstream",
    ),
}


def judging_rules(protocol: str, upstream: str | None) -> JudgingRules:
    """``OURS``, or the rules of the upstream ``--protocol authors`` follows."""
    if protocol not in ("ours", "authors"):
        raise ValueError(f"protocol must be 'ours' or 'authors', got {protocol!r}")
    return OURS if protocol == "ours" else AUTHORS[upstream or "scone"]
