"""Geometric position rules (docs/psrbench.md): hand-computed table + case-level outcomes."""

import pytest
from PIL import Image

from eval.psrbench.detection import Box
from eval.psrbench.position import box_iou, find_relation, position_alignment, relation_score

# Subject 1 box b1, subject 2 box b2 (x right, y down).  dx = c2.x - c1.x, dy = c2.y - c1.y.
LEFT = Box(0, 0, 10, 10)  # centre (5, 5)
RIGHT = Box(100, 0, 110, 10)  # centre (105, 5): from LEFT dx = +100
LOW = Box(0, 100, 10, 110)  # centre (5, 105)
# overlapping pair: IoU = 50 / 150 = 1/3 -> 0.1 / (1/3) = 0.3
A = Box(0, 0, 10, 10)
B = Box(5, 0, 15, 10)  # dx = +5, dy = 0
# IoU just under 0.1: overlap 1x10 = 10, union 190 -> 0.0526
C = Box(9, 0, 19, 10)
# dx > 0 but |dy| > |dx|
DIAG = Box(20, 50, 30, 60)  # from LEFT: dx = 20, dy = 50

TABLE = [
    # relation,          b1,    b2,   expected
    ("to the left of", LEFT, RIGHT, 1.0),  # dx > 0, |dx| > |dy|, IoU 0
    ("on the left of", LEFT, RIGHT, 1.0),
    ("to the left of", RIGHT, LEFT, 0.0),  # dx < 0
    ("to the right of", RIGHT, LEFT, 1.0),
    ("on the right of", LEFT, RIGHT, 0.0),
    ("to the left of", LEFT, DIAG, 0.0),  # |dx| <= |dy| -> 0 for left/right
    ("to the left of", A, B, 0.1 / (50 / 150)),  # IoU >= 0.1 -> 0.1 / IoU
    ("to the right of", B, A, 0.1 / (50 / 150)),
    ("to the left of", A, C, 1.0),  # IoU 10/190 < 0.1
    ("above", LEFT, LOW, 1.0),  # dy = +100 > 0: subject 1 higher in the image
    ("on top of", LEFT, LOW, 1.0),
    ("above", LOW, LEFT, 0.0),
    ("below", LOW, LEFT, 1.0),  # dy = -100 < 0
    ("under", LOW, LEFT, 1.0),
    ("under", LEFT, LOW, 0.0),
    ("below", DIAG, LEFT, 1.0),  # dy < 0 suffices: no |dy| > |dx| test for above/below
    ("above", LEFT, Box(100, 1, 110, 11), 1.0),  # dy = 1 > 0 while |dx| = 100
    ("above", A, Box(0, 5, 10, 15), 0.1 / (50 / 150)),  # overlapping vertically
    ("above", A, A, 0.0),  # same box: dy = 0
    ("to the left of", A, A, 0.0),  # dx = 0
]


@pytest.mark.parametrize("relation, b1, b2, expected", TABLE)
def test_relation_score_table(relation, b1, b2, expected):
    assert relation_score(relation, b1, b2) == pytest.approx(expected)


def test_iou_threshold_boundary_is_inclusive():
    # IoU exactly 0.1 -> 0.1 / 0.1 = 1 through the "IoU >= 0.1" branch; slightly above -> < 1
    b1, b2 = Box(0, 0, 10, 10), Box(0, 0, 10, 1)  # inter 10, union 100
    assert box_iou(b1, b2) == pytest.approx(0.1)
    assert relation_score("below", b1, b2) == pytest.approx(1.0)
    b3 = Box(0, 0, 10, 2)  # IoU 0.2, centre y 1 < 5 -> below holds
    assert relation_score("below", b1, b3) == pytest.approx(0.5)


def test_zero_union_and_unknown_relation():
    empty = Box(5, 5, 5, 5)
    assert box_iou(empty, Box(7, 7, 7, 9)) is None
    with pytest.raises(ZeroDivisionError):
        relation_score("above", empty, Box(7, 7, 7, 9))
    with pytest.raises(ValueError, match="next to"):
        relation_score("next to", LEFT, RIGHT)


@pytest.mark.parametrize(
    "text, phrase, others",
    [
        ("a cat to the left of a dog", "to the left of", []),
        ("A cat Above a dog", "above", []),  # matched case-insensitively
        ("a cat on top of a dog, above the sofa", "above", []),  # list order wins, not text order
        ("a dog under the table", "under", []),
        ("a cat next to a dog", None, ["next to"]),
        ("a cat behind a dog", None, ["behind"]),
        ("a cat and a dog", None, []),
    ],
)
def test_find_relation(text, phrase, others):
    assert find_relation(text) == (phrase, others)


class PlantedDetector:
    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image, query):
        return list(self.boxes.get(query, []))


def test_position_alignment_outcomes():
    img = Image.new("RGB", (200, 200))
    det = PlantedDetector({"cat": [Box(0.9, 0.2, 10.7, 10.9)], "dog": [Box(100, 0, 110, 10)]})
    r = position_alignment(img, "a cat to the left of a dog", ["cat", "dog"], det)
    assert (r.status, r.score, r.relation) == ("scored", 1.0, "to the left of")
    assert r.boxes == [[0, 0, 10, 10], [100, 0, 110, 10]]  # int-truncated like upstream

    r = position_alignment(img, "a cat to the right of a dog", ["cat", "dog"], det)
    assert (r.status, r.score) == ("scored", 0.0)  # a low score, not a missing subject

    r = position_alignment(img, "a cat above a bird", ["cat", "bird"], det)
    assert (r.status, r.score) == ("missing_subject", 0.0) and r.boxes[1] is None

    r = position_alignment(img, "a cat beside a dog", ["cat", "dog"], det)
    assert (r.status, r.score, r.unknown_words) == ("no_relation", None, ["beside"])

    flat = PlantedDetector({"cat": [Box(5, 5, 5.5, 9)], "dog": [Box(7, 7, 7.9, 9)]})  # both width 0
    r = position_alignment(img, "a cat above a dog", ["cat", "dog"], flat)
    assert (r.status, r.score) == ("zero_union", 0.0)


def test_same_category_takes_second_box_unless_upstream_rule():
    img = Image.new("RGB", (200, 200))
    det = PlantedDetector({"dog": [Box(0, 0, 10, 10), Box(100, 0, 110, 10)]})
    r = position_alignment(img, "a dog to the left of a dog", ["dog", "dog"], det)
    assert (r.status, r.score) == ("scored", 1.0)
    r = position_alignment(img, "a dog to the left of a dog", ["dog", "dog"], det, rule="upstream")
    assert (r.status, r.score) == ("scored", 0.0)  # upstream compares box 0 with itself
    one = PlantedDetector({"dog": [Box(0, 0, 10, 10)]})
    assert position_alignment(img, "a dog under a dog", ["dog", "dog"], one).status == "missing_subject"
