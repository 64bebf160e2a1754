"""Aesthetic preference with HPSv3 (docs/psrbench.md), optional.

Uses the `hpsv3` package (`HPSv3RewardInferencer(device=...).reward(prompts=..., image_paths=...)`,
one tensor per image whose first element is the preference score mu), batched on a GPU, with the case
instruction as the prompt (an assumption: the PSR authors did not publish their invocation). Without
the package or without CUDA the metric is skipped and the report says "skipped: <reason>".
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.scoring import Scorer, Unit, score_units

log = logging.getLogger(__name__)


def hpsv3_unavailable_reason(device: str = "cuda") -> str | None:
    """None when HPSv3 can run on `device`, else why not."""
    if importlib.util.find_spec("hpsv3") is None:
        return "the hpsv3 package is not installed (pip install hpsv3)"
    if not str(device).startswith("cuda"):
        return f"HPSv3 needs a CUDA device, got --device {device}"
    if not torch.cuda.is_available():
        return "no CUDA GPU available"
    return None


@dataclass
class AestheticsOutcome:
    skipped: str | None  # reason when the metric was not computed at all
    scores: list[float | None] = field(default_factory=list)  # per item; None = failed
    errors: list[str | None] = field(default_factory=list)


def _mu(reward: Any) -> float:
    """First element of one HPSv3 reward (tensor [mu, sigma] or a plain number)."""
    if isinstance(reward, torch.Tensor):
        return float(reward.flatten()[0].item())
    if isinstance(reward, (list, tuple)):
        return float(reward[0])
    return float(reward)


class AestheticsScorer(Scorer):
    """HPSv3 as a batched scorer of the shared driver (eval/scoring.py): the record is ``{"aesthetics": mu,
    "aesthetics_error": None}``. A failing batch is re-run image by image so a single bad file fails alone
    (its error is recorded)."""

    def __init__(self, inferencer: Any, batch_size: int = 8):
        self.inferencer, self.batch_size = inferencer, batch_size

    def prepare(self, item: tuple[Path, str], image_dir: Path) -> tuple[str, str]:
        """``item``: (generated image, its prompt: the case's instruction)."""
        return str(item[0]), item[1]

    def _rewards(self, items: list[tuple[str, str]]) -> list[float]:
        with torch.no_grad():
            rewards = self.inferencer.reward(prompts=[p for _, p in items], image_paths=[i for i, _ in items])
        if len(rewards) != len(items):
            raise ValueError(f"HPSv3 returned {len(rewards)} rewards for {len(items)} images")
        return [_mu(r) for r in rewards]

    def record(self, item: tuple[Path, str], prepared: tuple[str, str], results: dict) -> dict:
        return self.record_batch([item], [prepared])[0]

    def record_batch(self, cases: list, prepared: list[tuple[str, str]]) -> list[dict]:
        try:
            return [{"aesthetics": s, "aesthetics_error": None} for s in self._rewards(prepared)]
        except Exception as batch_error:  # noqa: BLE001 - isolate the bad item below, nothing is lost
            log.warning("HPSv3 batch failed (%s); scoring its images one by one", batch_error)
        out = []
        for item in prepared:
            try:
                out.append({"aesthetics": self._rewards([item])[0], "aesthetics_error": None})
            except Exception as e:  # noqa: BLE001 - recorded per item and counted in the report
                out.append({"aesthetics": None, "aesthetics_error": f"{type(e).__name__}: {e}"})
        return out


def hpsv3_scores(
    image_paths: list[Path],
    prompts: list[str],
    *,
    device: str = "cuda",
    batch_size: int = 8,
    inferencer: Any = None,
    progress: bool = True,
) -> AestheticsOutcome:
    """HPSv3 mu for each (image, prompt), through ``AestheticsScorer``. `inferencer` may be injected
    (tests); otherwise HPSv3 is loaded when available, else the outcome is `skipped`."""
    if len(image_paths) != len(prompts):
        raise ValueError(f"{len(image_paths)} images but {len(prompts)} prompts")
    if inferencer is None:
        reason = hpsv3_unavailable_reason(device)
        if reason is not None:
            log.warning("aesthetics skipped: %s", reason)
            return AestheticsOutcome(skipped=reason)
        from hpsv3 import HPSv3RewardInferencer

        inferencer = HPSv3RewardInferencer(device=device)
    units = [Unit(0, Path("."), 0, item) for item in zip(image_paths, prompts)]
    records = score_units(units, AestheticsScorer(inferencer, batch_size), progress=progress, desc="HPSv3")
    return AestheticsOutcome(
        None, [r["aesthetics"] for r in records], [r["aesthetics_error"] for r in records]
    )
