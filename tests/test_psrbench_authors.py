"""PSRBench --protocol authors against an independent reimplementation of the PSR scripts' scoring
(written here from their documented structure, docs/psrbench.md) on planted detections, and the semantic
request against what their script sends (the same openai SDK call, made by the test)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data.psrbench_cases import case_output_path, write_results_json
from eval import authors_protocol
from eval.authors_protocol import Upstream
from eval.psrbench import evaluate
from eval.psrbench.detection import Box, caption_for
from eval.psrbench.position import position_alignment
from eval.psrbench.subject_consistency import subject_consistency
from tests.fake_judge_server import FakeJudgeServer, Reply, prompt_text
from tests.synthetic_psrbench import make_synthetic_psrbench


# ----------------------------------------------------------------------------- planted world
class Planted:
    """Boxes per (image tag, caption); an image is tagged by its top-left pixel value."""

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image, query):
        tag = int(np.asarray(image.convert("RGB"))[0, 0, 0])
        return [Box(*b) for b in self.boxes.get((tag, caption_for(query)), [])]


class Thumbnail:
    """Embedding = the RGB image shrunk to 4x4, centred: crops of different regions point different ways.
    Like a torchvision pipeline, it raises on an empty image."""

    def embed(self, images):
        rows = []
        for im in images:
            if im.width == 0 or im.height == 0:
                raise ValueError("empty image")
            rows.append(
                np.asarray(im.convert("RGB").resize((4, 4), Image.BILINEAR), np.float64).ravel() - 128
            )
        return torch.tensor(np.stack(rows))


def picture(tag: int, mode: str = "RGB", size=(60, 40)) -> Image.Image:
    """Colour ramps that differ per tag (so that every region looks different); pixel (0, 0) = the tag."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    a = np.stack([(4 * x + 7 * tag) % 256, (6 * y + 3 * tag) % 256, (2 * (x + y) * (1 + tag % 3)) % 256], -1)
    a = a.astype(np.uint8)
    a[0, 0] = (tag, 0, 0)
    img = Image.fromarray(a)
    if mode == "RGBA":
        return img.convert("RGBA")
    if mode == "P":
        return img.convert("P")
    if mode == "L":
        return img.convert("L")
    return img


# ----------------------------------------------------------------------------- upstream, rebuilt
def up_segment(det, img, category, idx=0):
    """segment_pil(_samecategory): the detector transform needs 3 channels; box idx, int(), numpy slice;
    any exception -> the whole image."""
    try:
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError("detector transform")
        x1, y1, x2, y2 = [int(v) for v in det.detect(img, category)[idx].as_list()]
        return Image.fromarray(arr.copy()[y1:y2, x1:x2])
    except (ValueError, IndexError, TypeError):
        return img


def up_features(feat, crops, wholes):
    try:
        f = feat.embed(crops)
    except ValueError:
        f = feat.embed(wholes)
    return f / f.norm(dim=1, keepdim=True)


def up_sc(det, feat, gen, refs, cats):
    n = len(cats)
    if n == 2 and cats[0] == cats[1]:
        idx = [0, 1]
    else:
        idx = [0] * n
    sims = []
    for k in range(n):
        g = up_features(feat, [up_segment(det, gen, cats[k], idx[k])], [gen])
        r = up_features(feat, [up_segment(det, refs[k], cats[k])], [refs[k]])
        sims.append(float((g * r).sum(dim=1)[0]))
    return sum(sims) / n


