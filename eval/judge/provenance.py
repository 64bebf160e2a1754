"""Which judge made a score: recorded in every score file and table, so that scores of different judges are
never read as one (a score is only comparable to another made by the same judge)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone

from eval.judge.settings import JudgeSettings

log = logging.getLogger(__name__)


def judge_record(
    served: Mapping[str, int], protocol: str, prompts: Mapping[str, dict], settings: JudgeSettings
) -> dict:
    """The ``judge`` entry of a score file: the model name requested, the ``model`` the replies say answered
    them (with counts; fresh and cached replies), the protocol, each prompt's source and sha256, the date
    (UTC) and every judge setting (None: not sent)."""
    return {
        "model": settings.model,
        "served_models": dict(sorted(served.items())),
        "protocol": protocol,
        "prompt_sha256": {name: src.get("sha256") for name, src in sorted(prompts.items())},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **{k: v for k, v in settings.as_record().items() if k != "model"},
    }


def provenance_markdown(judge: Mapping) -> str:
    """One line under the table naming the judge; a warning line when the replies came from more than one
    model (e.g. a cache filled by another server behind the same name): such a table mixes judges."""
    served = judge.get("served_models") or {}
    answered = ", ".join(f"{m} ({n})" for m, n in served.items()) or "no replies"
    # no date here: a resumed run's table equals an uninterrupted run's (the date is in scores.json)
    line = f"\nJudge: `{judge.get('model')}`, answered by {answered}; protocol {judge.get('protocol')}.\n"
    if len(served) > 1:
        log.warning("the judgements of this table come from %d different models: %s", len(served), answered)
        line += (
            f"\n**Warning: these scores come from {len(served)} different judge models ({answered}); they are not "
            "one judge's scores. Rejudge with one model (a fresh --cache_dir) before comparing them.**\n"
        )
    return line
