"""Geometric position alignment for the Position subset (docs/psrbench.md), score in [0, 1].

Relation = the first phrase of RELATION_PHRASES (in that order) contained in the instruction
(matched case-insensitively; upstream matched case-sensitively). Subject 1 (`category1`) stands in the
named relation to subject 2. Boxes come from the detector (int-truncated like upstream); centres c1,
c2, `dx = c2.x - c1.x`, `dy = c2.y - c1.y` with y pointing down.

| relation | score |
|---|---|
| right of | dx < 0 and abs(dx) > abs(dy): 1 if IoU < 0.1 else 0.1 / IoU; else 0 |
| left of  | dx > 0 and abs(dx) > abs(dy): same |
| below    | dy < 0: same (no abs(dy) > abs(dx) test) |
| above    | dy > 0: same |

Unlike upstream, outcomes are labelled instead of folded into 0 / dropped: `missing_subject` (a box is
missing; the protocol scores 0), `zero_union` (both boxes empty; protocol scores 0), `no_relation` (no
known phrase; protocol drops the case) — in the latter case any other spatial words found are listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from PIL import Image

from eval.psrbench.detection import Box, CachedDetector, Detector, upstream_detector_accepts
from eval.psrbench.subject_consistency import box_indices

IOU_THRESHOLD = 0.1
RELATION_PHRASES: tuple[str, ...] = (
    "to the left of",
    "to the right of",
    "on the left of",
    "on the right of",
    "above",
    "on top of",
    "below",
    "under",
)
RELATION_KIND: dict[str, str] = {
    "to the left of": "left",
    "on the left of": "left",
    "to the right of": "right",
    "on the right of": "right",
    "above": "above",
    "on top of": "above",
    "below": "below",
    "under": "below",
}
# Spatial words the rules have no score for; reported when no known phrase is present.
OTHER_SPATIAL_WORDS: tuple[str, ...] = (
    "next to",
    "beside",
    "besides",
    "near",
    "nearby",
    "on side of",
    "on the side of",
    "alongside",
    "behind",
    "in front of",
    "in the front of",
    "between",
    "beneath",
    "underneath",
    "over",
    "atop",
    "inside",
    "left",
    "right",
    "top",
    "bottom",
    "across from",
    "opposite",
    "facing",
)
STATUSES = ("scored", "missing_subject", "zero_union", "no_relation")


def find_relation(instruction: str, case_sensitive: bool = False) -> tuple[str | None, list[str]]:
    """-> (first known phrase contained in the instruction or None, other spatial words found).
    ``case_sensitive``: plain substring tests as upstream ("To the left of" then matches nothing)."""
    text = instruction if case_sensitive else instruction.lower()
    for phrase in RELATION_PHRASES:
        if phrase in text:
            return phrase, []
    others = [w for w in OTHER_SPATIAL_WORDS if re.search(rf"\b{re.escape(w)}\b", text.lower())]
    return None, others


def box_iou(b1: Box, b2: Box) -> float | None:
    """IoU of two xyxy boxes; None when the union is zero (both boxes empty)."""
    ix = max(0.0, min(b1.x2, b2.x2) - max(b1.x1, b2.x1))
    iy = max(0.0, min(b1.y2, b2.y2) - max(b1.y1, b2.y1))
    inter = ix * iy
    union = b1.area + b2.area - inter
    if union == 0:
        return None
    return inter / union


def relation_score(relation: str, b1: Box, b2: Box, iou_threshold: float = IOU_THRESHOLD) -> float:
    """Score in [0, 1] for "subject 1 (b1) is <relation> subject 2 (b2)". Boxes used as given.

    Raises ValueError for a relation phrase the rules do not know and ZeroDivisionError for a zero
    union (callers label that case; the protocol scores it 0).
    """
    if relation not in RELATION_KIND:
        raise ValueError(f"no geometric rule for relation {relation!r}; known: {list(RELATION_KIND)}")
    kind = RELATION_KIND[relation]
    (c1x, c1y), (c2x, c2y) = b1.center, b2.center
    dx, dy = c2x - c1x, c2y - c1y
    iou = box_iou(b1, b2)
    if iou is None:
        raise ZeroDivisionError("union of the two boxes is zero")
    if kind == "right":
        ok = dx < 0 and abs(dx) > abs(dy)
    elif kind == "left":
        ok = dx > 0 and abs(dx) > abs(dy)
    elif kind == "below":
        ok = dy < 0
    else:  # above
        ok = dy > 0
    if not ok:
        return 0.0
    return 1.0 if iou < iou_threshold else iou_threshold / iou


@dataclass
class PositionResult:
    status: str  # one of STATUSES
    score: float | None  # None only for no_relation; protocol value (0) for missing_subject/zero_union
    relation: str | None
    unknown_words: list[str] = field(default_factory=list)
    boxes: list[list[float] | None] = field(default_factory=list)  # truncated xyxy per subject

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "score": self.score,
            "relation": self.relation,
            "unknown_words": self.unknown_words,
            "boxes": self.boxes,
        }


def position_alignment(
    generated: Image.Image,
    instruction: str,
    categories: list[str] | tuple[str, ...],
    detector: Detector,
    *,
    rule: str = "general",
) -> PositionResult:
    """Position score of one 2-subject case. `rule="general"` assigns boxes to a repeated category as
    SC does (box 0, box 1); "upstream" is the PSR script: box 0 for both (a same-category case then
    scores 0), relation phrases matched case-sensitively, and a non-RGB image finds no box (scores 0)."""
    if len(categories) != 2:
        raise ValueError(f"position alignment needs 2 subjects, got {len(categories)}")
    relation, others = find_relation(instruction, case_sensitive=rule == "upstream")
    if relation is None:
        return PositionResult(status="no_relation", score=None, relation=None, unknown_words=others)
    det = CachedDetector(detector)
    boxes: list[Box | None] = []
    # upstream's position script took box 0 for both subjects, even for a repeated category
    indices = [0, 0] if rule == "upstream" else box_indices(categories, rule)
    detectable = rule != "upstream" or upstream_detector_accepts(generated)
    for cat, j in zip(categories, indices):
        found = det.detect(generated, cat) if detectable else []
        boxes.append(found[j].truncated() if j < len(found) else None)
    listed = [None if b is None else b.as_list() for b in boxes]
    if boxes[0] is None or boxes[1] is None:
        return PositionResult(status="missing_subject", score=0.0, relation=relation, boxes=listed)
    try:
        score = relation_score(relation, boxes[0], boxes[1])
    except ZeroDivisionError:
        return PositionResult(status="zero_union", score=0.0, relation=relation, boxes=listed)
    return PositionResult(status="scored", score=score, relation=relation, boxes=listed)
