"""ShapeWorld judge: image analysis, rubric, robustness to mild degradation, CLI + SconeEval aggregation."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from data.synthetic.make_shapeworld import make_shapeworld
from data.synthetic.render import (
    BACKGROUND_COLOURS,
    PATTERNS,
    SHAPES,
    SIZES,
    SUBJECT_COLOURS,
    TEXTURES,
    Background,
    Placement,
    Subject,
    render_image,
)
from data.synthetic.shapeworld import LAYOUTS, Case, case_from_record, generate_cases, render_case
from eval.shapeworld import analyse_image, label_components, main, score_case


# ----------------------------------------------------------------------------- degradations
def jpeg(img: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def blur(img: Image.Image, sigma: float = 0.8) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(sigma))


def vae_like(img: Image.Image) -> Image.Image:
    """2x down (box) and bicubic up, plus mild noise: the softness of a decoded latent."""
    s = img.size[0]
    up = np.asarray(img.resize((s // 2, s // 2), Image.BOX).resize((s, s), Image.BICUBIC), dtype=np.float32)
    noisy = up + np.random.default_rng(0).normal(0.0, 3.0, up.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


DEGRADATIONS = {"jpeg90": jpeg, "blur0.8": blur, "vae_like": vae_like}


def com(scores: dict) -> float:
    return math.sqrt(scores["PF_score"] * scores["SC_score"])


def labels_of(case: Case) -> list[list[int]]:
    return [list(r.labels) for r in case.references]


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return generate_cases(11, "judge-test", 48, 96, scene_prob=0.4)[0]


# ----------------------------------------------------------------------------- analysis
def test_label_components():
    mask = np.zeros((6, 7), dtype=bool)
    mask[0:2, 0:2] = True
    mask[3:6, 4] = True
    mask[5, 4:7] = True
    mask[2, 2] = True  # touches the first block only diagonally: separate under 4-connectivity
    labels, n = label_components(mask)
    assert n == 3
    assert len({labels[0, 0], labels[5, 6], labels[2, 2]}) == 3
    assert labels[3, 4] == labels[5, 6] and (labels[~mask] == 0).all()


def test_every_subject_attribute_is_recognised():
    bgs = list(BACKGROUND_COLOURS)
    for k, (shape, colour, pattern, size) in enumerate(
        itertools.product(SHAPES, SUBJECT_COLOURS, PATTERNS, SIZES)
    ):
        bg = Background(bgs[k % len(bgs)], TEXTURES[k % len(TEXTURES)])
        img = render_image(
            96, bg, [Placement(Subject(shape, colour, pattern, size), 0.3 + 0.05 * (k % 5), 0.5)]
        )
        for name, f in (("clean", lambda x: x), ("blur", blur)) if k % 2 else (("clean", lambda x: x),):
            a = analyse_image(f(img), 96)
            assert a.background == bg.colour and len(a.detections) == 1, (
                name,
                shape,
                colour,
                pattern,
                size,
                bg,
            )
            d = a.detections[0]
            got = (d.shape, d.colour, d.pattern, d.size)
            assert got == (shape, colour, pattern, size), (name, bg)
            assert abs(d.x - (0.3 + 0.05 * (k % 5))) < 0.02 and abs(d.y - 0.5) < 0.02


def test_resized_output_is_analysed_at_world_size():
    img = render_image(
        96, Background("sand"), [Placement(Subject("triangle", "blue", "dotted", "large"), 0.25, 0.5)]
    )
    big = img.resize((256, 256), Image.BICUBIC)  # models often generate at another resolution
    d = analyse_image(big, 96).detections
    assert [(x.shape, x.colour, x.pattern, x.size) for x in d] == [("triangle", "blue", "dotted", "large")]


# ----------------------------------------------------------------------------- rubric
def test_ground_truth_scores_perfectly(cases):
    for case in cases:
        _, target = render_case(case)
        s = score_case(case, analyse_image(target, case.size))
        assert s["PF_score"] == 10 and s["SC_score"] == 10, (case.instruction, s["judge"])
        if case.task_type.startswith("distinction"):
            assert s["DIS_pred"] == labels_of(case)
        else:
            assert "DIS_pred" not in s


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_judge_is_robust_to_mild_degradation(cases, name):
    for case in cases:
        _, target = render_case(case)
        s = score_case(case, analyse_image(DEGRADATIONS[name](target), case.size))
        assert com(s) >= 9.5, (name, case.instruction, s["judge"])
        if case.task_type.startswith("distinction"):
            assert s["DIS_pred"] == labels_of(case), (name, case.instruction)


def _render(case: Case, placements: list[Placement], background: Background | None = None) -> Image.Image:
    return render_image(case.size, background or case.background, placements)


def corruptions(case: Case) -> dict[str, Image.Image]:
    """Target images with exactly one kind of mistake."""
    p = case.target_placements()
    out = {"missing": _render(case, p[1:])}
    if len(p) > 1:
        a, b = p[0], p[1]
        out["swapped"] = _render(case, [dataclasses.replace(a, x=b.x), dataclasses.replace(b, x=a.x), *p[2:]])
    else:
        other = next(x for x in LAYOUTS[1].values() if x != p[0].x)
        out["wrong_position"] = _render(case, [dataclasses.replace(p[0], x=other)])
    s = p[0].subject
    colour = next(c for c in SUBJECT_COLOURS if c != s.colour)
    out["wrong_colour"] = _render(
        case, [dataclasses.replace(p[0], subject=dataclasses.replace(s, colour=colour)), *p[1:]]
    )
    bg = next(c for c in BACKGROUND_COLOURS if c not in (case.background.colour, "white"))
    out["wrong_background"] = _render(case, p, Background(bg, case.background.texture))
    if case.task_type.startswith("distinction"):
        t = case.targets[0]
        ref = case.references[t.ref_index]
        other = next(q.subject for j, q in enumerate(ref.placements) if j != t.candidate_index)
        out["distractor_instead"] = _render(case, [dataclasses.replace(p[0], subject=other), *p[1:]])
        extra = Placement(other, p[0].x, 0.81)  # below the target, not touching it
        out["distractor_added"] = _render(case, [*p, extra])
    return out


# Upper bounds on COM for one mistake (means over cases are much lower, see docs/shapeworld.md).
MAX_COM = {
    "missing": 3.6,
    "swapped": 7.7,
    "wrong_position": 7.1,
    "wrong_colour": 7.5,
    "wrong_background": 7.8,
    "distractor_instead": 8.0,
    "distractor_added": 9.0,
}


def test_mistakes_score_low_and_dis_catches_them(cases):
    seen = {k: [] for k in MAX_COM}
    for case in cases:
        for name, img in corruptions(case).items():
            s = score_case(case, analyse_image(img, case.size))
            seen[name].append(com(s))
            assert com(s) <= MAX_COM[name], (name, case.instruction, s)
            if not case.task_type.startswith("distinction"):
                continue
            preds, labels = s["DIS_pred"], labels_of(case)
            t = case.targets[0]
            if name in ("missing", "wrong_colour", "distractor_instead"):
                assert preds[t.ref_index][t.candidate_index] == 0, (name, case.instruction)
            if name in ("distractor_instead", "distractor_added"):
                wrong = [
                    (i, j) for i, r in enumerate(preds) for j, v in enumerate(r) if v and not labels[i][j]
                ]
                assert wrong, (name, case.instruction)
            if name in ("swapped", "wrong_position", "wrong_background"):
                assert preds == labels  # presence is unaffected by layout mistakes
    assert all(seen[k] for k in MAX_COM)
    assert np.mean(seen["missing"]) < 2.5 and np.mean(seen["wrong_colour"]) < 7.0
    assert np.mean(seen["wrong_background"]) < 7.5


def test_blank_and_cluttered_outputs():
    case = generate_cases(2, "clutter", 4)[0][2]  # distinction_single_cross
    blank = render_image(case.size, case.background)
    s = score_case(case, analyse_image(blank, case.size))
    assert s["PF_score"] == 0 and s["SC_score"] == 0
    assert s["DIS_pred"] == [[0] * len(r.placements) for r in case.references]
    # copying the whole reference image (all candidates, wrong background) is not the task
    refs, _ = render_case(case)
    s = score_case(case, analyse_image(refs[0], case.size))
    assert com(s) < 6 and sum(map(sum, s["DIS_pred"])) == len(case.references[0].placements)


# ----------------------------------------------------------------------------- CLI + aggregation
@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swj")
    make_shapeworld(str(out), 0, 18, 5)
    return out / "bench"


def test_cli_ground_truth_and_rounds(bench, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(bench / "ground_truth", results / "round0")
    shutil.copytree(bench / "ground_truth", results / "round1")
    records = [json.loads(x) for x in (bench / "data.jsonl").read_text().splitlines()]
    # round 1: one case drawn wrong (its first subject in another colour), one output missing
    bad = records[0]
    case = case_from_record(bad)
    p = case.target_placements()
    s = p[0].subject
    wrong = dataclasses.replace(s, colour=next(c for c in SUBJECT_COLOURS if c != s.colour))
    render_image(case.size, case.background, [dataclasses.replace(p[0], subject=wrong), *p[1:]]).save(
        results / "round1" / bad["task_type"] / f"{bad['key']}.png"
    )
    (results / "round1" / records[1]["task_type"] / f"{records[1]['key']}.png").unlink()
    out_dir = tmp_path / "scores"
    rc = main(
        [
            "--bench_dir",
            str(bench),
            "--result_dir",
            str(results),
            "--output_dir",
            str(out_dir),
            "--no_progress",
        ]
    )
    assert rc == 1  # a missing output is reported through the exit code
    md = capsys.readouterr().out
    assert "Comp-Single COM" in md and "Avg DIS" in md and "Overall" in md
    scores = json.loads((out_dir / "scores.json").read_text())
    assert scores["n_groups"] == 2 and scores["cases"]["failed"] == 1
    g0, g1 = scores["groups"]
    assert g0["leaderboard"]["overall"] == pytest.approx(10.0)
    assert g1["tasks"][bad["task_type"]]["COM"] < 10.0
    assert g1["failures"][0]["key"] == records[1]["key"]
    per_case = [
        json.loads(x) for x in (out_dir / "round1" / "scoring0" / "score.jsonl").read_text().splitlines()
    ]
    assert len(per_case) == len(records) and per_case[1]["failed"].startswith("missing output image")
    assert per_case[0]["SC_score"] < 5
    # attribute diagnostics: every requested subject of both rounds but the failed case's, exactly one
    # of them in the wrong colour
    n_subjects = sum(len(r["shapeworld"]["targets"]) for r in records)
    acc = scores["attributes"]
    assert acc["subjects"] == 2 * n_subjects - len(records[1]["shapeworld"]["targets"])
    assert acc["cases"] == 2 * len(records) - 1
    assert acc["colour"] == pytest.approx(1 - 1 / acc["subjects"])
    assert acc["shape"] == acc["pattern"] == acc["size"] == acc["present"] == acc["background_ok"] == 1.0
    assert "Attributes right" in md and "| present | position_ok | shape | colour |" in md
    assert "Attributes right" in (out_dir / "scores.md").read_text()


def test_cli_rejects_a_bad_benchmark(bench, tmp_path):
    broken = tmp_path / "bench"
    shutil.copytree(bench, broken)
    lines = (broken / "data.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["shapeworld"]["targets"][0]["shape"] = "hexagon"
    (broken / "data.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=f"record '{rec['key']}'.*hexagon"):
        main(["--bench_dir", str(broken), "--result_dir", str(broken / "ground_truth"), "--no_progress"])


# ----------------------------------------------------------------------------- novel shape (LoRA concept)
def test_novel_shape_world_and_its_judge(tmp_path):
    from data.synthetic.render import NOVEL_SHAPES
    from eval.shapeworld import attribute_accuracy, judge_record, load_bench, shape_vocabulary

    assert "heart" in NOVEL_SHAPES and "heart" not in SHAPES
    standard = generate_cases(3, "eval", 24)[0]
    assert all(shape_vocabulary(c) == SHAPES for c in standard)  # standard cases: judged as before
    hearts = generate_cases(3, "eval", 24, novel_shape="heart")[0]
    for case in hearts:  # one requested heart per case; hearts only where the concept is asked for
        assert sum(t.subject.shape == "heart" for t in case.targets) == 1, case.instruction
        assert "heart" in case.instruction and shape_vocabulary(case) == SHAPES + ("heart",)
        for r in case.references:
            shapes = [p.subject.shape for p in r.placements]
            assert shapes.count("heart") in (0, 1, len(shapes))
    assert {c.task_type for c in hearts} == {c.task_type for c in standard}
    with pytest.raises(ValueError, match="novel shape"):
        generate_cases(3, "eval", 1, novel_shape="hexagon")

    m = make_shapeworld(str(tmp_path / "w"), num_train=12, num_eval=12, seed=0, novel_shape="heart")
    assert sorted(m["dataset_info"]["s2i"]) == [
        "shapeworld_heart_multi_candidate",
        "shapeworld_heart_single_candidate",
    ]
    records = load_bench(str(tmp_path / "w" / "bench"))
    judged, wrong = [], []
    for rec in records:
        target = Image.open(tmp_path / "w" / "bench" / rec["target_image"])
        judged.append(judge_record(rec, blur(target)))
        # The same image judged without the concept in the vocabulary: the heart becomes another shape.
        case = case_from_record(rec)
        dets = analyse_image(blur(target), case.size).detections
        wrong += [d.shape for d in dets if d.shape not in SHAPES]
    acc = attribute_accuracy(judged, shape="heart")
    assert acc["subjects"] == 12 and acc["shape"] == 1.0 and acc["present"] == 1.0
    assert not wrong
    assert all(r["SC_score"] == 10 for r in judged)
