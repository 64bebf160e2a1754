"""ShapeWorld cases: sampling, instructions, rendering and (de)serialisation.

A *case* is one subject-driven generation example: reference images (each holding one subject, several
candidate subjects, or only a scene/background), an instruction, and the target image the instruction
describes. The six task types mirror SconeEval (docs/evaluation.md):

* ``composition_single`` — one reference with one subject;
* ``composition_multi`` — 2–3 references with one subject each;
* ``distinction_single_cross`` / ``_intra`` — one reference with 2–3 candidates, the instruction names
  the target by its shape (cross: candidates have different shapes) or by colour / pattern (intra:
  candidates share the shape);
* ``distinction_multi_cross`` / ``_intra`` — 2–3 such references, one target from each.

Any case may add a scene reference (a background image, placed last): then ``case_type`` contains
``"S"`` and the target uses that background; otherwise the target background is plain white. The
layout rule is stated in the instruction: one subject goes ``on the left`` / ``in the center`` /
``on the right`` (centre x = 1/4, 1/2, 3/4 of the width), two go left and right (1/4, 3/4), three go
left, middle, right (1/6, 1/2, 5/6), always vertically centred, each at its reference size.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from PIL import Image

from data.synthetic.render import (
    BACKGROUND_COLOURS,
    DEFAULT_BACKGROUND,
    NOVEL_SHAPES,
    PATTERNS,
    SHAPES,
    SIZE_FRACTIONS,
    SIZES,
    SUBJECT_COLOURS,
    TEXTURES,
    Background,
    Placement,
    Subject,
    render_image,
)

TASK_TYPES: tuple[str, ...] = (
    "composition_single",
    "composition_multi",
    "distinction_single_cross",
    "distinction_single_intra",
    "distinction_multi_cross",
    "distinction_multi_intra",
)
# Target layout rule: position name -> x centre (fraction of width); y is always 0.5.
LAYOUTS: dict[int, dict[str, float]] = {
    1: {"left": 0.25, "center": 0.5, "right": 0.75},
    2: {"left": 0.25, "right": 0.75},
    3: {"left": 1 / 6, "middle": 0.5, "right": 5 / 6},
}
_POSITION_PHRASE = {
    "left": "on the left",
    "center": "in the center",
    "middle": "in the middle",
    "right": "on the right",
}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Reference:
    """One reference image: subjects (``kind="subjects"``) or only a background (``kind="scene"``)."""

    kind: str
    background: Background
    placements: tuple[Placement, ...] = ()
    labels: tuple[int, ...] = ()  # per placement: 1 = requested in the target


@dataclass(frozen=True)
class Target:
    subject: Subject
    ref_index: int  # which reference image the subject comes from
    candidate_index: int  # index of the subject among that reference's placements
    position: str  # key of LAYOUTS[len(targets)]
    phrase: str  # how the instruction names it, e.g. "the red star from image 1"


@dataclass(frozen=True)
class Case:
    task_type: str
    size: int
    references: tuple[Reference, ...]
    targets: tuple[Target, ...]
    background: Background  # target background
    instruction: str

    @property
    def scene_index(self) -> int | None:
        idx = [i for i, r in enumerate(self.references) if r.kind == "scene"]
        return idx[0] if idx else None

    @property
    def case_type(self) -> str:
        """``<n>O`` (n requested subjects), plus ``S`` when a scene is requested (SC scene rubric)."""
        return f"{len(self.targets)}O" + ("S" if self.scene_index is not None else "")

    def target_placements(self) -> list[Placement]:
        xs = LAYOUTS[len(self.targets)]
        return [Placement(t.subject, xs[t.position], 0.5) for t in self.targets]


# ----------------------------------------------------------------------------- sampling
def _random_subject(rng: random.Random, **fixed: str) -> Subject:
    attrs = {
        "shape": rng.choice(SHAPES),
        "colour": rng.choice(tuple(SUBJECT_COLOURS)),
        "pattern": rng.choice(PATTERNS),
        "size": rng.choice(SIZES),
    }
    attrs.update(fixed)
    return Subject(**attrs)


def _identity(s: Subject) -> tuple[str, str, str]:
    """What tells two subjects apart for presence judgements (size may drift in generated images)."""
    return (s.shape, s.colour, s.pattern)


def _ref_background(rng: random.Random) -> Background:
    return Background(rng.choice(tuple(BACKGROUND_COLOURS)), "plain")


def _free_position(rng: random.Random, subject: Subject) -> tuple[float, float]:
    half = SIZE_FRACTIONS[subject.size] / 2 + 0.04
    return rng.uniform(half, 1 - half), rng.uniform(half, 1 - half)


def _candidates(
    rng: random.Random, kind: str, target_shape: str | None = None
) -> tuple[list[Subject], int, str]:
    """2–3 candidates for a distinction reference: (subjects, target index, descriptor of the target).
    ``target_shape`` forces the target's shape (a novel shape; the other candidates keep SHAPES)."""
    k = rng.choice((2, 3))
    target = rng.randrange(k)
    if kind == "cross":
        shapes = rng.sample(SHAPES, k)
        if target_shape is not None:
            shapes[target] = target_shape
        subjects = [_random_subject(rng, shape=s) for s in shapes]
        return subjects, target, ""
    shape = rng.choice(SHAPES) if target_shape is None else target_shape
    attr = rng.choice(("colour", "pattern"))
    pool = tuple(SUBJECT_COLOURS) if attr == "colour" else PATTERNS
    values = rng.sample(pool, k)
    subjects = [_random_subject(rng, shape=shape, **{attr: v}) for v in values]
    return subjects, target, values[target] + " "