def up_position(det, gen, instruction, cats):
    vocab = ["to the left of", "to the right of", "on the left of", "on the right of", "above", "on top of",
             "below", "under"]  # fmt: skip
    loc = next((w for w in vocab if w in instruction), None)
    if loc is None:
        return None  # no score: the sample is left out

    def box(cat):
        try:
            arr = np.asarray(gen)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError
            x1, y1, x2, y2 = [int(v) for v in det.detect(gen, cat)[0].as_list()]
            return {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2}
        except (ValueError, IndexError):
            return None

    b1, b2 = box(cats[0]), box(cats[1])
    try:
        c1 = ((b1["x_min"] + b1["x_max"]) / 2, (b1["y_min"] + b1["y_max"]) / 2)
        c2 = ((b2["x_min"] + b2["x_max"]) / 2, (b2["y_min"] + b2["y_max"]) / 2)
        dx, dy = c2[0] - c1[0], c2[1] - c1[1]
        ix = max(0, min(b1["x_max"], b2["x_max"]) - max(b1["x_min"], b2["x_min"]))
        iy = max(0, min(b1["y_max"], b2["y_max"]) - max(b1["y_min"], b2["y_min"]))
        inter = ix * iy
        a1 = (b1["x_max"] - b1["x_min"]) * (b1["y_max"] - b1["y_min"])
        a2 = (b2["x_max"] - b2["x_min"]) * (b2["y_max"] - b2["y_min"])
        iou = inter / (a1 + a2 - inter)
        ok = {"left": dx > 0 and abs(dx) > abs(dy), "right": dx < 0 and abs(dx) > abs(dy),
              "below": dy < 0, "above": dy > 0}  # fmt: skip
        kind = ("left" if "left" in loc else "right" if "right" in loc else
                "below" if loc in ("below", "under") else "above")  # fmt: skip
        if not ok[kind]:
            return 0.0
        return 1.0 if iou < 0.1 else 0.1 / iou
    except (TypeError, ZeroDivisionError):
        return 0.0


# ----------------------------------------------------------------------------- SC and position
SC_CASES = [
    # (generated mode, reference modes, categories, planted boxes {(tag, caption): [...]})
    ("RGB", ["RGB", "RGB"], ["cat", "dog"], {(1, "cat."): [(2, 3, 20, 30)], (1, "dog."): [(30, 5, 58, 35)],
                                               (11, "cat."): [(0, 0, 30, 20)], (12, "dog."): [(5, 5, 40, 40)]}),
    # negative coordinates: int(-5.7) = -5 wraps in numpy (an empty slice here); -0.6 truncates to 0
    ("RGB", ["RGB", "RGB"], ["cat", "dog"], {(1, "cat."): [(-5.7, 3, 20, 30)], (1, "dog."): [(-0.6, -0.2, 30, 20)],
                                               (11, "cat."): [(0, 0, 30, 20)], (12, "dog."): [(5, 5, 40, 40)]}),
    # a box starting above the top edge by more than a pixel, reaching the bottom: a strip of the far border
    ("RGB", ["RGB", "RGB"], ["cat", "dog"], {(1, "cat."): [(4, -3.2, 50, 40)], (1, "dog."): [(2, 2, 70, 90)],
                                               (11, "cat."): [(0, 0, 30, 20)], (12, "dog."): [(5, 5, 40, 40)]}),
    # RGBA generated image, palette and grey references: upstream's detector never sees them
    ("RGBA", ["P", "L"], ["cat", "dog"], {(1, "cat."): [(2, 3, 20, 30)], (1, "dog."): [(30, 5, 58, 35)],
                                            (11, "cat."): [(0, 0, 30, 20)], (12, "dog."): [(5, 5, 40, 40)]}),
    # "Dog" and "dog": one detector query, but not the same category string (upstream: box 0 for both)
    ("RGB", ["RGB", "RGB"], ["Dog", "dog"], {(1, "dog."): [(2, 3, 20, 30), (30, 5, 58, 35)],
                                               (11, "dog."): [(0, 0, 30, 20)], (12, "dog."): [(5, 5, 40, 40)]}),
    # identical strings: the 2-subject rule (boxes 0 and 1); then too few boxes for the second
    ("RGB", ["RGB", "RGB"], ["dog", "dog"], {(1, "dog."): [(2, 3, 20, 30), (30, 5, 58, 35)],
                                               (11, "dog."): [(0, 0, 30, 20)], (12, "dog."): [(5, 5, 40, 40)]}),
    ("RGB", ["RGB", "RGB"], ["dog", "dog"], {(1, "dog."): [(2, 3, 20, 30)], (11, "dog."): [(0, 0, 30, 20)]}),
    # three subjects with a repeated category: upstream's 3-subject script takes box 0 for all
    ("RGB", ["RGB", "RGB", "RGB"], ["cat", "cat", "dog"],
     {(1, "cat."): [(2, 3, 20, 30), (30, 5, 58, 35)], (1, "dog."): [(10, 10, 50, 39)],
      (11, "cat."): [(0, 0, 30, 20)], (12, "cat."): [(3, 3, 33, 33)], (13, "dog."): [(5, 5, 40, 40)]}),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(SC_CASES)))
