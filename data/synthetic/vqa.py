"""ShapeWorld questions with known answers, and think-mode plans, drawn from the world's own cases.

Questions are about reference images (the ViT view a model gets as context), in BAGEL's ``vlm_sft``
JSONL layout (read by data/vlm_dataset.py). Every line also carries what scoring needs: ``type``,
``answer`` (the canonical short answer), ``phrasing`` (template index), ``seen`` (False when the
phrasing is one of the held-out templates) and ``chance`` (the accuracy of a guess among the answers
the question allows)::

    {"image": ["c000012_r0.png"], "conversations": [{"from": "human", "value": "<image>\\nWhat colour is
     the star?"}, {"from": "gpt", "value": "red"}], "type": "colour", "answer": "red", "phrasing": 0, ...}

Question types (QUESTION_TYPES): the colour / shape / pattern / size of a named subject, the shape of the
subject with a named colour or pattern (``which``), the number of subjects (``count``), where a subject
is (``position``: left / middle / right in a row of candidates, left / right / top / bottom for a lone
subject), which of a case's images shows a subject (``which_image``) and a one-sentence description
(``describe``). Every type has six phrasings; the last two (HELD_OUT) are never used for training, so
a model can be asked in words it never saw.

A subject is named by the fewest attributes that single it out in its image (never by the attribute
asked about); when only its place does, by its place ("the one on the left").

Randomness: one stream per case, ``shapeworld-vqa/<seed>/<split>/<case index>``, apart from the streams
that draw the cases, so adding questions changes no existing world.

Plans (``plan_text``): what a model in think mode should say before drawing a case's target: every
requested subject resolved to its full description and place, then the background, e.g.
``<think>On the left: a small red dotted star. On the right: a large blue striped cross. Background: a
grid mint background.</think>``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator

from data.synthetic.captions import describe_reference, write_jsonl_entry
from data.synthetic.render import PATTERNS, SHAPES, SIZES, SUBJECT_COLOURS, Placement, render_image
from data.synthetic.shapeworld import Case, Reference

QUESTION_TYPES: tuple[str, ...] = (
    "colour",
    "shape",
    "pattern",
    "size",
    "which",
    "count",
    "position",
    "which_image",
    "describe",
)
# Six phrasings per type; ``{name}`` is the subject's name ("the red star"), ``{Name}`` capitalised.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is {name}?",
        "Which colour does {name} have?",
        "What is the colour of {name}?",
        "Tell me the colour of {name}.",
        "Name the colour of {name}.",
        "{Name} is painted in which colour?",
    ),
    "shape": (
        "What shape is {name}?",
        "Which shape is {name}?",
        "What is the shape of {name}?",
        "Tell me the shape of {name}.",
        "Name the shape of {name}.",
        "{Name} has which shape?",
    ),
    "pattern": (
        "What pattern does {name} have?",
        "Which pattern is on {name}?",
        "What is the pattern of {name}?",
        "Tell me the pattern of {name}.",
        "Is {name} solid, striped or dotted?",
        "{Name} is filled with which pattern?",
    ),
    "size": (
        "What size is {name}?",
        "Is {name} small or large?",
        "What is the size of {name}?",
        "Tell me the size of {name}.",
        "How big is {name}, small or large?",
        "{Name} is of which size?",
    ),
    "which": (
        "Which shape is {value}?",
        "What is the {value} shape?",
        "Which subject is {value}? Name its shape.",
        "Tell me the shape of the {value} subject.",
        "Among the shapes, which one is {value}?",
        "The {value} subject is which shape?",
    ),
    "count": (
        "How many shapes are in the image?",
        "How many subjects does the image show?",
        "Count the shapes in the image.",
        "What is the number of shapes in the image?",
        "How many objects can you see?",
        "Give the number of shapes shown.",
    ),
    "position": (
        "Where is {name}?",
        "In which part of the image is {name}?",
        "Where in the image is {name} placed?",
        "Tell me where {name} is.",
        "Locate {name} in the image.",
        "{Name} sits where in the image?",
    ),
    "which_image": (
        "Which image shows {name}?",
        "In which image is {name}?",
        "Which of the images contains {name}?",
        "Tell me which image holds {name}.",
        "Find the image with {name}.",
        "{Name} appears in which image?",
    ),
    "describe": (
        "Describe the image.",
        "What does the image show?",
        "Give a one-sentence description of the image.",
        "Describe what you see.",
        "What is in this image?",
        "Write one sentence about the image.",
    ),
}
HELD_OUT = 2  # the last HELD_OUT phrasings of every type: evaluation only
_ATTRS = ("size", "colour", "pattern", "shape")  # word order of a name: "the small red dotted star"
# Subsets of attributes tried, fewest first, to name a subject uniquely in its image.
_NAMINGS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("colour",),
    ("pattern",),
    ("colour", "shape"),
    ("pattern", "shape"),
    ("colour", "pattern"),
    ("colour", "pattern", "shape"),
    ("size", "colour", "pattern", "shape"),
)
_ROW_PLACES = {1: ("center",), 2: ("left", "right"), 3: ("left", "middle", "right")}
_NUMBER_WORDS = {"zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4"}
ANSWER_VOCAB = {
    "colour": len(SUBJECT_COLOURS),
    "shape": len(SHAPES),
    "pattern": len(PATTERNS),
    "size": len(SIZES),
    "count": 4,  # 0-3 subjects
}


def phrasings(qtype: str, seen: bool) -> range:
    """Template indices of ``qtype`` used for training (``seen``) or held out for evaluation."""
    n = len(TEMPLATES[qtype])
    return range(n - HELD_OUT) if seen else range(n - HELD_OUT, n)


def _name(p: Placement, others: list[Placement], asked: str | None) -> str | None:
    """Shortest name of ``p`` among ``others`` (which include it) that avoids the ``asked`` attribute;
    None when no attribute set singles it out."""
    for attrs in _NAMINGS:
        if asked in attrs:
            continue
        value = tuple(getattr(p.subject, a) for a in attrs)
        if sum(tuple(getattr(o.subject, a) for a in attrs) == value for o in others) == 1:
            words = [getattr(p.subject, a) for a in _ATTRS if a in attrs]
            return "the " + " ".join(words if "shape" in attrs else words + ["one"])
    return None


def _row_place(p: Placement, placements: list[Placement]) -> str:
    """left / middle / right among candidates in a row (they are laid out left to right by x)."""
    order = sorted(placements, key=lambda o: o.x)
    return _ROW_PLACES[len(order)][order.index(p)]


def _lone_place(p: Placement) -> str | None:
    """left / right / top / bottom for a lone subject: the axis it is further off centre on, if clearly."""
    dx, dy = p.x - 0.5, p.y - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return None
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _question(qtype: str, template: int, images: list[str], answer: str, chance: float, **fields) -> dict:
    text = TEMPLATES[qtype][template]
    if "name" in fields:
        fields["Name"] = fields["name"][0].upper() + fields["name"][1:]
    text = text.format(**fields)
    human = "".join("<image>" for _ in images) + "\n" + text
    return {
        "image": list(images),
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
        "type": qtype,
        "answer": answer,
        "phrasing": template,
        "seen": template < len(TEMPLATES[qtype]) - HELD_OUT,
        "chance": round(chance, 6),
    }


def reference_questions(ref: Reference, image: str, rng: random.Random, seen: bool) -> list[dict]:
    """Every question type that makes sense for one reference image, one question each, the phrasing
    drawn from the training (``seen``) or held-out templates."""
    subs = list(ref.placements)
    pick = lambda qtype: rng.choice(phrasings(qtype, seen))  # noqa: E731
    out = [_question("count", pick("count"), [image], str(len(subs)), 1 / ANSWER_VOCAB["count"])]
    if subs:
        out.append(_question("describe", pick("describe"), [image], describe_reference(ref), 0.0))
    else:
        return out
    for attr in ("colour", "shape", "pattern", "size"):
        p = rng.choice(subs)
        name = _name(p, subs, attr)
        if name is None:  # only its place tells it apart
            name = f"the one on the {_row_place(p, subs)}" if len(subs) > 1 else "the subject"
        answer = getattr(p.subject, attr)
        out.append(_question(attr, pick(attr), [image], answer, 1 / ANSWER_VOCAB[attr], name=name))
    # which: the shape of the subject with a named colour or pattern that no other subject has
    options = [
        (p, a)
        for p in subs
        for a in ("colour", "pattern")
        if len(subs) > 1 and sum(getattr(o.subject, a) == getattr(p.subject, a) for o in subs) == 1
    ]
    options = [(p, a) for p, a in options if len({o.subject.shape for o in subs}) == len(subs)]
    if options:
        p, a = rng.choice(options)
        value = getattr(p.subject, a)
        out.append(_question("which", pick("which"), [image], p.subject.shape, 1 / len(subs), value=value))
    p = rng.choice(subs)
    name = _name(p, subs, None)
    place = _row_place(p, subs) if len(subs) > 1 else _lone_place(p)
    if place is not None:
        chance = 1 / len(subs) if len(subs) > 1 else 1 / 4
        out.append(_question("position", pick("position"), [image], place, chance, name=name))
    return out


def case_questions(case: Case, images: list[str], rng: random.Random, seen: bool) -> list[dict]:
    """Questions about every reference of ``case`` (``images``: their file names, in order), plus one
    ``which_image`` question when the case has several subject images."""
    out = []
    for ref, image in zip(case.references, images):
        out.extend(reference_questions(ref, image, rng, seen))
    with_subjects = [(i, r) for i, r in enumerate(case.references) if r.kind == "subjects"]
    if len(with_subjects) > 1:
        everyone = [p for _, r in with_subjects for p in r.placements]
        i, ref = rng.choice(with_subjects)
        p = rng.choice(list(ref.placements))
        name = _name(p, everyone, None)
        shown = [images[j] for j, _ in with_subjects]
        answer = f"image {with_subjects.index((i, ref)) + 1}"
        template = rng.choice(phrasings("which_image", seen))
        out.append(_question("which_image", template, shown, answer, 1 / len(shown), name=name))
    return out


def plan_text(case: Case) -> str:
    """The think-mode plan of a case: each requested subject in full at its place, then the background."""
    parts = [f"{t.position.capitalize()}: {t.subject.description()}." for t in case.targets]
    parts = [p.replace("Left:", "On the left:").replace("Right:", "On the right:") for p in parts]
    parts = [p.replace("Center:", "In the center:").replace("Middle:", "In the middle:") for p in parts]
    bg = case.background
    parts.append(f"Background: a {bg.texture} {bg.colour} background.")
    return "<think>" + " ".join(parts) + "</think>"


def _case_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"shapeworld-vqa/{seed}/{split}/{index}")


def iter_case_questions(
    cases: list[Case], seed: int, split: str, seen: tuple[bool, ...] = (True,)
) -> Iterator[tuple[int, list[str], Case, list[dict]]]:
    """(case index, image names, case, questions) per case; image names are ``c<case>_r<ref>.png``.
    One question set per entry of ``seen`` (training phrasings, then held-out ones for ``(True, False)``),
    each from its own random stream."""
    for c, case in enumerate(cases):
        images = [f"c{c:06d}_r{r}.png" for r in range(len(case.references))]
        questions = []
        for s in seen:
            rng = _case_rng(seed, split if s else f"{split}/unseen", c)
            questions.extend(case_questions(case, images, rng, s))
        yield c, images, case, questions


def write_vqa_dataset(
    cases: list[Case],
    out_dir: str,
    name: str,
    max_questions: int,
    seed: int,
    split: str,
    seen: tuple[bool, ...] = (True,),
) -> dict:
    """Render the references of ``cases`` in order and write their questions to ``out_dir/<name>.jsonl``
    until ``max_questions`` are written (images under ``out_dir/images``). ``seen``: which phrasings,
    ``(True,)`` for a training set, ``(True, False)`` for an evaluation set asked in seen and unseen words.

    Returns the registry entry (``data_dir``, ``jsonl_path``, ``num_total_samples``) with absolute paths,
    plus ``per_type`` counts.
    """
    if max_questions < 0:
        raise ValueError(f"max_questions must be >= 0, got {max_questions}")
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    lines: list[str] = []
    counts: dict[str, int] = {}
    for _, images, case, questions in iter_case_questions(cases, seed, split, seen):
        if len(lines) >= max_questions:
            break
        questions = questions[: max_questions - len(lines)]
        used = {im for q in questions for im in q["image"]}
        for ref, im in zip(case.references, images):
            if im in used:
                render_image(case.size, ref.background, ref.placements).save(os.path.join(image_dir, im))
        for q in questions:
            counts[q["type"]] = counts.get(q["type"], 0) + 1
            lines.append(json.dumps(q) + "\n")
    entry = write_jsonl_entry(lines, os.path.join(out_dir, f"{name}.jsonl"), image_dir)
    return {**entry, "per_type": counts}


def normalise_answer(text: str) -> str:
    """Lower case, no think block, no articles or final punctuation; number words and "image k" → digits,
    so "Two." and "2" or "Image 2" and "2" compare equal."""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S).strip().lower()
    text = re.sub(r"\s+", " ", text).strip(" .!?")
    text = re.sub(r"^(the|a|an) ", "", text)
    text = re.sub(r"^image ", "", text)
    return _NUMBER_WORDS.get(text, text)