def _candidate_reference(rng: random.Random, subjects: list[Subject], target: int) -> Reference:
    """Candidates in a row (random order already), slot centres at (i + 0.5)/k, jittered vertically."""
    k = len(subjects)
    placements = []
    for i, s in enumerate(subjects):
        half = SIZE_FRACTIONS[s.size] / 2 + 0.04
        placements.append(Placement(s, (i + 0.5) / k, rng.uniform(half, 1 - half)))
    labels = tuple(int(i == target) for i in range(k))
    return Reference("subjects", _ref_background(rng), tuple(placements), labels)


def _layout_sentence(phrases: list[str], positions: list[str], background_phrase: str) -> str:
    parts = [f"{p} {_POSITION_PHRASE[pos]}" for p, pos in zip(phrases, positions)]
    if len(parts) == 1:
        body = parts[0]
    elif len(parts) == 2:
        body = f"{parts[0]} and {parts[1]}"
    else:
        body = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return f"Place {body}, {background_phrase}."


def sample_case(
    rng: random.Random,
    task_type: str,
    size: int = 96,
    scene_prob: float = 0.3,
    novel_shape: str | None = None,
) -> Case:
    """Draw one case of ``task_type`` from ``rng`` (all randomness comes from ``rng``).

    ``novel_shape`` (one of NOVEL_SHAPES): one requested subject of the case has that shape (for an intra
    distinction, all candidates of its reference share it); without it the draws are the standard world's.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")
    if novel_shape is not None and novel_shape not in NOVEL_SHAPES:
        raise ValueError(f"unknown novel shape {novel_shape!r}; expected one of {NOVEL_SHAPES}")
    if size <= 0 or size % 16:
        raise ValueError(f"image size must be a positive multiple of 16, got {size}")
    multi = task_type.endswith("multi") or "_multi_" in task_type
    n = rng.choice((2, 3)) if multi else 1
    novel_at = rng.randrange(n) if novel_shape is not None else -1  # which reference holds it
    while True:  # resample until every subject of the case has a distinct identity
        refs: list[Reference] = []
        picked: list[tuple[Subject, int, int, str]] = []  # subject, ref, candidate, naming phrase
        for i in range(n):
            forced = {"shape": novel_shape} if i == novel_at else {}
            if task_type.startswith("composition"):
                s = _random_subject(rng, **forced)
                x, y = _free_position(rng, s)
                refs.append(Reference("subjects", _ref_background(rng), (Placement(s, x, y),), (1,)))
                picked.append((s, i, 0, f"the {s.shape} from image {i + 1}"))
            else:
                subjects, t, desc = _candidates(rng, task_type.rsplit("_", 1)[1], forced.get("shape"))
                refs.append(_candidate_reference(rng, subjects, t))
                picked.append((subjects[t], i, t, f"the {desc}{subjects[t].shape} from image {i + 1}"))
        identities = [_identity(p.subject) for r in refs for p in r.placements]
        if len(set(identities)) == len(identities):
            break
    order = list(range(n))
    rng.shuffle(order)  # instruction order = left-to-right order, decoupled from image order
    positions = list(LAYOUTS[n]) if n > 1 else [rng.choice(tuple(LAYOUTS[1]))]
    if rng.random() < scene_prob:
        background = Background(rng.choice(tuple(BACKGROUND_COLOURS)), rng.choice(TEXTURES))
        refs.append(Reference("scene", background))
        bg_phrase = f"on the {background.colour} background from image {len(refs)}"
    else:
        background = Background(DEFAULT_BACKGROUND, "plain")
        bg_phrase = f"on a plain {DEFAULT_BACKGROUND} background"
    targets = tuple(
        Target(picked[o][0], picked[o][1], picked[o][2], pos, picked[o][3])
        for o, pos in zip(order, positions)
    )
    instruction = _layout_sentence([t.phrase for t in targets], positions, bg_phrase)
    return Case(task_type, size, tuple(refs), targets, background, instruction)


def render_case(case: Case) -> tuple[list[Image.Image], Image.Image]:
    """(reference images in order, target image), each ``case.size``×``case.size`` RGB."""
    refs = [render_image(case.size, r.background, r.placements) for r in case.references]
    return refs, render_image(case.size, case.background, case.target_placements())


def case_signature(case: Case) -> str:
    """Semantic identity of a case (ignores incidental jitter, reference backdrops, candidate order)."""
    refs = [
        [
            r.kind,
            r.background.to_dict() if r.kind == "scene" else None,
            sorted(
                [p.subject.shape, p.subject.colour, p.subject.pattern, p.subject.size, lab]
                for p, lab in zip(r.placements, r.labels)
            ),
        ]
        for r in case.references
    ]
    return json.dumps(
        [
            case.task_type,
            case.size,
            case.instruction,
            refs,
            case.background.to_dict(),
            [(t.subject.to_dict(), t.position) for t in case.targets],
        ],
        sort_keys=True,
    )


def case_rng(seed: int, split: str, index: int, attempt: int = 0) -> random.Random:
    """Per-case RNG; the string seed makes streams of different splits/seeds independent and stable."""
    return random.Random(f"shapeworld/{seed}/{split}/{index}/{attempt}")


def generate_cases(
    seed: int,
    split: str,
    num: int,
    size: int = 96,
    scene_prob: float = 0.3,
    exclude: set[str] | None = None,
    unique: bool = False,
    novel_shape: str | None = None,
) -> tuple[list[Case], int]:
    """``num`` cases, task types round-robin; a case whose signature is in ``exclude`` (or repeats an
    earlier one when ``unique``) is redrawn with the next attempt seed. Returns (cases, redraws).
    With ``novel_shape`` every case requests one subject of that shape, drawn from a stream of its own
    (``split/novel_shape``), so the standard world's cases stay as they are."""
    exclude = set(exclude or ())
    stream = split if novel_shape is None else f"{split}/{novel_shape}"
    cases, redraws = [], 0
    for i in range(num):
        attempt = 0
        while True:
            case = sample_case(
                case_rng(seed, stream, i, attempt),
                TASK_TYPES[i % len(TASK_TYPES)],
                size,
                scene_prob,
                novel_shape,
            )
            sig = case_signature(case)
            if sig not in exclude:
                break
            attempt += 1
            redraws += 1
            if attempt > 1000:
                raise RuntimeError(
                    f"could not draw a new {split} case {i}: the world is too small for {num} cases"
                )
        if unique:
            exclude.add(sig)
        cases.append(case)
    return cases, redraws