def test_sc_equals_upstream_reimplementation(case):
    gen_mode, ref_modes, cats, boxes = SC_CASES[case]
    gen = picture(1, gen_mode)
    refs = [picture(11 + k, m) for k, m in enumerate(ref_modes)]
    det, feat = Planted(boxes), Thumbnail()
    ours = subject_consistency(gen, refs, cats, det, feat, rule="upstream")
    assert ours.score == pytest.approx(up_sc(det, feat, gen, refs, cats), abs=1e-6)  # float32 cosines
    general = subject_consistency(gen, refs, cats, det, feat, rule="general")
    if case in (1, 2, 3, 4):  # where our default differs on purpose (clamping, RGB, query-level repeats)
        assert general.score != pytest.approx(ours.score, abs=1e-4)
    if case == 3:
        assert ours.fallbacks == {"not_rgb": 4}  # 2 generated crops + 2 references


POSITION_CASES = [
    ("RGB", "a cat to the left of a dog", {(1, "cat."): [(2, 3, 20, 30)], (1, "dog."): [(30, 5, 58, 35)]}),
    ("RGB", "A cat To the left of a dog", {(1, "cat."): [(2, 3, 20, 30)], (1, "dog."): [(30, 5, 58, 35)]}),
    (
        "RGB",
        "a cat is on the left of a dog",
        {(1, "cat."): [(-8.5, 3, 20, 30)], (1, "dog."): [(2, 5, 58, 35)]},
    ),
    ("RGBA", "a cat above a dog", {(1, "cat."): [(2, 3, 20, 15)], (1, "dog."): [(2, 20, 58, 35)]}),
    ("RGB", "a dog under a Dog", {(1, "dog."): [(2, 25, 20, 38), (2, 1, 20, 12)]}),
    ("RGB", "a cat above a dog", {(1, "cat."): [(5, 5, 5, 5)], (1, "dog."): [(9, 9, 9, 9)]}),  # zero union
]


@pytest.mark.parametrize("case", range(len(POSITION_CASES)))
def test_position_equals_upstream_reimplementation(case):
    mode, instruction, boxes = POSITION_CASES[case]
    gen, det = picture(1, mode), Planted(boxes)
    cats = ["dog", "Dog"] if "Dog" in instruction else ["cat", "dog"]
    ours = position_alignment(gen, instruction, cats, det, rule="upstream")
    expected = up_position(det, gen, instruction, cats)
    assert ours.score == expected if expected is None else ours.score == pytest.approx(expected)
    if case == 1:  # case-mixed phrase: upstream finds no relation; our default does
        assert ours.status == "no_relation"
        assert position_alignment(gen, instruction, cats, det).status == "scored"


# ----------------------------------------------------------------------------- semantic request
STANDIN = '''from openai import OpenAI
client = OpenAI(base_url="http://localhost:17140/v1", api_key="psr")
def image_to_data_url(path):
    return path
class QwenVLScorer:
    def __init__(self):
        self.task = """
        Rate the WHAT of this image against: {}
        Answer as [Thought]: ... [Score]: ...
        """
    def __call__(self, prompt, images):
        response = client.chat.completions.create(
            model="Qwen/Qwen2.5-VL-7B-Instruct",
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": images[0]}},
                {"type": "text", "text": prompt},
            ]}],
            temperature=0.2,
        )
        return response
'''


@pytest.fixture
def psr_standin(tmp_path, monkeypatch):
    repo, pins = tmp_path / "PSR", {}
    for subset, stem in authors_protocol._PSR_SCRIPTS.items():
        path = f"eval/semantic-alignment/{stem}-alignment.py"
        text = STANDIN.replace("WHAT", stem)
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
        pins[subset] = (path, hashlib.sha256(text.encode()).hexdigest())
    ups = dict(authors_protocol.UPSTREAMS)
    ups["psr"] = Upstream("psr", "wang-shulei/PSR", "f" * 40, pins)
    monkeypatch.setattr(authors_protocol, "UPSTREAMS", ups)
    return repo


