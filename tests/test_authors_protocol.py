"""--protocol authors: prompts and request settings read from the authors' pinned evaluation files.

The files here are stand-ins written for the test with the documented structure of the authors' files
(docs/evaluation.md §6): variable names, how their PromptGenerator joins a context block and a rubric,
their client's payload and JPEG encoder. Their text is ours. The requests our CLIs send are compared with
what the authors' code would send for the same inputs, rebuilt here from that structure."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from eval import authors_protocol, omnicontext, sconeeval
from eval.authors_protocol import AuthorsProtocolError, Upstream, load_judge_protocol, module_strings
from tests.fake_judge_server import FakeJudgeServer, Reply, prompt_text

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RUBRICS = {
    "_prompt_sconeeval_COM_PF": "\nRate PF 0-10 for: <instruction>\nCosts $5 to read.\n",
    "_prompt_sconeeval_COM_SC_Single_and_Multiple": "\nRate SC 0-10 for: <instruction>\n",
    "_prompt_sconeeval_COM_SC_Scene": "\nRate SC-scene 0-10 for: <instruction>\n",
    "_prompt_sconeeval_DIS": "\nIs it there? Answer 0 or 1.\nSubject description: <subject>\n",
    "_prompt_omnicontext_PF_Single_and_multiple": "\nScone-copy PF for: <instruction>\n",
    "_prompt_omnicontext_PF_Scene": "\nScone-copy PF-scene (unused by PF calls): <instruction>\n",
    "_prompt_omnicontext_SC_Single_and_Multiple": "\nScone-copy SC for: <instruction>\n",
    "_prompt_omnicontext_SC_Scene": "\nScone-copy SC-scene for: <instruction>\n",
}
CONTEXT = '\nYou judge images.\nAnswer as {\n    "score": <score>,\n    "reasoning": "..."\n}\n'
CONTEXT_DIS = "\nYou judge images.\n"
OMNIGEN2_RUBRICS = {
    "_prompts_0shot_in_context_generation_rule_PF_Single_and_Multiple": "\nOriginal PF for: <instruction>\n",
    "_prompts_0shot_in_context_generation_rule_PF_Scene": "\nOriginal PF-scene: <instruction>\n",
    "_prompts_0shot_in_context_generation_rule_SC_Single_and_Multiple": "\nOriginal SC for: <instruction>\n",
    "_prompts_0shot_in_context_generation_rule_SC_Scene": "\nOriginal SC-scene for: <instruction>\n",
}
CLIENT = """import base64
from io import BytesIO

def encode_pil_image(pil_image):
    image_stream = BytesIO()
    pil_image.save(image_stream, format='JPEG')
    return base64.b64encode(image_stream.getvalue()).decode('utf-8')

def ask_gpt4o(image_path, prompt, url, api_key):
    payload = {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 1400,
    }
    return payload
