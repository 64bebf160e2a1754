"""OpenAI-compatible judge client, reply parsers, prompt templates (see docs/evaluation.md §3)."""

from eval.judge.client import JudgeClient, JudgeFatalError, JudgeJob, JudgeResult
from eval.judge.parsing import parse_binary, parse_score_json, parse_score_reason

__all__ = [
    "JudgeClient",
    "JudgeFatalError",
    "JudgeJob",
    "JudgeResult",
    "parse_binary",
    "parse_score_json",
    "parse_score_reason",
]