def test_semantic_request_is_the_authors_and_scores_are_read_as_theirs(tmp_path, psr_standin):
    import openai

    root = make_synthetic_psrbench(tmp_path / "PSRBench", ("Attribute", "Three"))
    from data.psrbench_cases import load_psrbench_cases

    cases = load_psrbench_cases(root, ["Attribute", "Three"])
    out = tmp_path / "outputs"
    for i, c in enumerate(cases):  # one generated image saved as RGBA, one as JPEG under a .png name
        p = case_output_path(c, out)
        p.parent.mkdir(parents=True, exist_ok=True)
        img = picture(20 + i, "RGBA" if i == 0 else "RGB")
        img.convert("RGB").save(p, format="JPEG") if i == 1 else img.save(p)
    write_results_json(cases, out)
    replies = iter(["[Thought]: fine [Score]: 7", "nothing", "[Score]: 12", "[Score]: 8.5.1"])
    order = {}

    def judge(payload):
        key = prompt_text(payload)
        if key not in order:
            order[key] = next(replies)
        return Reply(order[key])

    with FakeJudgeServer(judge) as srv:
        code = evaluate.main(["--data_root", str(root), "--results_dir", str(out), "--metrics", "semantic",
                              "--subsets", "Attribute", "Three",
                              "--protocol", "authors", "--authors_repo", str(psr_standin),
                              "--judge_base_url", srv.base_url, "--no_progress"])  # fmt: skip
        ours = sorted(srv.bodies)
        n = len(srv.bodies)
        # the authors' script's own call, for the same cases
        client = openai.OpenAI(base_url=srv.base_url, api_key="psr", max_retries=0)
        for c in cases:
            stem = authors_protocol._PSR_SCRIPTS[c.subset]
            task = f"\n        Rate the {stem} of this image against: {{}}\n        Answer as [Thought]: ... [Score]: ...\n        "
            raw = case_output_path(c, out).read_bytes()
            url = "data:image/png;base64," + base64.b64encode(raw).decode("utf-8")
            client.chat.completions.create(
                model="Qwen/Qwen2.5-VL-7B-Instruct",
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                         {"type": "text", "text": task.format(c.instruction)}]}],
                temperature=0.2,
            )  # fmt: skip
        theirs = sorted(srv.bodies[n:])
    assert code == 0 and n == len(cases) == 4  # one request per case: nothing re-asked
    assert ours == theirs  # byte for byte
    records = [json.loads(x) for x in (out / "eval" / "per_case.jsonl").read_text().splitlines()]
    got = sorted((r["semantic"]["status"], r["semantic"]["score"]) for r in records)
    assert got == sorted([("scored", 7.0), ("defaulted", 5.0), ("scored", 12.0), ("failed", None)])
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["meta"]["protocol"] == "authors" and summary["meta"]["judge_temperature"] == 0.2
    assert summary["meta"]["judge_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"  # the name in their scripts
    assert "AUTHORS' PROTOCOL" in (out / "eval" / "summary.md").read_text()
    judge = summary["meta"]["judge"]  # provenance: requested and answering model, protocol, prompt hashes
    assert (
        judge["served_models"] == {"Qwen/Qwen2.5-VL-7B-Instruct": 3} and judge["protocol"] == "authors"
    )  # used replies
    assert "answered by Qwen/Qwen2.5-VL-7B-Instruct (3)" in (out / "eval" / "summary.md").read_text()
    shutil.rmtree(out / "eval")
    # the request settings are the authors' under their protocol: a flag that would change them is refused
    for flag, value in (("--judge_temperature", "0.5"), ("--judge_max_tokens", "64")):
        code = evaluate.main(["--data_root", str(root), "--results_dir", str(out), "--metrics", "semantic",
                              "--subsets", "Attribute", "Three", "--protocol", "authors",
                              "--authors_repo", str(psr_standin), flag, value,
                              "--judge_base_url", "http://127.0.0.1:9/v1", "--no_progress"])  # fmt: skip
        assert code == 2, flag
        assert not (out / "eval" / "summary.json").exists()
