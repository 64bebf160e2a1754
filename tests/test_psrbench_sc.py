"""Subject consistency crop/assignment/scoring logic with planted boxes on synthetic images, and the
DINO pre-processing (no models needed)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval.psrbench.detection import Box, caption_for, crop_to_box
from eval.psrbench.features import IMAGENET_MEAN, IMAGENET_STD, center_crop, dino_preprocess, resize_shorter
from eval.psrbench.subject_consistency import box_indices, subject_consistency


class PlantedDetector:
    """Boxes planted per (image tag, query); records every call."""

    def __init__(self, boxes):
        self.boxes = boxes
        self.calls = []

    def detect(self, image, query):
        query = query.strip().lower()
        self.calls.append((image.info["tag"], query))
        return list(self.boxes.get((image.info["tag"], query), []))


class MeanColour:
    """Feature = mean RGB of the image (deliberately not normalised: SC must take the cosine itself)."""

    def embed(self, images):
        return torch.tensor(
            np.stack([np.asarray(im.convert("RGB"), np.float64).mean((0, 1)) for im in images])
        )


def tagged(img, tag):
    img.info["tag"] = tag
    return img


def canvas(size, blocks, tag, bg=(0, 0, 0)):
    """Image of `size` with flat-colour rectangles {(x1, y1, x2, y2): rgb}."""
    img = Image.new("RGB", size, bg)
    for (x1, y1, x2, y2), rgb in blocks.items():
        img.paste(Image.new("RGB", (x2 - x1, y2 - y1), rgb), (x1, y1))
    return tagged(img, tag)


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_two_subjects_hand_computed():
    gen = canvas((100, 80), {(10, 10, 30, 30): (200, 10, 10), (60, 20, 90, 70): (10, 10, 200)}, "gen")
    ref_cat = canvas((50, 50), {(5, 5, 25, 25): (100, 100, 10)}, "ref0")
    ref_dog = canvas((40, 40), {(0, 0, 40, 40): (0, 50, 200)}, "ref1")
    det = PlantedDetector(
        {
            ("gen", "cat"): [Box(10.7, 10.2, 30.9, 30.5, 0.9)],  # truncates to (10, 10, 30, 30)
            ("gen", "dog"): [Box(60, 20, 90, 70)],
            ("ref0", "cat"): [Box(5, 5, 25, 25)],
            ("ref1", "dog"): [Box(0, 0, 40, 40)],
        }
    )
    res = subject_consistency(gen, [ref_cat, ref_dog], ["cat", "dog"], det, MeanColour())
    exp = [cos((200, 10, 10), (100, 100, 10)), cos((10, 10, 200), (0, 50, 200))]
    assert res.similarities == pytest.approx(exp)
    assert res.score == pytest.approx(sum(exp) / 2)
    assert res.n_fallback == 0 and [c.box.as_list() for c in res.crops][0] == [10, 10, 30, 30]


def test_fallbacks_use_whole_image_and_are_counted():
    gen = canvas((100, 100), {(0, 0, 50, 100): (255, 0, 0)}, "gen")  # left half red, right black
    ref_a = canvas((20, 20), {(0, 0, 10, 20): (0, 255, 0)}, "refA")  # left half green
    ref_b = canvas((20, 20), {(0, 0, 20, 20): (9, 9, 9)}, "refB")
    det = PlantedDetector(
        {
            # gen "apple": nothing -> whole generated image (mean (127.5, 0, 0))
            ("refA", "apple"): [Box(0, 0, 10, 20)],  # green crop
            ("gen", "pear"): [Box(3.2, 4, 3.9, 50)],  # int -> width 0 -> empty crop -> whole image
            # refB "pear": nothing -> whole reference
        }
    )
    res = subject_consistency(gen, [ref_a, ref_b], ["apple", "pear"], det, MeanColour())
    assert res.similarities == pytest.approx([cos((127.5, 0, 0), (0, 255, 0)), cos((127.5, 0, 0), (9, 9, 9))])
    assert res.n_fallback == 3
    assert dict(res.fallbacks) == {"no_box": 2, "empty_crop": 1}
    assert [(c.role, c.subject, c.fallback) for c in res.crops] == [
        ("generated", 0, "no_box"),
        ("reference", 0, None),
        ("generated", 1, "empty_crop"),
        ("reference", 1, "no_box"),
    ]


def test_repeated_category_takes_next_box_and_too_few_boxes_falls_back():
    red, blue = (250, 0, 0), (0, 0, 250)
    gen = canvas((90, 30), {(0, 0, 30, 30): red, (30, 0, 60, 30): blue, (60, 0, 90, 30): (0, 250, 0)}, "gen")
    refs = [canvas((10, 10), {(0, 0, 10, 10): c}, f"r{k}") for k, c in enumerate([red, (0, 250, 0), blue])]
    det = PlantedDetector(
        {
            ("gen", "dog"): [Box(0, 0, 30, 30), Box(30, 0, 60, 30)],  # detection order, not position
            ("gen", "cat"): [Box(60, 0, 90, 30)],
            **{(f"r{k}", q): [Box(0, 0, 10, 10)] for k, q in enumerate(["dog", "cat", "dog"])},
        }
    )
    # "Dog" and "dog " are the same detector query -> second box for subject 3
    res = subject_consistency(gen, refs, ["dog", "cat", "Dog "], det, MeanColour())
    assert res.similarities == pytest.approx([1.0, 1.0, 1.0]) and res.n_fallback == 0
    assert [c.box_index for c in res.crops if c.role == "generated"] == [0, 0, 1]
    assert det.calls.count(("gen", "dog")) == 1  # a repeated query is detected once per image
    # upstream rule (3 subjects): box 0 for everyone -> subject 3 compares red with blue
    res_up = subject_consistency(gen, refs, ["dog", "cat", "dog"], det, MeanColour(), rule="upstream")
    assert res_up.similarities == pytest.approx([1.0, 1.0, 0.0])
    # only one dog box: subject 3 cannot get box 1 -> whole image, counted
    det.boxes[("gen", "dog")] = [Box(0, 0, 30, 30)]
    res_few = subject_consistency(gen, refs, ["dog", "cat", "dog"], det, MeanColour())
    assert res_few.fallbacks == {"too_few_boxes": 1}
    assert res_few.similarities[2] == pytest.approx(cos((250 / 3, 250 / 3, 250 / 3), blue))


@pytest.mark.parametrize(
    "cats, general, upstream",
    [
        (["a", "b"], [0, 0], [0, 0]),
        (["a", "a"], [0, 1], [0, 1]),
        (["a", "b", "a"], [0, 0, 1], [0, 0, 0]),
        (["a", "a", "a", "b"], [0, 1, 2, 0], [0, 0, 0, 0]),
        (["A.", "a"], [0, 1], [0, 0]),  # same detector caption; upstream compared raw strings
    ],
)
def test_box_indices(cats, general, upstream):
    assert box_indices(cats) == general
    assert box_indices(cats, "upstream") == upstream
    with pytest.raises(ValueError):
        box_indices(cats, "other")


def test_caption_and_crop_helpers():
    assert caption_for("  Teddy Bear ") == "teddy bear." and caption_for("cat.") == "cat."
    img = Image.new("RGB", (20, 10))
    assert crop_to_box(img, Box(-0.5, 2.7, 25.0, 9.99)).size == (20, 7)  # int() then clamp
    assert crop_to_box(img, Box(4, 4, 4.8, 8)) is None
    assert crop_to_box(img, Box(30, 0, 40, 5)) is None  # fully outside


def test_mismatched_inputs_raise():
    img = tagged(Image.new("RGB", (4, 4)), "g")
    with pytest.raises(ValueError):
        subject_consistency(img, [img], ["a", "b"], PlantedDetector({}), MeanColour())


# ---------------------------------------------------------------- DINO pre-processing


@pytest.mark.parametrize(
    "size, expected",
    [((100, 50), (512, 256)), ((50, 100), (256, 512)), ((333, 250), (340, 256)), ((256, 300), (256, 300))],
)
def test_resize_shorter_side(size, expected):
    assert resize_shorter(Image.new("RGB", size)).size == expected


def test_center_crop_offsets_round_half_to_even():
    # x coordinate encoded in the red channel: the crop's first column tells the left offset
    w = 257  # (257 - 224) / 2 = 16.5 -> round() -> 16 (torchvision uses Python round)
    arr = np.zeros((230, w, 3), np.uint8)
    arr[:, :, 0] = np.arange(w)[None, :] % 256
    arr[:, :, 1] = np.arange(230)[:, None]
    out = np.asarray(center_crop(Image.fromarray(arr)))
    assert out.shape == (224, 224, 3)
    assert out[0, 0, 0] == 16 and out[0, 0, 1] == 3  # (230 - 224) / 2 = 3


def test_dino_preprocess_values_and_mode_order():
    t = dino_preprocess(Image.new("RGB", (40, 30), (255, 128, 0)))
    assert t.shape == (3, 224, 224)
    for c, v in enumerate((255, 128, 0)):
        assert torch.allclose(
            t[c], torch.full((224, 224), (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-5
        )
    grey = dino_preprocess(Image.new("L", (300, 300), 51))  # converted to RGB after resize/crop
    assert torch.allclose(
        grey[2], torch.full((224, 224), (0.2 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]), atol=1e-5
    )