# ----------------------------------------------------------------------------- records
def _placement_dict(p: Placement, label: int | None = None) -> dict:
    d = {**p.subject.to_dict(), "x": round(p.x, 6), "y": round(p.y, 6)}
    if label is not None:
        d["label"] = label
    return d


def case_record(case: Case, key: str, input_images: list[str], target_image: str) -> dict:
    """SconeEval-style jsonl record (docs/evaluation.md) plus the ``shapeworld`` description."""
    record = {
        "key": key,
        "task_type": case.task_type,
        "instruction": case.instruction,
        "input_images": list(input_images),
        "case_type": case.case_type,
    }
    if case.task_type.startswith("distinction"):
        record["subject_list"] = [[p.subject.description() for p in r.placements] for r in case.references]
        record["subject_label"] = [list(r.labels) for r in case.references]
    xs = LAYOUTS[len(case.targets)]
    record["target_image"] = target_image
    record["shapeworld"] = {
        "version": FORMAT_VERSION,
        "image_size": case.size,
        "background": case.background.to_dict(),
        "scene_index": case.scene_index,
        "targets": [
            {
                **t.subject.to_dict(),
                "position": t.position,
                "x": round(xs[t.position], 6),
                "y": 0.5,
                "ref_index": t.ref_index,
                "candidate_index": t.candidate_index,
            }
            for t in case.targets
        ],
        "references": [
            {
                "kind": r.kind,
                "background": r.background.to_dict(),
                "subjects": [_placement_dict(p, lab) for p, lab in zip(r.placements, r.labels)],
            }
            for r in case.references
        ],
    }
    return record


