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
from tqdm import tqdm

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


def hpsv3_scores(
    image_paths: list[Path],
    prompts: list[str],
    *,
    device: str = "cuda",
    batch_size: int = 8,
    inferencer: Any = None,
    progress: bool = True,
) -> AestheticsOutcome:
    """HPSv3 mu for each (image, prompt). A failing batch is re-run image by image so a single bad file
    fails alone (its error is recorded). `inferencer` may be injected (tests); otherwise HPSv3 is loaded
    when available, else the outcome is `skipped`."""
    if len(image_paths) != len(prompts):
        raise ValueError(f"{len(image_paths)} images but {len(prompts)} prompts")
    if inferencer is None:
        reason = hpsv3_unavailable_reason(device)
        if reason is not None:
            log.warning("aesthetics skipped: %s", reason)
            return AestheticsOutcome(skipped=reason)
        from hpsv3 import HPSv3RewardInferencer

        inferencer = HPSv3RewardInferencer(device=device)
    out = AestheticsOutcome(skipped=None, scores=[None] * len(prompts), errors=[None] * len(prompts))
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc="HPSv3", disable=not progress, dynamic_ncols=True):
        idx = list(range(s, min(s + batch_size, len(prompts))))
        try:
            with torch.no_grad():
                rewards = inferencer.reward(
                    prompts=[prompts[i] for i in idx], image_paths=[str(image_paths[i]) for i in idx]
                )
            if len(rewards) != len(idx):
                raise ValueError(f"HPSv3 returned {len(rewards)} rewards for {len(idx)} images")
            for i, r in zip(idx, rewards):
                out.scores[i] = _mu(r)
        except Exception as batch_error:  # noqa: BLE001 - isolate the bad item below, nothing is lost
            log.warning("HPSv3 batch at %d failed (%s); scoring its images one by one", s, batch_error)
            for i in idx:
                try:
                    with torch.no_grad():
                        (r,) = inferencer.reward(prompts=[prompts[i]], image_paths=[str(image_paths[i])])
                    out.scores[i] = _mu(r)
                except Exception as e:  # noqa: BLE001 - recorded per item and counted in the report
                    out.errors[i] = f"{type(e).__name__}: {e}"
    return out
