"""Subject consistency (SC): detector crops of each subject in the generated image and in its reference,
DINO embeddings, cosine similarity, mean over subjects (docs/psrbench.md).

One code path for any number of subjects. Box assignment ("general" rule): the k-th subject whose
detector query repeats an earlier subject's query takes box k of that query in the generated image, and
two categories repeat when their detector queries are equal ("Dog" and "dog. " are one query). Reference
crops always use box 0 of the subject's own reference.

When a crop cannot be made (no box / fewer boxes than needed / empty crop) the protocol's fallback is
applied — the whole image is embedded — and counted in `SCResult.fallbacks`.

``rule="upstream"`` is the PSR scripts' behaviour (``--protocol authors``): only a 2-subject case whose two
category strings are identical (case-sensitive) gets boxes 0 and 1, every other subject box 0; an image
that is not RGB is never detected (their detector transform failed on it: whole image, fallback
``not_rgb``); crops are numpy slices without clamping (``crop_like_upstream``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from eval.psrbench.detection import (
    Box,
    CachedDetector,
    Detector,
    caption_for,
    crop_like_upstream,
    crop_to_box,
    upstream_detector_accepts,
)

log = logging.getLogger(__name__)

RULES = ("general", "upstream")


class FeatureExtractor(Protocol):
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """N images -> [N, D] embeddings."""
        ...


@dataclass
class Crop:
    role: str  # "generated" or "reference"
    subject: int  # 0-based subject index
    query: str
    box_index: int
    n_boxes: int  # boxes the detector returned for this (image, query)
    box: Box | None  # truncated box actually cropped; None on fallback
    fallback: str | None = None  # None, "no_box", "too_few_boxes", "empty_crop" or "not_rgb" (upstream rule)

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "subject": self.subject,
            "query": self.query,
            "box_index": self.box_index,
            "n_boxes": self.n_boxes,
            "box": None if self.box is None else self.box.as_list(),
            "fallback": self.fallback,
        }


@dataclass
class SCResult:
    score: float  # mean cosine over subjects
    similarities: list[float]  # per subject
    crops: list[Crop] = field(default_factory=list)

    @property
    def fallbacks(self) -> Counter:
        return Counter(c.fallback for c in self.crops if c.fallback is not None)

    @property
    def n_fallback(self) -> int:
        return sum(1 for c in self.crops if c.fallback is not None)


def box_indices(categories: list[str] | tuple[str, ...], rule: str = "general") -> list[int]:
    """Which box of its query each subject takes in the generated image.

    general: k-th repetition of the same detector query -> box k (e.g. [dog, cat, dog] -> [0, 0, 1]).
    upstream: only a 2-subject case with category1 == category2 gets [0, 1]; otherwise all 0.
    """
    if rule == "general":
        seen: Counter = Counter()
        out = []
        for cat in categories:
            q = caption_for(cat)
            out.append(seen[q])
            seen[q] += 1
        return out
    if rule == "upstream":
        if len(categories) == 2 and categories[0] == categories[1]:
            return [0, 1]
        return [0] * len(categories)
    raise ValueError(f"unknown box assignment rule {rule!r}; expected one of {RULES}")


def crop_subject(
    image: Image.Image,
    query: str,
    box_index: int,
    detector: Detector,
    role: str,
    subject: int,
    rule: str = "general",
) -> tuple[Image.Image, Crop]:
    """Crop box `box_index` of `query` in `image`; the whole image (counted fallback) if impossible."""
    if rule == "upstream" and not upstream_detector_accepts(image):
        info = Crop(role=role, subject=subject, query=query, box_index=box_index, n_boxes=0, box=None)
        info.fallback = "not_rgb"
        return image, info
    boxes = detector.detect(image, query)
    info = Crop(role=role, subject=subject, query=query, box_index=box_index, n_boxes=len(boxes), box=None)
    if not boxes:
        info.fallback = "no_box"
        return image, info
    if box_index >= len(boxes):
        info.fallback = "too_few_boxes"
        return image, info
    crop = (crop_like_upstream if rule == "upstream" else crop_to_box)(image, boxes[box_index])
    if crop is None:
        info.fallback = "empty_crop"
        return image, info
    info.box = boxes[box_index].truncated()
    return crop, info


def subject_consistency(
    generated: Image.Image,
    references: list[Image.Image],
    categories: list[str] | tuple[str, ...],
    detector: Detector,
    features: FeatureExtractor,
    *,
    rule: str = "general",
) -> SCResult:
    """SC of one case: mean over subjects k of cos(emb(gen crop_k), emb(ref crop_k))."""
    if len(references) != len(categories) or not categories:
        raise ValueError(f"{len(references)} reference images for {len(categories)} categories")
    det = CachedDetector(detector)
    gen_crops, ref_crops, infos = [], [], []
    for k, (ref, cat, j) in enumerate(zip(references, categories, box_indices(categories, rule))):
        g, gi = crop_subject(generated, cat, j, det, "generated", k, rule)
        r, ri = crop_subject(ref, cat, 0, det, "reference", k, rule)
        gen_crops.append(g)
        ref_crops.append(r)
        infos += [gi, ri]
    n = len(categories)
    emb = features.embed(gen_crops + ref_crops).float()
    if emb.shape[0] != 2 * n:
        raise ValueError(f"feature extractor returned {emb.shape[0]} embeddings for {2 * n} images")
    sims = torch.nn.functional.cosine_similarity(emb[:n], emb[n:], dim=1).tolist()
    return SCResult(score=sum(sims) / n, similarities=sims, crops=infos)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image (raises naming the path if missing or unreadable)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = Image.open(path)
    img.load()
    return img