def case_from_record(record: dict) -> Case:
    """Rebuild a Case from a jsonl record (validating it); raises ValueError naming the key on bad input."""
    key = record.get("key", "?")
    try:
        sw = record["shapeworld"]
        if sw.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported shapeworld version {sw.get('version')!r}")
        refs = []
        for r in sw["references"]:
            subs = r["subjects"]
            placements = tuple(
                Placement(
                    Subject(s["shape"], s["colour"], s["pattern"], s["size"]), float(s["x"]), float(s["y"])
                )
                for s in subs
            )
            refs.append(
                Reference(
                    r["kind"], Background(**r["background"]), placements, tuple(int(s["label"]) for s in subs)
                )
            )
        n = len(sw["targets"])
        if n not in LAYOUTS:
            raise ValueError(f"{n} targets; expected 1-3")
        targets = []
        for t in sw["targets"]:
            if t["position"] not in LAYOUTS[n]:
                raise ValueError(f"position {t['position']!r} is not valid for {n} targets")
            targets.append(
                Target(
                    Subject(t["shape"], t["colour"], t["pattern"], t["size"]),
                    int(t["ref_index"]),
                    int(t["candidate_index"]),
                    t["position"],
                    "",
                )
            )
        case = Case(
            record["task_type"],
            int(sw["image_size"]),
            tuple(refs),
            tuple(targets),
            Background(**sw["background"]),
            record["instruction"],
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"record {key!r}: malformed shapeworld description ({type(e).__name__}: {e})") from e
    except ValueError as e:
        raise ValueError(f"record {key!r}: {e}") from e
    if case.task_type not in TASK_TYPES:
        raise ValueError(f"record {key!r}: unknown task_type {case.task_type!r}")
    if len(record.get("input_images", ())) != len(case.references):
        raise ValueError(
            f"record {key!r}: {len(record.get('input_images', ()))} input_images but "
            f"{len(case.references)} references in the shapeworld description"
        )
    return case
