"""ShapeWorld questions with known answers (data/synthetic/vqa.py), think plans, their training datasets
and the scorer (eval/shapeworld_vqa.py)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from data.synthetic.make_shapeworld import make_shapeworld
from data.synthetic.shapeworld import generate_cases
from data.synthetic.vqa import (
    HELD_OUT,
    QUESTION_TYPES,
    TEMPLATES,
    case_questions,
    normalise_answer,
    phrasings,
    plan_text,
)
from eval.shapeworld_vqa import answer_all, is_right, load_questions, markdown, summarise

ROOT = Path(__file__).resolve().parents[1]
_ATTRS = ("size", "colour", "pattern", "shape")


def _template_regex(qtype: str, template: int) -> re.Pattern:
    text = re.escape(TEMPLATES[qtype][template])
    for field in ("name", "Name", "value"):
        text = text.replace(re.escape("{" + field + "}"), f"(?P<{field}>.+?)")
    return re.compile("^" + text + "$")


def _resolve(name: str, placements) -> list:
    """The placements a name like "the red dotted one" / "the star" / "the one on the left" picks."""
    name = name.lower()
    assert name.startswith("the ")
    words = name[4:].split()
    if len(words) == 4 and words[:3] == ["one", "on", "the"]:
        order = sorted(placements, key=lambda p: p.x)
        places = {2: ("left", "right"), 3: ("left", "middle", "right")}[len(order)]
        return [order[places.index(words[3])]]
    if words == ["subject"]:
        return list(placements)
    if words[-1] == "one":
        words = words[:-1]
    return [p for p in placements if all(w in {getattr(p.subject, a) for a in _ATTRS} for w in words)]


def _cases(n=60, seed=0):
    return generate_cases(seed, "train", n)[0]


def test_every_type_has_at_least_five_phrasings_and_held_out_ones():
    for qtype in QUESTION_TYPES:
        assert len(TEMPLATES[qtype]) >= 5
        seen, unseen = set(phrasings(qtype, True)), set(phrasings(qtype, False))
        assert len(unseen) == HELD_OUT and not seen & unseen
        assert seen | unseen == set(range(len(TEMPLATES[qtype])))


def test_answers_are_the_truth_about_the_named_subject():
    """Every question resolves (by its own words) to exactly one subject, and the answer is true of it."""
    counts = Counter()
    for c, case in enumerate(_cases()):
        images = [f"c{c}_r{r}.png" for r in range(len(case.references))]
        for seen in (True, False):
            for q in case_questions(case, images, random.Random(c), seen):
                counts[q["type"]] += 1
                assert q["seen"] is seen and (q["phrasing"] in phrasings(q["type"], True)) is seen
                human = q["conversations"][0]["value"]
                assert human.count("<image>") == len(q["image"])
                text = human.split("\n", 1)[1]
                m = _template_regex(q["type"], q["phrasing"]).match(text)
                assert m, (q["type"], text)
                refs = [case.references[images.index(im)] for im in q["image"]]
                subs = [p for r in refs for p in r.placements]
                if q["type"] == "count":
                    assert q["answer"] == str(len(subs))
                    continue
                if q["type"] == "describe":
                    for p in subs:
                        assert p.subject.description()[2:] in q["answer"]
                    continue
                if q["type"] == "which":
                    value = m["value"]
                    picked = [p for p in subs if value in (p.subject.colour, p.subject.pattern)]
                    assert len(picked) == 1 and picked[0].subject.shape == q["answer"]
                    continue
                name = m.groupdict().get("name") or m["Name"][0].lower() + m["Name"][1:]
                picked = _resolve(name, subs)
                assert len(picked) == 1, (text, [p.subject for p in subs])
                p = picked[0]
                if q["type"] == "which_image":
                    owner = next(k for k, r in enumerate(refs) if p in r.placements)
                    assert q["answer"] == f"image {owner + 1}"
                elif q["type"] == "position":
                    if len(subs) > 1:
                        order = sorted(subs, key=lambda o: o.x)
                        places = {2: ("left", "right"), 3: ("left", "middle", "right")}[len(subs)]
                        assert q["answer"] == places[order.index(p)]
                    else:
                        dx, dy = p.x - 0.5, p.y - 0.5
                        expect = (
                            ("left" if dx < 0 else "right")
                            if abs(dx) >= abs(dy)
                            else ("top" if dy < 0 else "bottom")
                        )
                        assert q["answer"] == expect
                else:
                    assert q["answer"] == getattr(p.subject, q["type"])
                    assert q["answer"] not in name.split()  # the name never gives the answer away
                assert 0 < q["chance"] <= 1
    assert set(counts) == set(QUESTION_TYPES), counts


def test_plan_names_every_requested_subject_and_the_background():
    for case in _cases(12):
        plan = plan_text(case)
        assert plan.startswith("<think>") and plan.endswith("</think>")
        for t in case.targets:
            assert t.subject.description() in plan
        assert f"{case.background.texture} {case.background.colour} background" in plan


def _digest(folder: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob(pattern))
    }


def test_questions_and_plans_change_no_existing_world(tmp_path):
    plain, extra = tmp_path / "plain", tmp_path / "extra"
    make_shapeworld(str(plain), 24, 6, seed=3, rows_per_file=10)
    m = make_shapeworld(str(extra), 24, 6, seed=3, rows_per_file=10, num_vqa=80, num_vqa_eval=4, num_think=7)
    for pattern in ("parquet_data/shapeworld_*_candidate/*.parquet", "bench/**/*.png", "bench/data.jsonl"):
        a, b = _digest(plain, pattern), _digest(extra, pattern)
        assert a and a == b, pattern
    assert m["dataset_info"]["vlm_sft"]["shapeworld_vqa"]["num_total_samples"] == 80
    assert m["args"]["vqa_eval_seed"] == 4
    assert m["dataset_info"]["s2i_think"]["shapeworld_think"]["num_total_samples"] == 7
    train = [json.loads(x) for x in (extra / "vqa" / "shapeworld_vqa.jsonl").read_text().splitlines()]
    assert all(q["seen"] for q in train) and len(train) == 80
    for q in train:  # every image a question names exists
        for im in q["image"]:
            assert (extra / "vqa" / "images" / im).is_file()
    held = load_questions(str(extra / "vqa_eval" / "shapeworld_vqa_eval.jsonl"))
    assert {q["seen"] for q in held} == {True, False}
    assert {q["type"] for q in held} >= set(QUESTION_TYPES) - {"which"}
    # the same arguments give the same bytes
    again = tmp_path / "again"
    make_shapeworld(str(again), 24, 6, seed=3, rows_per_file=10, num_vqa=80, num_vqa_eval=4, num_think=7)
    for pattern in ("vqa/*.jsonl", "vqa_eval/*.jsonl", "vqa/images/*.png", "parquet_data/shapeworld_think/*"):
        assert _digest(extra, pattern) == _digest(again, pattern), pattern


def test_held_out_world_must_be_another_seed(tmp_path):
    with pytest.raises(ValueError, match="vqa_eval_seed must differ"):
        make_shapeworld(str(tmp_path / "w"), 6, 0, seed=2, num_vqa_eval=3, vqa_eval_seed=2)
    with pytest.raises(ValueError, match=">= 0"):
        make_shapeworld(str(tmp_path / "w"), 6, 0, seed=2, num_vqa=-1)


def test_think_dataset_teaches_the_plan_after_the_instruction(tmp_path):
    from data.data_config import build_groups
    from modeling.prompts import THINK_PROMPT_GENERATE
    from modeling.tokenizer import encode, load_tokenizer

    m = make_shapeworld(str(tmp_path / "w"), 12, 0, seed=0, rows_per_file=10, num_think=4)
    tok = load_tokenizer(str(ROOT / "ckpts" / "scone-tiny"))[0]
    transforms = {
        "image_transform_args": {"image_stride": 16, "max_image_size": 96, "min_image_size": 32},
        "vit_image_transform_args": {"image_stride": 14, "max_image_size": 70, "min_image_size": 28},
    }
    config = {
        "s2i_think": {
            "dataset_names": ["shapeworld_think"],
            "num_used_data": [1],
            "weight": 1,
            **transforms,
            "dataset_info": m["dataset_info"]["s2i_think"],
        }
    }
    (group,) = build_groups(config, tok, rank=0, world_size=1, data_seed=0, data_root=None)
    sample = next(group.dataset.iterate(0, 0, None, Counter()))
    kinds = [(p["type"], p["loss"], p["enable_cfg"]) for p in sample["sequence_plan"]]
    n_refs = (len(kinds) - 4) // 2
    assert kinds[0] == ("text", 0, 0)  # the system prompt: never dropped
    assert kinds[1 : 1 + 2 * n_refs] == [("vae_image", 0, 1), ("vit_image", 0, 1)] * n_refs
    assert kinds[-3:] == [("text", 0, 1), ("text", 1, 0), ("vae_image", 1, 0)]
    texts = sample["text_ids_list"]
    assert texts[0] == encode(tok, THINK_PROMPT_GENERATE)
    cases = generate_cases(0, "train", 12)[0]
    assert texts[-1] in [encode(tok, plan_text(c)) for c in cases]


def test_think_rows_need_a_plan():
    from data.s2i_dataset import S2IThinkDataset

    ds = S2IThinkDataset.__new__(S2IThinkDataset)
    with pytest.raises(ValueError, match="'plan' must be a non-empty string"):
        ds.parse_row(
            {"image": [b"x", b"y"], "instruction": "Place it.", "plan": " "}, random.Random(0), Counter()
        )


@pytest.mark.parametrize(
    ("prediction", "answer", "right"),
    [
        ("Red.", "red", True),
        ("the star", "star", True),
        ("Two", "2", True),
        ("Image 3.", "image 3", True),
        ("<think>it is the left one</think> left", "left", True),
        ("reddish", "red", False),
        ("", "0", False),
        ("From left to right: a large green solid square; on a plain azure background",
         "From left to right: a large green solid square; on a plain azure background.", True),
    ],
)  # fmt: skip
def test_answers_are_compared_after_normalising(prediction, answer, right):
    assert is_right(prediction, answer) is right
    assert normalise_answer(answer) == normalise_answer(normalise_answer(answer))


def test_summary_reports_accuracy_per_phrasing_split_with_chance_and_failures():
    rows = [
        {"type": "colour", "seen": False, "chance": 1 / 7, "right": True},
        {"type": "colour", "seen": False, "chance": 1 / 7, "right": False},
        {"type": "colour", "seen": True, "chance": 1 / 7, "right": True},
        {"type": "count", "seen": True, "chance": 0.25, "failed": "RuntimeError: x"},
    ]
    s = summarise(rows)
    assert s["colour"]["unseen_accuracy"] == 0.5 and s["colour"]["seen_accuracy"] == 1.0
    assert s["colour"]["chance"] == pytest.approx(1 / 7)
    assert s["count"] == {
        "questions": 1, "failed": 1, "unseen_n": 0, "unseen_accuracy": None, "seen_n": 0, "seen_accuracy": None,
        "chance": None,
    }  # fmt: skip
    assert s["all"]["questions"] == 4 and s["all"]["failed"] == 1
    assert "| colour | 3 | 50.0% | 100.0% | 14.3% | 0 |" in markdown(s)


def test_bad_question_files_and_escaping_images_are_refused(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"image": ["a.png"], "conversations": [{"from": "human", "value": "<image>\\nQ"}]}\n')
    with pytest.raises(ValueError, match="line 1: not a ShapeWorld question"):
        load_questions(str(bad))
    bad.write_text(
        json.dumps({"image": ["a.png"], "conversations": [{"from": "human", "value": "Q"}], "type": "count",
                    "answer": "1", "seen": True, "chance": 0.25}) + "\n"
    )  # fmt: skip
    with pytest.raises(ValueError, match="1 image\\(s\\) but 0 <image> tags"):
        load_questions(str(bad))
    # an image path leaving the images folder: the question is recorded as failed, the model never asked
    (tmp_path / "images").mkdir()
    escaping = {"index": 0, "type": "count", "seen": True, "chance": 0.25, "answer": "1", "question": "Q",
                "images": ["../q.jsonl"]}  # fmt: skip
    rows = answer_all(object(), [escaping], str(tmp_path / "images"), str(tmp_path / "out"), False, 8)
    assert "prediction" not in rows[0] and "leaves the benchmark folder" in rows[0]["failed"]


def test_scorer_asks_the_model_and_resumes(tmp_path):
    """The CLI on the shipped tiny model: answers are written as they come; a rerun asks nothing again."""
    from eval import shapeworld_vqa

    make_shapeworld(str(tmp_path / "w"), 0, 0, seed=0, num_vqa_eval=1)
    questions = tmp_path / "w" / "vqa_eval" / "shapeworld_vqa_eval.jsonl"
    out = tmp_path / "out"
    argv = [
        "--model_path",
        str(ROOT / "ckpts" / "scone-tiny"),
        "--questions",
        str(questions),
        "--out",
        str(out),
    ]
    assert shapeworld_vqa.main([*argv, "--limit", "3"]) == 0
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("prediction" in json.loads(x) for x in lines)
    assert shapeworld_vqa.main([*argv, "--limit", "4"]) == 0
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["types"]["all"]["questions"] == 4


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("plans") / "w"
    make_shapeworld(str(out), 0, 6, seed=0)
    return out / "bench"


def test_plans_are_scored_against_the_case(small_bench):
    from data.synthetic.shapeworld import case_from_record
    from eval.shapeworld import load_bench
    from eval.shapeworld_plans import markdown as plan_table
    from eval.shapeworld_plans import plan_scores

    records = load_bench(str(small_bench))
    right = {(0, r["key"]): plan_text(case_from_record(r)) for r in records}
    s = plan_scores(records, right)["all"]
    assert s == {
        "plans": 6,
        "missing": 0,
        "subjects_named": 1.0,
        "cases_all_named": 1.0,
        "background_named": 1.0,
    }
    first = case_from_record(records[0])
    t = first.targets[0].subject
    wrong_colour = "red" if t.colour != "red" else "blue"
    wrong = dict(right)
    wrong[(0, records[0]["key"])] = right[(0, records[0]["key"])].replace(
        f" {t.colour} {t.pattern}", f" {wrong_colour} {t.pattern}"
    )
    del wrong[(0, records[1]["key"])]
    s = plan_scores(records, wrong)
    assert s["all"]["missing"] == 1 and s["all"]["plans"] == 5
    assert s[records[0]["task_type"]]["cases_all_named"] == 0.0
    assert "| all | 5 |" in plan_table(s)


def test_benchmark_think_mode_logs_each_plan(small_bench, tmp_path):
    """eval.generate --think on the shipped model: every case's reasoning is logged and scored."""
    from eval import shapeworld_plans
    from inference import benchmark

    out = tmp_path / "gen"
    argv = ["--model_path", str(ROOT / "ckpts" / "scone-tiny"), "--benchmark_dir", str(small_bench)]
    argv += [
        "--output_dir",
        str(out),
        "--limit",
        "2",
        "--num_timesteps",
        "2",
        "--think",
        "--max_think_tokens",
        "6",
    ]
    assert benchmark.main([*argv, "--no_progress"]) == 0
    logs = [json.loads(x) for x in (out / "generation_log.rank0.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(isinstance(x["thought"], str) and x["think"] for x in logs)
    # the scorer reads them; the 4 cases beyond --limit have no plan: missing, exit 1
    assert shapeworld_plans.main(["--bench_dir", str(small_bench), "--result_dir", str(out)]) == 1
    scores = json.loads((out / "plans.json").read_text())
    assert scores["all"]["plans"] == 2 and scores["all"]["missing"] == 4
