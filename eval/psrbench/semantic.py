"""Semantic alignment (docs/psrbench.md): a VLM judge (Qwen2.5-VL behind an OpenAI-compatible
server: vLLM or SGLang) rates 0-10 how well the generated image matches the case's instruction, with a
per-subset rubric (our own wording, `prompts/{name}.txt`, `{instruction}` placeholder; `prompt_dir`
loads other wording, e.g. the PSR authors' text for upstream comparability).

The score is the first `[Score]: x` of the reply. A reply that never parses (after the client's retries)
is a *failure* in the report. With the PSR authors' rules (``--protocol authors``, eval/judge/rules.py,
eval/authors_protocol.py) the prompts and the request come from the PSR authors' scripts and their reading of the reply is kept: no re-asking, the first
`[Score]: x` taken as it is (even outside 0-10), 5 when there is none (labelled `defaulted`), a number
that does not convert dropping the case (a failure here).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from data.psrbench_cases import Case
from eval.judge.client import JudgeClient, JudgeResult
from eval.judge.parsing import PLACEHOLDER, build_prompt, parse_bracket_score  # noqa: F401 - the metric's API
from eval.judge.rules import OURS, JudgingRules
from eval.judge.settings import JudgeSettings
from eval.scoring import Call, Scorer, Unit, iter_jobs, score_units

log = logging.getLogger(__name__)

# Subsets judged by the VLM -> prompt template name. Position is scored geometrically (position.py).
SEMANTIC_PROMPTS: dict[str, str] = {
    "Attribute": "attribute",
    "Action": "action",
    "Background": "background",
    "Complex": "complex",
    "Three": "three",
    "Four": "four",
}
PROMPT_DIR = Path(__file__).parent / "prompts"
# Upstream client settings (PSR): temperature 0.2, API key "psr" on port 17140.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_JUDGE_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # the model the PSR authors' requests name
DEFAULT_MAX_TOKENS = 1400
DEFAULT_BASE_URL = "http://127.0.0.1:17140/v1"


def load_prompt_templates(prompt_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """subset -> template text, from `prompt_dir` (default: the bundled prompts). Each file must exist
    and contain the `{instruction}` placeholder."""
    root = Path(prompt_dir) if prompt_dir is not None else PROMPT_DIR
    out = {}
    for subset, name in SEMANTIC_PROMPTS.items():
        path = root / f"{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"prompt template for {subset} not found: {path}")
        text = path.read_text(encoding="utf-8")
        if PLACEHOLDER not in text:
            raise ValueError(f"{path}: template has no {PLACEHOLDER} placeholder")
        out[subset] = text
    return out


@dataclass
class SemanticResult:
    status: str  # "scored", "failed" or "defaulted" (authors' protocol only)
    score: float | None
    raw: str | None
    error: str | None
    attempts: int
    cached: bool

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "score": self.score,
            "error": self.error,
            "attempts": self.attempts,
            "cached": self.cached,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class JudgedImage:
    """A PSRBench case with its generated image: what the semantic scorer judges."""

    case: Case
    image: Path

    @property
    def uid(self) -> str:
        return self.case.uid


class SemanticScorer(Scorer):
    """Semantic alignment as a scorer of the shared driver (eval/scoring.py): one judge request per case,
    the subset's rubric with the instruction, the generated image; the record is ``{"semantic": ...}``."""

    def __init__(self, templates: dict[str, str], rules: JudgingRules = OURS):
        self.templates, self.rules = templates, rules

    def calls(self, item: JudgedImage, prepared: None) -> list[Call]:
        case = item.case
        if case.subset not in self.templates:
            raise ValueError(f"{case.uid}: no semantic-alignment prompt for subset {case.subset}")
        prompt = self.rules.render_semantic(self.templates[case.subset], case.instruction)
        return [Call("semantic", prompt, [item.image], self.rules.parse_semantic)]

    def record(self, item: JudgedImage, prepared: None, results: dict[str, JudgeResult]) -> dict:
        r = results["semantic"]
        score, defaulted = r.value
        status, error = ("defaulted", "no '[Score]: x' in the reply") if defaulted else ("scored", None)
        return {
            "semantic": SemanticResult(status, float(score), r.raw, error, r.attempts, r.cached).to_dict()
        }

    def failed(self, item: JudgedImage, reason: str, r: JudgeResult | None) -> dict:
        raw, error, attempts = (r.raw, r.error, r.attempts) if r is not None else (None, reason, 0)
        return {"semantic": SemanticResult("failed", None, raw, error, attempts, False).to_dict()}


def semantic_units(items: list[tuple[Case, Path]], scoring_round: int = 0) -> list[Unit]:
    return [Unit(0, Path("."), scoring_round, JudgedImage(case, Path(image))) for case, image in items]


def semantic_alignment(
    items: list[tuple[Case, Path]],
    client: JudgeClient,
    templates: dict[str, str],
    *,
    rules: JudgingRules = OURS,
    scoring_round: int = 0,
    progress: bool = True,
) -> list[SemanticResult]:
    """Judge each (case, generated image path) -> results in the same order. With the PSR authors' rules
    (``AUTHORS["psr"]``) ``templates`` are their ``str.format`` strings (``load_psr_protocol``), read as
    they read them.

    Only cases of SEMANTIC_PROMPTS subsets are allowed. Raises JudgeFatalError when the server cannot be
    used at all (auth, unknown model, quota): nothing is scored rather than everything failing.
    """
    units = semantic_units(items, scoring_round)
    scorer = SemanticScorer(templates, rules)
    records = score_units(units, scorer, client, rules, progress=progress, desc="semantic alignment")
    return [SemanticResult(**r["semantic"]) for r in records]


def semantic_jobs(
    items: list[tuple[Case, Path]],
    templates: dict[str, str],
    *,
    rules: JudgingRules = OURS,
    scoring_round: int = 0,
) -> list:
    """The judge requests (``JudgeJob``) of ``semantic_alignment``, for ``--dry_run`` and the Batch API."""
    return list(iter_jobs(semantic_units(items, scoring_round), SemanticScorer(templates, rules), rules))


def judge_settings() -> JudgeSettings:
    """The request of our protocol: a local Qwen2.5-VL server, temperature 0.2, seed 0, max_tokens 1400, PNG.
    (The PSR authors' request is read from their scripts: eval/judge/protocol.py.)"""
    return JudgeSettings(
        model=DEFAULT_JUDGE_MODEL,
        api_key_env="PSR_JUDGE_API_KEY",
        temperature=DEFAULT_TEMPERATURE,
        seed=0,
        max_tokens=DEFAULT_MAX_TOKENS,
    )


def placeholder_key(api_key_env: str) -> str | None:
    """A local server started without ``--api-key`` accepts any key: "EMPTY" when ``api_key_env`` is unset."""
    if os.environ.get(api_key_env):
        return None
    log.info(
        "%s is not set: sending the placeholder key 'EMPTY' (fine for a server without --api-key)",
        api_key_env,
    )
    return "EMPTY"