"""


def prompt_file(strings: dict[str, str]) -> str:
    body = "".join(f"{k} = {v!r}\n\n" for k, v in strings.items())
    return (
        body + "class PromptGenerator:\n    def __call__(self, instruction, task_type):\n        return ''\n"
    )


def write_repo(root: Path, files: dict[str, str]) -> dict[str, tuple[str, str]]:
    pins = {}
    for role, (path, text) in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
        pins[role] = (path, hashlib.sha256(text.encode()).hexdigest())
    return pins


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """Two stand-in clones (Scone and OmniGen2 structure), pinned by their own hashes."""
    scone, og2 = tmp_path / "Scone", tmp_path / "OmniGen2"
    scone_pins = write_repo(
        scone,
        {
            "prompts": (
                "eval/s2i/sconeeval/prompt_generator.py",
                prompt_file(
                    {
                        "_context_no_delimit": CONTEXT,
                        "_context_no_delimit_distinction": CONTEXT_DIS,
                        **RUBRICS,
                    }
                ),
            ),  # fmt: skip
            "client": ("eval/s2i/sconeeval/openai_util.py", CLIENT),
        },
    )
    og2_pins = write_repo(
        og2,
        {
            "prompts": (
                "omnicontext/prompt_generator.py",
                prompt_file({"_context_no_delimit": CONTEXT, **OMNIGEN2_RUBRICS}),
            ),
            "client": ("omnicontext/openai_util.py", CLIENT),
        },
    )
    ups = dict(authors_protocol.UPSTREAMS)
    ups["scone"] = Upstream("scone", "Ryann-Ran/Scone", COMMIT, scone_pins)
    ups["omnigen2"] = Upstream("omnigen2", "VectorSpaceLab/OmniGen2", COMMIT, og2_pins)
    monkeypatch.setattr(authors_protocol, "UPSTREAMS", ups)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-authors-test")
    return {"scone": scone, "omnigen2": og2}


# ----------------------------------------------------------------------------- the authors' request, rebuilt
def authors_image(path: Path, resize: bool, decoded: bool = False) -> str:
    """Scone's scorer: open, RGB, downscale (stored orientation); their client: EXIF-transpose, RGB, JPEG.
    ``decoded``: OmniGen2's, whose loader (datasets) decodes with the EXIF orientation applied and keeps the
    stored mode through the downscale (PIL premultiplies RGBA, resizes palettes NEAREST)."""
    img = ImageOps.exif_transpose(Image.open(path)) if decoded else Image.open(path).convert("RGB")
    if resize:
        w, h = img.size
        if w * h > 1024 * 1024:
            r = math.sqrt(1024 * 1024 / (w * h))
            w, h = int(w * r), int(h * r)
        img = img.resize((w // 16 * 16, h // 16 * 16))
    img = ImageOps.exif_transpose(img).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode("utf-8")


def authors_payload(prompt: str, images: list[str]) -> dict:
    content = [{"type": "text", "text": prompt}]
    content += [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b}"}} for b in images]
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": content}], "max_tokens": 1400}


def authors_requests(
    bench: Path, res: Path, cases: list[dict], rubric: dict[str, str], upstream: str = "scone"
) -> list[str]:
    out = []
    for c in cases:
        refs = [
            authors_image(bench / p, resize=True, decoded=upstream == "omnigen2") for p in c["input_images"]
        ]
        gen = authors_image(res / c["task_type"] / f"{c['key']}.png", resize=False)
        scene = "scene" in c["task_type"] or (upstream == "scone" and "S" in c.get("case_type", ""))
        pf = (CONTEXT + rubric["pf"]).replace("<instruction>", c["instruction"])
        sc = (CONTEXT + rubric["sc_scene" if scene else "sc"]).replace("<instruction>", c["instruction"])
        out += [json.dumps(authors_payload(pf, refs + [gen])), json.dumps(authors_payload(sc, refs + [gen]))]
        for i, subjects in enumerate(c.get("subject_list") or []):
            for s in subjects:
                dis = (CONTEXT_DIS + rubric["dis"]).replace("<subject>", s)
                out.append(json.dumps(authors_payload(dis, [refs[i], gen])))
    return sorted(out)


def rotated_jpeg(path: Path, size=(1100, 1000)) -> None:
    """A photo stored sideways (EXIF orientation 6) and over 1024² pixels, so that it is downscaled."""
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", exif=exif.tobytes())


CASES = [
    {"key": "c1", "task_type": "composition_single", "instruction": "the cup costs $3", "input_images": ["a.jpg"]},
    {"key": "c2", "task_type": "composition_multi", "instruction": "both", "case_type": "2OS",
     "input_images": ["b.png", "a.jpg"]},
    {"key": "d1", "task_type": "distinction_single_cross", "instruction": "the red one", "input_images": ["b.png"],
     "subject_list": [["red cup", "blue dog"]], "subject_label": [[1, 0]]},
]  # fmt: skip


def make_bench(tmp_path: Path, cases: list[dict]) -> tuple[Path, Path]:
    bench, res = tmp_path / "bench", tmp_path / "results"
    bench.mkdir()
    rotated_jpeg(bench / "a.jpg")
    Image.new("RGBA", (40, 24), (0, 0, 255, 128)).save(bench / "b.png")
    (bench / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    for i, c in enumerate(cases):
        p = res / c["task_type"] / f"{c['key']}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10 * i, 200, 0)).save(p)
    return bench, res


def reply(payload):
    text = prompt_text(payload)
    if "Subject description" in text:
        return Reply("1" if "red" in text else "0")
    return Reply(json.dumps({"score": 7, "reasoning": "ok"}))


def run(main, bench, res, out, srv, *extra) -> int:
    return main(["--benchmark_dir", str(bench), "--result_dir", str(res), "--output_dir", str(out),
                 "--base_url", srv.base_url, "--no_progress", "--backoff_max", "0.01", *extra])  # fmt: skip


# ----------------------------------------------------------------------------- tests
def test_sconeeval_requests_equal_the_authors(tmp_path, standins):
    bench, res = make_bench(tmp_path, CASES)
    with FakeJudgeServer(reply) as srv:
        code = run(sconeeval.main, bench, res, tmp_path / "out", srv,
                   "--protocol", "authors", "--authors_repo", str(standins["scone"]))  # fmt: skip
    assert code == 0
    ours = sorted(b.decode() for b in srv.bodies)  # the bytes received
    rubric = {"pf": RUBRICS["_prompt_sconeeval_COM_PF"], "sc": RUBRICS["_prompt_sconeeval_COM_SC_Single_and_Multiple"],
              "sc_scene": RUBRICS["_prompt_sconeeval_COM_SC_Scene"], "dis": RUBRICS["_prompt_sconeeval_DIS"]}  # fmt: skip
    assert len(ours) == 2 + 2 + 4
    assert ours == authors_requests(bench, res, CASES, rubric)  # same keys, order, text and image bytes
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["protocol"] == "authors" and scores["authors_upstream"] == "scone"
    assert scores["judge"]["temperature"] is None and scores["judge"]["seed"] is None  # not sent
    assert scores["judge"]["image_format"] == "jpeg" and scores["judge"]["body_style"] == "requests"
    src = scores["prompts"]["sconeeval_pf"]["prompts"]
    assert src["file"].startswith("Ryann-Ran/Scone@0123456:") and len(src["sha256"]) == 64


@pytest.mark.parametrize("upstream", ["scone", "omnigen2"])
def test_omnicontext_follows_the_chosen_upstream(tmp_path, standins, upstream):
    cases = [
        {"key": "o1", "task_type": "single_object", "instruction": "on a desk", "input_images": ["a.jpg"]},
        {"key": "o2", "task_type": "scene_object", "instruction": "in the room", "input_images": ["b.png", "a.jpg"]},
        # Scone's scorer also picks the scene rubric from case_type "S"; OmniGen2's only from the task type
        {"key": "o3", "task_type": "single_object", "case_type": "S", "instruction": "on a beach",
         "input_images": ["b.png"]},
    ]  # fmt: skip
    bench, res = make_bench(tmp_path, cases)
    with FakeJudgeServer(reply) as srv:
        code = run(omnicontext.main, bench, res, tmp_path / "out", srv, "--protocol", "authors",
                   "--authors_repo", str(standins[upstream]), "--authors_upstream", upstream)  # fmt: skip
    assert code == 0
    if upstream == "scone":
        rubric = {"pf": RUBRICS["_prompt_omnicontext_PF_Single_and_multiple"],
                  "sc": RUBRICS["_prompt_omnicontext_SC_Single_and_Multiple"],
                  "sc_scene": RUBRICS["_prompt_omnicontext_SC_Scene"]}  # fmt: skip
    else:
        r = "_prompts_0shot_in_context_generation_rule_"
        rubric = {"pf": OMNIGEN2_RUBRICS[r + "PF_Single_and_Multiple"],
                  "sc": OMNIGEN2_RUBRICS[r + "SC_Single_and_Multiple"], "sc_scene": OMNIGEN2_RUBRICS[r + "SC_Scene"]}  # fmt: skip
    expected = authors_requests(bench, res, cases, rubric, upstream)
    if upstream == "omnigen2":  # their retry loop has no break: every request is sent three times
        expected = sorted(expected * 3)
    assert sorted(b.decode() for b in srv.bodies) == expected


def test_unknown_hash_and_clashing_flags_are_errors(tmp_path, standins, caplog):
    bench, res = make_bench(tmp_path, CASES[:1])
    path = standins["scone"] / "eval/s2i/sconeeval/prompt_generator.py"
    with FakeJudgeServer(reply) as srv:
        for extra in (["--temperature", "0"], ["--prompt_dir", str(tmp_path)], ["--image_format", "png"]):
            assert run(sconeeval.main, bench, res, tmp_path / "o", srv, "--protocol", "authors",
                       "--authors_repo", str(standins["scone"]), *extra) == 2  # fmt: skip
        path.write_text(path.read_text() + "# edited\n")
        assert run(sconeeval.main, bench, res, tmp_path / "o", srv,
                   "--protocol", "authors", "--authors_repo", str(standins["scone"])) == 2  # fmt: skip
        assert run(sconeeval.main, bench, res, tmp_path / "o", srv,
                   "--protocol", "authors", "--authors_repo", str(tmp_path / "nowhere")) == 2  # fmt: skip
        assert not srv.requests  # nothing was sent
    assert (
        "is not the pinned" in caplog.text and "has no eval/s2i/sconeeval/prompt_generator.py" in caplog.text
    )


def test_download_is_cached_and_hash_checked(tmp_path, standins):
    """Without a clone the files come from {base}/{repo}/{commit}/{path} (a local server here) into the cache."""
    root = tmp_path / "raw"
    (root / "Ryann-Ran/Scone" / COMMIT).parent.mkdir(parents=True)
    (root / "Ryann-Ran/Scone" / COMMIT).symlink_to(standins["scone"], target_is_directory=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base, cache = f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path / "cache"
    try:
        p = load_judge_protocol("sconeeval", "scone", cache_dir=cache, base_url=base)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert p.sources["prompts"]["read_from"].startswith(base)
    cached = cache / "Ryann-Ran+Scone" / COMMIT / "eval/s2i/sconeeval/prompt_generator.py"
    assert cached.is_file()
    again = load_judge_protocol("sconeeval", "scone", cache_dir=cache, base_url=base)  # server gone: cache
    assert again.templates == p.templates and again.sources["prompts"]["read_from"] == str(cached)
    cached.write_text("tampered = 'x'\n")
    with pytest.raises(AuthorsProtocolError, match="is not the pinned"):
        load_judge_protocol("sconeeval", "scone", cache_dir=cache, base_url=base)
    with pytest.raises(AuthorsProtocolError, match="cannot download"):
        load_judge_protocol("sconeeval", "scone", cache_dir=tmp_path / "empty", base_url=base)


def test_files_are_read_not_run(tmp_path):
    text = "import os\nos.remove('/nonexistent')\nA = 'text'\nB = 3\nC = D = 'two'\n"
    assert module_strings(text) == {"A": "text", "C": "two", "D": "two"}
    with pytest.raises(AuthorsProtocolError, match="not readable Python"):
        module_strings("def (:\n")
