"""Automatic judge for the ShapeWorld benchmark (docs/shapeworld.md has the exact rubric).

The world is known (data/synthetic/render.py), so a generated image is analysed geometrically:

1. background = per-channel median of the 2-pixel border, matched to the background palette;
2. foreground = pixels whose estimated subject coverage (``coverage_map``: each pixel as a mix of the
   background and its best-fitting palette ink) is at least 50%, split into 4-connected components;
   components below ``MIN_AREA_FRACTION`` of the image are noise;
3. per component: shape = best-IoU template (stretched to the component's bounding box, blurred
   variants allowed up to the image's estimated blur), colour = majority vote of interior pixels
   (nearest base-to-shade colour segment), pattern = solid / striped / dotted from the dark-shade
   fraction and the within-column vs within-row darkness variance, size = box side implied by the area,
   position = bounding-box centre.

Requested subjects are matched one-to-one to components, then PF, SC (0–10) and DIS (0/1 per
candidate) follow the rubric, and the records go through eval/aggregation.py — the same code as the
GPT-judged SconeEval, so the same leaderboard table comes out.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from data.benchmark_cases import BenchmarkCase, read_cases
from data.synthetic.render import (
    BACKGROUND_COLOURS,
    NOVEL_SHAPES,
    SHAPES,
    SIZE_FRACTIONS,
    SUBJECT_COLOURS,
    Subject,
    shade_of,
    shape_mask,
)
from data.synthetic.shapeworld import LAYOUTS, Case, case_from_record
from data.transforms import pil_img2rgb
from eval import scoring
from eval.aggregation import write_outputs
from eval.scoring import Scorer, make_units, round_dirs

logger = logging.getLogger(__name__)

BG_MATCH = 35.0  # max RGB distance between the border median and the requested background colour
MIN_AREA_FRACTION = 0.004  # components below this fraction of the image are ignored as noise
SIZE_THRESHOLD = (SIZE_FRACTIONS["small"] + SIZE_FRACTIONS["large"]) / 2
PATTERN_MIN_DARK = 0.08  # dark-shade fraction above which a subject is patterned
TEMPLATE_BLURS = (0.0, 0.7, 1.2)  # Gaussian sigmas (output pixels) of the shape templates
BLUR_MARGIN = 0.35  # templates blurred up to the estimated image blur + this margin are tried
STRIPE_ANISOTROPY = 2.5  # within-column / within-row darkness variance above which a pattern is striped
MAX_MATCH_COMPONENTS = 10  # largest components considered when matching requested subjects
# Rubric constants (docs/shapeworld.md §Rubric).
WRONG_BG_FACTOR = 0.6
EXTRA_PENALTY = 2.0
ATTRIBUTE_FACTORS = {"colour": 0.3, "shape": 0.3, "pattern": 0.6, "size": 0.7}

_COLOUR_NAMES = tuple(SUBJECT_COLOURS)
_BASE = np.array([SUBJECT_COLOURS[c] for c in _COLOUR_NAMES], dtype=np.float32)  # (C, 3)
_SHADE = np.array([shade_of(SUBJECT_COLOURS[c]) for c in _COLOUR_NAMES], dtype=np.float32)  # (C, 3)
_BG_NAMES = tuple(BACKGROUND_COLOURS)
_BG = np.array([BACKGROUND_COLOURS[c] for c in _BG_NAMES], dtype=np.float32)  # (B, 3)


@dataclass
class Detection:
    """One foreground component; x, y, size_frac are fractions of the image side."""

    shape: str
    colour: str
    pattern: str
    size: str
    x: float
    y: float
    size_frac: float
    area: int
    shape_iou: float
    dark_fraction: float
    anisotropy: float


@dataclass
class ImageAnalysis:
    background: str  # nearest background palette colour
    background_rgb: tuple[float, float, float]
    background_distance: float  # RGB distance to that palette colour
    detections: list[Detection]
    noise_components: int  # components dropped as smaller than MIN_AREA_FRACTION


# ----------------------------------------------------------------------------- image analysis
def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean ``(H, W)`` mask → (labels ``(H, W)`` int32 0 = none, count)."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), 0)
    while True:  # propagate the max label to 4-neighbours until stable (diameter-many sweeps)
        new = labels.copy()
        # Mask after every shift so that labels never travel through background pixels.
        new[1:, :] = np.maximum(new[1:, :], new[:-1, :]) * mask[1:, :]
        new[:-1, :] = np.maximum(new[:-1, :], new[1:, :]) * mask[:-1, :]
        new[:, 1:] = np.maximum(new[:, 1:], new[:, :-1]) * mask[:, 1:]
        new[:, :-1] = np.maximum(new[:, :-1], new[:, 1:]) * mask[:, :-1]
        if np.array_equal(new, labels):
            break
        labels = new
    uniq, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(h, w).astype(np.int32)
    if uniq[0] == 0:
        return inverse, len(uniq) - 1
    return inverse + 1, len(uniq)


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


@lru_cache(maxsize=4096)
def _templates(width: int, height: int, shapes: tuple[str, ...] = SHAPES) -> dict[str, list[np.ndarray]]:
    """Per shape of ``shapes``, ``(height, width)`` boolean templates, one per blur level in TEMPLATE_BLURS.

    A blurred shape looks smaller than its true box (tips and corners fade), so for each blur level the
    true box is grown until the blurred template's own bounding box best matches ``width``×``height``;
    that template is then stretched to exactly ``(height, width)``.
    """
    out: dict[str, list[np.ndarray]] = {}
    for shape in shapes:
        out[shape] = []
        for blur in TEMPLATE_BLURS:
            best, best_err = None, None
            for grow in range(0, 2 + int(round(3 * blur))):
                t = shape_mask(shape, width + grow, height + grow, blur)
                err = abs(t.shape[0] - height) + abs(t.shape[1] - width)
                if best_err is None or err < best_err:
                    best, best_err = t, err
            ys = (np.arange(height) * best.shape[0] // height).clip(0, best.shape[0] - 1)
            xs = (np.arange(width) * best.shape[1] // width).clip(0, best.shape[1] - 1)
            out[shape].append(best[ys][:, xs])
    return out


@cache
def _fill_ratio(shape: str) -> float:
    """Fraction of its bounding box that ``shape`` covers."""
    return float(shape_mask(shape, 96, 96).mean())


def _classify_shape(mask: np.ndarray, max_blur: float, shapes: tuple[str, ...] = SHAPES) -> tuple[str, float]:
    """Shape of ``shapes`` whose template (blur levels up to ``max_blur``) has the best IoU with a cropped
    component mask ``(h, w)``."""
    h, w = mask.shape
    best, best_iou = shapes[0], -1.0
    for shape, templates in _templates(w, h, shapes).items():
        for blur, tmpl in zip(TEMPLATE_BLURS, templates):
            if blur > max_blur:
                continue
            iou = float((tmpl & mask).sum()) / float((tmpl | mask).sum())
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def _within_var(t: np.ndarray, mask: np.ndarray, axis: int) -> float:
    """Mean squared deviation of ``t`` from its mean along ``axis`` (0: within columns, 1: within rows)."""
    n = mask.sum(axis, keepdims=True)
    mean = np.where(mask, t, 0.0).sum(axis, keepdims=True) / np.maximum(n, 1)
    return float(np.where(mask, (t - mean) ** 2, 0.0).sum() / max(int(mask.sum()), 1))


def _colour_and_pattern(pixels: np.ndarray, mask: np.ndarray) -> tuple[str, str, float, float]:
    """Colour vote and pattern of a component.

    pixels: ``(h, w, 3)`` float crop; mask: ``(h, w)`` bool pixels used (interior of the component).
    Returns (colour, pattern, dark_fraction, anisotropy).
    """
    pts = pixels[mask]  # (N, 3)
    # Each pixel votes for the colour whose segment base -> shade passes closest to it: stripes, dots and
    # their blurred mixes all lie on their own colour's segment.
    seg = _SHADE - _BASE  # (C, 3)
    rel = pts[:, None, :] - _BASE[None]  # (N, C, 3)
    t = np.clip((rel * seg[None]).sum(-1) / (seg * seg).sum(1)[None], 0.0, 1.0)  # (N, C)
    resid = np.linalg.norm(rel - t[..., None] * seg[None], axis=-1)  # (N, C)
    votes = np.bincount(resid.argmin(1), minlength=len(_COLOUR_NAMES))
    c = int(votes.argmax())
    # Darkness t in [0, 1]: position of each pixel on the segment base colour -> its shade.
    seg_c = _SHADE[c] - _BASE[c]
    t_all = np.clip(((pixels - _BASE[c]) @ seg_c) / float(seg_c @ seg_c), 0.0, 1.0)  # (h, w)
    dark = float((t_all[mask] > 0.5).mean())
    # Stripes are horizontal: darkness is constant along rows but alternates along columns, so the
    # spread within columns exceeds the spread within rows. Dots vary both ways (ratio ~1).
    aniso = _within_var(t_all, mask, axis=0) / (_within_var(t_all, mask, axis=1) + 1e-3)
    if dark < PATTERN_MIN_DARK:
        pattern = "solid"
    else:
        pattern = "striped" if aniso > STRIPE_ANISOTROPY else "dotted"
    return _COLOUR_NAMES[c], pattern, dark, aniso


def coverage_map(arr: np.ndarray, bg_rgb: np.ndarray) -> np.ndarray:
    """Per-pixel subject coverage ``(H, W)`` in [0, 1] for an image ``(H, W, 3)`` on background ``(3,)``.

    Every pixel is modelled as ``bg + a * (base - bg) + b * (shade - bg)`` with ``a, b >= 0`` for one
    subject colour (its base and its pattern shade, so blurred stripes and dots are explained too); the
    colour with the smallest residual gives the coverage ``a + b``. Thresholding at 0.5 puts the boundary
    where anti-aliasing (and blur) puts it, whatever the contrast between subject and background.
    """
    diff = arr.reshape(-1, 3).astype(np.float32) - bg_rgb  # (N, 3)
    best_resid = np.full(len(diff), np.inf, dtype=np.float32)
    best_cov = np.zeros(len(diff), dtype=np.float32)
    for base, shade in zip(_BASE, _SHADE):
        m = np.stack([base - bg_rgb, shade - bg_rgb], axis=1)  # (3, 2)
        # Candidate fits: both inks (unconstrained least squares), base only, shade only.
        both = diff @ np.linalg.pinv(m).T  # (N, 2)
        only = [np.clip(diff @ m[:, k] / max(float(m[:, k] @ m[:, k]), 1.0), 0.0, None) for k in (0, 1)]
        fits = [
            both,
            np.stack([only[0], np.zeros_like(only[0])], 1),
            np.stack([np.zeros_like(only[1]), only[1]], 1),
        ]
        for ab in fits:
            valid = (ab >= 0).all(1)
            resid = np.where(valid, ((diff - ab @ m.T) ** 2).sum(1), np.inf)
            better = resid < best_resid
            best_resid = np.where(better, resid, best_resid)
            best_cov = np.where(better, ab.sum(1), best_cov)
    return np.clip(best_cov, 0.0, 1.0).reshape(arr.shape[:2])


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def estimate_blur(coverage: np.ndarray, fg: np.ndarray) -> float:
    """Rough Gaussian sigma (pixels) of the image from the width of its coverage ramps.

    Edge energy ``sum 4c(1-c)`` near the foreground per boundary pixel is ~1 for a sharp anti-aliased
    edge and grows by ~2 per pixel of blur sigma. Used only to decide which blurred shape templates
    are plausible, so that sharp small shapes are not explained by a blurred template of another shape.
    """
    perimeter = int((fg & ~_erode(fg)).sum())
    if perimeter == 0:
        return 0.0
    near = _dilate(_dilate(fg))
    energy = float((4 * coverage * (1 - coverage))[near].sum())
    return max(0.0, (energy / perimeter - 1.0) / 2.0)


def analyse_image(
    image: Image.Image | np.ndarray, size: int, shapes: tuple[str, ...] = SHAPES
) -> ImageAnalysis:
    """Analyse a generated image; it is first resized (bilinear) to ``size``×``size`` if needed.
    ``shapes``: the world's shape vocabulary the components are classified into."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    arr = np.asarray(image, dtype=np.float32)  # (S, S, 3)
    border = np.concatenate(
        [
            arr[:2].reshape(-1, 3),
            arr[-2:].reshape(-1, 3),
            arr[:, :2].reshape(-1, 3),
            arr[:, -2:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    bg_d = np.linalg.norm(_BG - bg_rgb, axis=1)
    coverage = coverage_map(arr, bg_rgb.astype(np.float32))
    fg = coverage >= 0.5
    max_blur = estimate_blur(coverage, fg) + BLUR_MARGIN
    labels, count = label_components(fg)
    min_area = MIN_AREA_FRACTION * size * size
    detections, noise = [], 0
    for lab in range(1, count + 1):
        ys, xs = np.nonzero(labels == lab)
        if len(ys) < min_area:
            noise += 1
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        comp = labels[y0:y1, x0:x1] == lab
        shape, iou = _classify_shape(comp, max_blur, shapes)
        interior = _erode(comp)
        if interior.sum() < 8:  # too thin to have an interior: use every pixel
            interior = comp
        colour, pattern, dark, aniso = _colour_and_pattern(arr[y0:y1, x0:x1], interior)
        # Box side from the area (stable under blur, unlike the extent of thin tips and corners).
        side = math.sqrt(len(ys) / _fill_ratio(shape)) / size
        detections.append(
            Detection(
                shape=shape,
                colour=colour,
                pattern=pattern,
                size="large" if side > SIZE_THRESHOLD else "small",
                x=(x0 + x1) / 2 / size,
                y=(y0 + y1) / 2 / size,
                size_frac=side,
                area=len(ys),
                shape_iou=iou,
                dark_fraction=dark,
                anisotropy=aniso,
            )
        )
    detections.sort(key=lambda d: -d.area)
    return ImageAnalysis(
        _BG_NAMES[int(bg_d.argmin())], tuple(float(v) for v in bg_rgb), float(bg_d.min()), detections, noise
    )


# ----------------------------------------------------------------------------- scoring
def _pattern_sim(a: str, b: str) -> float:
    return 1.0 if a == b else (0.5 if "solid" not in (a, b) else 0.0)


def identity_similarity(subject: Subject, det: Detection) -> float:
    """Colour 2 + shape 2 + pattern 1 (0.5 for the other non-solid pattern)."""
    return (
        2.0 * (subject.colour == det.colour)
        + 2.0 * (subject.shape == det.shape)
        + _pattern_sim(subject.pattern, det.pattern)
    )


def position_tolerance(n_targets: int) -> float:
    """Half the distance between neighbouring layout positions (fraction of the width)."""
    xs = sorted(LAYOUTS[n_targets].values())
    return min(b - a for a, b in zip(xs, xs[1:])) / 2


def _position_ok(det: Detection, x: float, tol: float) -> bool:
    return abs(det.x - x) <= tol and abs(det.y - 0.5) <= 0.25


def match_targets(case: Case, analysis: ImageAnalysis) -> list[Detection | None]:
    """One-to-one assignment of requested subjects to detections maximising identity + size + position."""
    targets, dets = case.targets, analysis.detections[:MAX_MATCH_COMPONENTS]
    xs, tol = LAYOUTS[len(targets)], position_tolerance(len(targets))

    def gain(t, d) -> float:
        return (
            identity_similarity(t.subject, d)
            + 0.5 * (t.subject.size == d.size)
            + _position_ok(d, xs[t.position], tol)
        )

    best, best_gain = [None] * len(targets), -1.0
    slots = list(range(len(dets))) + [None] * len(targets)  # None = not found
    for combo in itertools.permutations(slots, len(targets)):
        used = [c for c in combo if c is not None]
        if len(used) != len(set(used)):
            continue
        g = sum(gain(t, dets[c]) for t, c in zip(targets, combo) if c is not None)
        if g > best_gain:
            best, best_gain = [None if c is None else dets[c] for c in combo], g
    return best


def _combine(values: list[float]) -> float:
    """Case-level value of per-subject values: half their mean, half their minimum (one bad subject in
    three still costs a lot, as a strict human judge would rate it)."""
    return 0.5 * sum(values) / len(values) + 0.5 * min(values)


def score_case(case: Case, analysis: ImageAnalysis) -> dict:
    """PF/SC scores (0–10), DIS predictions (distinction tasks) and the per-subject evidence."""
    matched = match_targets(case, analysis)
    xs, tol = LAYOUTS[len(case.targets)], position_tolerance(len(case.targets))
    bg_ok = analysis.background == case.background.colour and analysis.background_distance <= BG_MATCH
    credits, attrs, evidence = [], [], []
    for t, d in zip(case.targets, matched):
        s = t.subject
        present = d is not None and (d.colour == s.colour or d.shape == s.shape)
        pos_ok = present and _position_ok(d, xs[t.position], tol)
        credits.append(present * (0.5 + 0.5 * pos_ok))
        factor = 0.0
        if present:
            factor = 1.0
            for attr, f in ATTRIBUTE_FACTORS.items():
                if getattr(s, attr) != getattr(d, attr):
                    factor *= f
        attrs.append(factor)
        evidence.append(
            {
                "requested": {**s.to_dict(), "position": t.position},
                "present": bool(present),
                "position_ok": bool(pos_ok),
                "attribute_factor": factor,
                "detection": asdict(d) if d is not None else None,
            }
        )
    present_ids = {id(d) for d, e in zip(matched, evidence) if e["present"]}
    extras = sum(1 for d in analysis.detections if id(d) not in present_ids)
    pf = 10.0 * _combine(credits) * (1.0 if bg_ok else WRONG_BG_FACTOR) - EXTRA_PENALTY * extras
    sc = 10.0 * _combine(attrs)
    if case.scene_index is not None and not bg_ok:
        sc *= WRONG_BG_FACTOR
    out = {
        "PF_score": round(min(max(pf, 0.0), 10.0), 4),
        "SC_score": round(sc, 4),
        "judge": {
            "background": analysis.background,
            "background_distance": round(analysis.background_distance, 2),
            "background_ok": bool(bg_ok),
            "extra_subjects": extras,
            "noise_components": analysis.noise_components,
            "subjects": evidence,
        },
    }
    if case.task_type.startswith("distinction"):
        out["DIS_pred"] = dis_predictions(case, analysis)
    return out


def dis_predictions(case: Case, analysis: ImageAnalysis) -> list[list[int]]:
    """Per reference, per candidate (nesting of ``subject_label``): 1 iff some detection is attributed
    to that candidate. A detection is attributed to its unique most similar candidate among all
    candidates of all references (``identity_similarity``), provided colour and shape agree."""
    preds = [[0] * len(r.placements) for r in case.references]
    cands = [(i, j, p.subject) for i, r in enumerate(case.references) for j, p in enumerate(r.placements)]
    if not cands:
        return preds
    for d in analysis.detections:
        sims = [identity_similarity(s, d) for _, _, s in cands]
        k = int(np.argmax(sims))
        i, j, s = cands[k]
        if sims.count(sims[k]) == 1 and s.colour == d.colour and s.shape == d.shape:
            preds[i][j] = 1
    return preds


def shape_vocabulary(case: Case) -> tuple[str, ...]:
    """The shapes a detection may be: the standard world's, plus the novel shapes this case shows (so a
    standard benchmark is judged exactly as before, and a heart can only be seen where one was asked for)."""
    used = {p.subject.shape for r in case.references for p in r.placements}  # targets come from these
    return SHAPES + tuple(s for s in NOVEL_SHAPES if s in used)


def judge_record(record: dict, image: Image.Image) -> dict:
    """Aggregation record (eval/aggregation.py) for one benchmark record and its generated image."""
    case = case_from_record(record)
    out = {"key": record["key"], "task_type": record["task_type"]}
    out.update(score_case(case, analyse_image(image, case.size, shape_vocabulary(case))))
    if "DIS_pred" in out:
        out["subject_label"] = record["subject_label"]
    return out


# ----------------------------------------------------------------------------- benchmark driver
def bench_cases(bench_dir: str) -> list[BenchmarkCase]:
    """Cases of ``bench_dir/data.jsonl``, read by the shared SconeEval reader (data/benchmark_cases.py) and each
    validated by ``case_from_record``; any bad record raises, naming the file, line and key."""
    cases, problems = read_cases(os.path.join(bench_dir, "data.jsonl"))
    if problems:
        raise ValueError(
            f"{len(problems)} bad record(s) in {bench_dir}/data.jsonl: " + "; ".join(map(str, problems[:5]))
        )
    if not cases:
        raise ValueError(f"{bench_dir}/data.jsonl holds no records")
    for c in cases:
        case_from_record(c.raw)
    return cases


def load_bench(bench_dir: str) -> list[dict]:
    """The records of ``bench_cases``."""
    return [c.raw for c in bench_cases(bench_dir)]


class ShapeWorldScorer(Scorer):
    """The geometric judge as a scorer of the shared driver (eval/scoring.py): no judge request; a
    missing or unreadable image is a ``failed`` record (counted by the aggregation, never a default score)."""

    def base(self, case: BenchmarkCase, image_dir: Path) -> dict:
        return {"key": case.key, "task_type": case.task_type}

    def prepare(self, case: BenchmarkCase, image_dir: Path) -> Image.Image:
        path = image_dir / case.task_type / f"{case.key}.png"
        if not path.is_file():
            raise ValueError(f"missing output image {path}")
        try:
            with Image.open(path) as img:
                img.load()
                return pil_img2rgb(img)
        except OSError as e:
            raise ValueError(f"unreadable image {path}: {e}") from None

    def record(self, case: BenchmarkCase, image: Image.Image, results: dict) -> dict:
        return judge_record(case.raw, image)


def attribute_accuracy(records: list[dict], shape: str | None = None) -> dict:
    """Where the points go: the share of requested subjects (over all judged ``records``) found with the
    right value of each attribute (a missing subject counts as wrong), and of cases with the right
    background. Chance for a model that ignores the references: shape 1/6, colour 1/7, pattern 1/3,
    size 1/2 (the instruction names only the shape, or for intra-category distinction one attribute).
    ``shape``: count only the requested subjects of that shape (a novel concept's accuracy)."""
    subjects = [s for r in records if not r.get("failed") for s in r["judge"]["subjects"]]
    if shape is not None:
        subjects = [s for s in subjects if s["requested"]["shape"] == shape]
    cases = [r for r in records if not r.get("failed")]
    out = {"subjects": len(subjects), "cases": len(cases)}
    if not subjects:
        return out
    for key in ("present", "position_ok"):
        out[key] = sum(s[key] for s in subjects) / len(subjects)
    for attr in ("shape", "colour", "pattern", "size"):
        ok = sum(s["present"] and s["detection"][attr] == s["requested"][attr] for s in subjects)
        out[attr] = ok / len(subjects)
    out["background_ok"] = sum(r["judge"]["background_ok"] for r in cases) / len(cases)
    return out


def render_attribute_accuracy(acc: dict) -> str:
    """Markdown table of ``attribute_accuracy``."""
    keys = [k for k in acc if k not in ("subjects", "cases")]
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    row = "| " + " | ".join(f"{100 * acc[k]:.0f}%" for k in keys) + " |\n"
    title = f"\nAttributes right ({acc['subjects']} requested subjects, {acc['cases']} cases):\n\n"
    return title + head + row if keys else ""


def score_benchmark(
    bench_dir: str,
    result_dir: str,
    rounds: int | None = None,
    output_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Judge every sampling round and aggregate with the SconeEval code (eval/aggregation.py).

    Images: ``result_dir/round{r}/{task_type}/{key}.png`` for r < ``rounds`` (``None``: autodetect, else a
    flat ``result_dir/{task_type}/{key}.png`` = one round), as for the GPT judge (eval/scoring.py). The
    judge is deterministic, so there is one judging pass per round (group ``(r, 0)``). With
    ``output_dir``, per-case records go to ``output_dir/round{r}/scoring0/score.jsonl``.
    """
    cases = bench_cases(bench_dir)
    units = make_units(cases, round_dirs(Path(result_dir), rounds))
    result, groups = scoring.score_benchmark(
        "sconeeval", units, ShapeWorldScorer(), output_dir, progress=progress
    )
    failed = result["cases"]["failed"]
    if failed:
        logger.warning(
            "%s: %d of %d judged cases have no usable output image", result_dir, failed, len(units)
        )
    result["attributes"] = attribute_accuracy([x for g in groups.values() for x in g])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score generated ShapeWorld images with the geometric judge.")
    ap.add_argument("--bench_dir", required=True, help="benchmark folder (make_shapeworld output)")
    ap.add_argument("--result_dir", required=True, help="images: round{i}/{task_type}/{key}.png or flat")
    ap.add_argument("--rounds", type=int, default=None, help="sampling rounds to read (default: autodetect)")
    ap.add_argument("--output_dir", default=None, help="default: <result_dir>/shapeworld_scores")
    ap.add_argument("--method", default=None, help="row label in the table (default: result_dir's name)")
    ap.add_argument("--no_progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    output_dir = args.output_dir or os.path.join(args.result_dir, "shapeworld_scores")
    result = score_benchmark(args.bench_dir, args.result_dir, args.rounds, output_dir, not args.no_progress)
    method = args.method or os.path.basename(os.path.normpath(args.result_dir))
    md = write_outputs(
        result,
        output_dir,
        method=method,
        extra={"judge": "shapeworld", "bench_dir": args.bench_dir},
        extra_markdown=render_attribute_accuracy(result["attributes"]),
    )
    sys.stdout.write(md)
    logger.info("scores written to %s", output_dir)
    return 1 if result["cases"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
