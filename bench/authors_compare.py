r"""Our ``--protocol authors`` against the benchmark authors' own evaluation code, run unmodified.

    python -m bench.authors_compare --scone_repo /path/Scone --omnigen2_repo /path/OmniGen2 \
        --psr_repo /path/PSR --authors_python /path/to/venv/bin/python --work_dir /tmp/authors_compare

Each ``--*_repo`` is a checkout of the commit pinned in eval/authors_protocol.py (only the evaluation files
are read). ``--authors_python`` runs their scripts: it needs what they import (requests, scikit-learn,
regex, datasets, megfile, pandas, torch, openai, Pillow), at the same Pillow and openai versions as ours
for the image and body bytes to be comparable.

On one set of synthetic cases (references in every mode the loaders treat differently: EXIF-rotated
JPEGs, RGBA and palette PNGs, one over 1024² pixels), one local judge on 127.0.0.1:17140 (the port PSR's
scripts hard-code) answers both sides from the same reply bank: the reply to a request depends only on
its body and on how many times that body was sent before. Replies include verbose, fenced, almost-JSON
and (on a first send) unreadable ones, so the retry and re-send rules are exercised. For each upstream:

* Scone's SconeEval scorer (3 judging passes) and its OmniContext copy (1 pass) against
  ``eval.sconeeval`` / ``eval.omnicontext --authors_upstream scone``;
* OmniGen2's OmniContext evaluator (its ``datasets`` loader reads a parquet copy of the cases) against
  ``eval.omnicontext --authors_upstream omnigen2``;
* PSR's semantic-alignment scripts, one per subset, against ``eval.psrbench.evaluate --metrics semantic``,

it prints whether the request bodies are identical byte for byte (as multisets: the two sides may order
them differently), the request counts, and the largest difference between their tables (their own
``analyze_scores``, or the mean their script prints) and ours. Exit code 0 when every upstream matches.
Nothing here can run without the authors' files, so it is not part of the test suite
(tests/test_authors_protocol.py and tests/test_authors_rules.py check the same rules on stand-ins).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from data.psrbench_cases import SUBSET_SUBJECTS
from eval.aggregation import OMNICONTEXT, SCONEEVAL
from eval.psrbench.semantic import SEMANTIC_PROMPTS
from tests.fake_judge_server import FakeJudgeServer, Reply, image_urls, prompt_text

log = logging.getLogger("bench.authors_compare")
PORT = 17140
MODEL = "Scone"

SCORE_REPLIES = [
    '{"score": 7, "reasoning": "mostly right"}',
    '```json\n{\n  "score": 4,\n  "reasoning": "the cup is missing"\n}\n```',
    'Here is my verdict.\n{"score": 6, "reasoning": "fine"}\nThanks.',
    "8",
    'Sure! {"score": 9, "reasoning": "good"}',
    '{"score": 5.5, "reasoning": "half"}',
    '{"score": 2, "reasoning": "line one\nline two"}',
]
PRESENCE_REPLIES = ["1", "0", "The subject from image 1 is not present. Answer: 0", "Answer: 1", " 0\n"]
PSR_REPLIES = [
    "[Thought]: the colours match. [Score]: 7",
    "[Thought]: partly. [Score]: 3.5",
    "[Thought]: no score given here.",  # no score: their script counts 5 (ours: "defaulted", also 5)
    "[Score]: 9\n[Thought]: fine",
    "[Thought]: odd. [Score]: 8.5.1",  # not a number: their script drops the case (ours: failed)
]
UNREADABLE = ["I cannot judge this.", "} {", "11", "unsure"]  # no side can read these (first sends only)
# Not in the bank: almost-JSON such as "{score: 6, reasoning: fine}". Their repair reads the score as the list
# [6], which their statistics cannot average (TypeError); ours reads 6 (docs/evaluation.md §5).


class ReplyBank:
    """The reply to a request: chosen by the sha256 of its payload and the number of earlier sends of the
    same payload. About one first send in four is unreadable, at most one per case (the case is known by
    its generated image, the last image of every request), so that every protocol's tries end readable."""

    def __init__(self) -> None:
        self.sent: Counter = Counter()
        self.spoiled: set[str] = set()

    def reset(self) -> None:
        self.sent.clear()
        self.spoiled.clear()

    def __call__(self, payload: dict) -> Reply:
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        n = self.sent[digest]
        self.sent[digest] += 1
        pick = int(hashlib.sha256(f"{digest}|{n}".encode()).hexdigest(), 16)
        text = prompt_text(payload)
        if "[Score]" in text:  # PSR reads whatever comes back once; no re-send to exercise
            return Reply(PSR_REPLIES[pick % len(PSR_REPLIES)])
        case = image_urls(payload)[-1]
        if n == 0 and pick % 4 == 0 and case not in self.spoiled:
            self.spoiled.add(case)
            return Reply(UNREADABLE[pick // 4 % len(UNREADABLE)])
        bank = PRESENCE_REPLIES if "Subject description:" in text else SCORE_REPLIES
        return Reply(bank[pick // 4 % len(bank)])


# ----------------------------------------------------------------------------- synthetic cases
def _noise(rng: np.random.Generator, w: int, h: int, channels: int = 3) -> np.ndarray:
    # smooth noise (a few gradients + texture): JPEG-friendly, distinct per image
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(x * rng.uniform(0.1, 0.5) + y * rng.uniform(0.1, 0.5)) % 256 for _ in range(channels)], -1
    )
    return (base + rng.integers(0, 40, (h, w, channels))).clip(0, 255).astype(np.uint8)


def make_references(folder: Path, rng: np.random.Generator) -> list[str]:
    """Reference images in every mode the loaders treat differently; returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for o in (6, 8):
        im = Image.fromarray(_noise(rng, 360, 280))
        exif = im.getexif()
        exif[0x0112] = o
        im.save(folder / f"exif{o}.jpg", format="JPEG", exif=exif.tobytes())
        names.append(f"exif{o}.jpg")
    rgba = _noise(rng, 300, 220, 4)
    rgba[..., 3] = (rng.random((220, 300)) > 0.5) * 255
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(_noise(rng, 320, 240)).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(_noise(rng, 1100, 1000)).save(folder / "large.png")  # > 1024²: downscaled by both
    Image.fromarray(_noise(rng, 250, 333)).save(folder / "plain.png")
    names += ["rgba.png", "palette.png", "large.png", "plain.png"]
    return names


SCONEEVAL_TYPES, OMNICONTEXT_TYPES = list(SCONEEVAL.task_types), list(OMNICONTEXT.task_types)


def make_cases(task_types: list[str], refs: list[str], per_type: int, rng: np.random.Generator) -> list[dict]:
    """Cases grouped by task type (the authors' scripts judge one task type after another)."""
    cases = []
    for t in task_types:
        for i in range(per_type):
            n = 1 if "single" in t else 2
            chosen = [refs[int(k)] for k in rng.choice(len(refs), n, replace=False)]
            case = {
                "key": f"{t}_{i}",
                "task_type": t,
                "instruction": f"{t.replace('_', ' ')} number {i}",
                "instruction_language": "en",
                "input_images": chosen,
                "case_type": "2OS" if i % 2 else "1O",
            }
            if t.startswith("distinction"):
                case["subject_list"] = [[f"red thing {i}", f"blue thing {i}"] for _ in chosen]
                case["subject_label"] = [[1, 0] for _ in chosen]
            cases.append(case)
    return cases


def write_outputs(cases: list[dict], folders: list[Path], rng: np.random.Generator) -> None:
    """One generated image per case, the same PNG bytes under every layout folder."""
    for c in cases:
        im = Image.fromarray(_noise(rng, 256, 256))
        for f in folders:
            p = f / c["task_type"] / f"{c['key']}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            im.save(p)


# ----------------------------------------------------------------------------- running both sides
class Sides:
    def __init__(self, args: argparse.Namespace, server: FakeJudgeServer, bank: ReplyBank):
        self.args, self.server, self.bank = args, server, bank
        self.url = f"http://127.0.0.1:{PORT}/v1"
        self.repo_root = Path(__file__).resolve().parents[1]

    def _fresh(self) -> None:
        self.bank.reset()
        with self.server._lock:
            self.server.bodies.clear()
            self.server.requests.clear()

    def bodies(self) -> Counter:
        return Counter(self.server.bodies)

    def theirs(self, argv: list[str], cwd: Path, pythonpath: Path | None = None) -> str:
        env = {**os.environ, "PYTHONPATH": str(pythonpath or cwd)}
        out = subprocess.run(
            [self.args.authors_python, *argv], cwd=cwd, env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-1500:]}"
            )
        return out.stdout

    def ours(self, module: str, argv: list[str]) -> None:
        env = {**os.environ, "OPENAI_API_KEY": "local", "PSR_JUDGE_API_KEY": "psr"}
        cmd = [
            sys.executable,
            "-m",
            module,
            *argv,
            "--base_url",
            self.url,
            "--max_concurrency",
            "1",
            "--no_progress",
        ]
        out = subprocess.run(cmd, cwd=self.repo_root, env=env, capture_output=True, text=True)
        if out.returncode not in (0, 1):
            raise RuntimeError(f"{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")


def their_tables(python: str, stats_file: Path, score_dirs: list[Path], language: str | None) -> list[dict]:
    """Their own ``analyze_scores`` over their score.jsonl files, every number at full precision."""
    code = f"""
import importlib.util, json, glob, os, sys, numpy as np
from collections import defaultdict
spec = importlib.util.spec_from_file_location("stats", {str(stats_file)!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
out = []
for d in {[str(d) for d in score_dirs]!r}:
    lines = defaultdict(list)
    for f in glob.glob(os.path.join(d, "**/*.jsonl")):
        for line in open(f):
            lines[os.path.basename(os.path.dirname(f))].append(json.loads(line))
    res = m.analyze_scores(lines{", " + repr(language) if language else ""})
    names = ["PF", "SC", "COM", "DIS_acc", "DIS_prec", "DIS_recall", "DIS_f1", "DIS_overall"][:len(res)]
    table = {{f"tasks.{{t}}.{{n}}": float(v) for n, g in zip(names, res) for t, v in g.items()}}
    table.update({{f"average.{{n}}": float(np.mean(list(g.values()))) for n, g in zip(names, res) if g}})
    out.append(table)
print(json.dumps(out))
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=stats_file.parent)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_diff(theirs: dict, ours: dict) -> tuple[float, list[str]]:
    """(largest |difference| over their numbers, names missing or None on our side)."""
    worst, missing = 0.0, []
    for k, v in theirs.items():
        o = ours.get(k)
        if o is None:
            missing.append(k)
        else:
            worst = max(worst, abs(v - o))
    return worst, missing


def our_group_tables(scores_json: Path) -> list[dict]:
    result = json.loads(scores_json.read_text())
    tables = []
    for g in sorted(result["groups"], key=lambda g: (g["round"], g["scoring"])):
        flat = {
            f"tasks.{t}.{m}": v
            for t, row in g["tasks"].items()
            for m, v in row.items()
            if m not in ("n", "failed")
        }
        flat.update({f"average.{m}": v for m, v in g["average"].items()})
        tables.append(flat)
    return tables


def compare_scone(sides: Sides, work: Path, bench: str, cases: list[dict], passes: int) -> dict:
    args = sides.args
    data = work / bench / "data"
    scripts = Path(args.scone_repo) / "eval" / "s2i" / "sconeeval"
    sides._fresh()
    for _ in range(passes):  # their test_score.py judges one pass per run (score_try1, 2, 3)
        sides.theirs(
            [
                str(scripts / "test_score.py"),
                "--benchmark",
                bench,
                "--result_dir",
                str(work / bench / "theirs_results"),
                "--model_name",
                MODEL,
                "--max_workers",
                "1",
                "--test_data",
                str(data / "data.jsonl"),
                "--test_image_dir",
                str(data),
                "--openai_url",
                f"{sides.url}/chat/completions",
                "--openai_key",
                "local",
                "--save_dir",
                str(work / bench / "theirs_scores"),
            ],
            cwd=scripts,
        )
    theirs_bodies = sides.bodies()
    score_dirs = [work / bench / "theirs_scores" / MODEL / f"score_try{i + 1}" for i in range(passes)]
    theirs_tables = their_tables(args.authors_python, scripts / "calculate_statistics.py", score_dirs, None)
    sides._fresh()
    module = "eval.sconeeval" if bench == "sconeeval" else "eval.omnicontext"
    out = work / bench / "ours"
    sides.ours(
        module,
        [
            "--benchmark_dir",
            str(data),
            "--result_dir",
            str(work / bench / "ours_results"),
            "--output_dir",
            str(out),
            "--scorings",
            str(passes),
            "--protocol",
            "authors",
            "--authors_repo",
            args.scone_repo,
        ],
    )
    return _verdict(
        f"Scone {bench}, {passes} pass(es)", theirs_bodies, sides.bodies(), theirs_tables, out, len(cases)
    )


def compare_omnigen2(sides: Sides, work: Path, cases: list[dict]) -> dict:
    args = sides.args
    data = work / "omnigen2" / "data"
    sides._fresh()
    sides.theirs(
        [
            "omnicontext/test_omnicontext_score.py",
            "--result_dir",
            str(work / "omnigen2" / "theirs"),
            "--openai_url",
            f"{sides.url}/chat/completions",
            "--openai_key",
            "local",
            "--test_data",
            str(data / "hf"),
            "--model_name",
            MODEL,
            "--max_workers",
            "1",
        ],
        cwd=Path(args.omnigen2_repo),
    )
    theirs_bodies = sides.bodies()
    stats = Path(args.omnigen2_repo) / "omnicontext" / "calculate_statistics.py"
    theirs_tables = their_tables(
        args.authors_python, stats, [work / "omnigen2" / "theirs" / MODEL / "gpt4dot1"], "en"
    )
    sides._fresh()
    out = work / "omnigen2" / "ours"
    sides.ours(
        "eval.omnicontext",
        [
            "--benchmark_dir",
            str(data),
            "--result_dir",
            str(work / "omnigen2" / "ours_results"),
            "--output_dir",
            str(out),
            "--protocol",
            "authors",
            "--authors_upstream",
            "omnigen2",
            "--authors_repo",
            args.omnigen2_repo,
        ],
    )
    return _verdict("OmniGen2 OmniContext", theirs_bodies, sides.bodies(), theirs_tables, out, len(cases))


def compare_psr(sides: Sides, work: Path, results: Path, data_root: Path) -> dict:
    args = sides.args
    scripts = Path(args.psr_repo) / "eval" / "semantic-alignment"
    sides._fresh()
    theirs_tables = {}
    for subset, stem in SEMANTIC_PROMPTS.items():
        stdout = sides.theirs(
            [
                str(scripts / f"{stem}-alignment.py"),
                "--json_path",
                str(results / f"{subset}.json"),
                "--data_root",
                str(data_root),
            ],
            cwd=scripts,
        )
        line = [x for x in stdout.splitlines() if x.startswith("final score:")][-1]
        theirs_tables[f"{subset}.semantic"] = float(line.split(":", 1)[1])
    theirs_bodies = sides.bodies()
    sides._fresh()
    out = work / "psr" / "ours"
    sides.ours(
        "eval.psrbench.evaluate",
        [
            "--data_root",
            str(data_root),
            "--results_dir",
            str(results),
            "--save_dir",
            str(out),
            "--metrics",
            "semantic",
            "--protocol",
            "authors",
            "--authors_repo",
            args.psr_repo,
            "--subsets",
            *SEMANTIC_PROMPTS,
        ],
    )
    summary = json.loads((out / "summary.json").read_text())
    ours = {f"{s}.semantic": summary["subsets"][s]["semantic"] for s in SEMANTIC_PROMPTS}
    worst, missing = table_diff(theirs_tables, ours)
    return _bodies_verdict("PSR semantic alignment", theirs_bodies, sides.bodies()) | {
        "numbers": len(theirs_tables),
        "max_abs_diff": worst,
        "missing": missing,
    }


def _bodies_verdict(name: str, theirs: Counter, ours: Counter) -> dict:
    return {
        "upstream": name,
        "requests_theirs": sum(theirs.values()),
        "requests_ours": sum(ours.values()),
        "distinct_bodies": len(theirs),
        "bodies_identical": theirs == ours,
    }


def _verdict(
    name: str, theirs_bodies: Counter, ours_bodies: Counter, theirs_tables: list[dict], out: Path, n: int
) -> dict:
    ours_tables = our_group_tables(out / "scores.json")
    worst, missing = 0.0, []
    for t, o in zip(theirs_tables, ours_tables, strict=True):
        w, m = table_diff(t, o)
        worst, missing = max(worst, w), missing + m
    failed = json.loads((out / "scores.json").read_text())["cases"]["failed"]
    return _bodies_verdict(name, theirs_bodies, ours_bodies) | {
        "numbers": sum(len(t) for t in theirs_tables),
        "max_abs_diff": worst,
        "missing": missing,
        "our_failed_cases": failed,
        "cases": n,
    }


def build(work: Path) -> dict:
    """Write every side's inputs under ``work``; returns what the comparisons need."""
    rng = np.random.default_rng(0)
    built = {}
    for bench, types, per in (("sconeeval", SCONEEVAL_TYPES, 3), ("omnicontext", OMNICONTEXT_TYPES, 2)):
        data = work / bench / "data"
        refs = make_references(data, rng)
        cases = make_cases(types, refs, per, rng)
        (data / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
        write_outputs(cases, [work / bench / "theirs_results" / MODEL, work / bench / "ours_results"], rng)
        built[bench] = cases
    # OmniGen2's evaluator loads the cases with `datasets` (images stored as bytes in parquet, decoded there)
    data = work / "omnigen2" / "data"
    refs = make_references(data, rng)
    cases = make_cases(OMNICONTEXT_TYPES, refs, 2, rng)
    (data / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    write_outputs(
        cases, [work / "omnigen2" / "theirs" / MODEL / "fullset", work / "omnigen2" / "ours_results"], rng
    )
    built["omnigen2"] = cases
    # PSRBench: subset JSONs with reference images, and results files naming each generated image
    data_root, results = work / "psr" / "PSRBench", work / "psr" / "results"
    refs = make_references(data_root / "subjects", rng)
    results.mkdir(parents=True, exist_ok=True)
    for subset in SEMANTIC_PROMPTS:
        records, with_results = [], []
        for i in range(4):
            n = SUBSET_SUBJECTS[subset]
            cats = [f"thing{(i + k) % 5}" for k in range(n)]
            rec = {
                "instruction": f"{subset.lower()} case {i}: " + ", ".join(cats),
                "input_path": [f"subjects/{refs[(i + k) % len(refs)]}" for k in range(n)],
            }
            rec.update({f"category{k + 1}": c for k, c in enumerate(cats)})
            records.append(rec)
            out = results / subset / f"{i}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_noise(rng, 256, 256)).save(out)
            with_results.append({**rec, "result_path": str(out)})
        (data_root / f"{subset}.json").write_text(json.dumps(records, indent=2))
        (results / f"{subset}.json").write_text(json.dumps(with_results, indent=2))
    built["psr"] = (results, data_root)
    return built


def write_parquet(work: Path, cases: list[dict], python: str) -> None:
    """OmniGen2's cases as a local `datasets` folder, the images stored as their file bytes."""
    data = work / "omnigen2" / "data"
    code = f"""
import json, datasets
rows = [json.loads(x) for x in open({str(data / "data.jsonl")!r})]
cols = {{k: [r[k] for r in rows] for k in ("key", "task_type", "instruction", "instruction_language")}}
cols["input_images"] = [[{{"bytes": open({str(data)!r} + "/" + n, "rb").read(), "path": None}} for n in r["input_images"]] for r in rows]
feats = datasets.Features({{**{{k: datasets.Value("string") for k in ("key", "task_type", "instruction", "instruction_language")}},
                          "input_images": datasets.Sequence(datasets.Image())}})
ds = datasets.Dataset.from_dict(cols, features=feats)
import os; os.makedirs({str(data / "hf")!r}, exist_ok=True)
ds.to_parquet({str(data / "hf" / "train.parquet")!r})
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scone_repo", required=True, help="Ryann-Ran/Scone checkout (the pinned commit)")
    p.add_argument("--omnigen2_repo", required=True, help="VectorSpaceLab/OmniGen2 checkout")
    p.add_argument("--psr_repo", required=True, help="wang-shulei/PSR checkout")
    p.add_argument("--authors_python", required=True, help="a Python with what their scripts import")
    p.add_argument("--work_dir", required=True, help="an empty folder for the cases and both sides' outputs")
    p.add_argument("--sconeeval_passes", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work_dir)
    if work.exists() and any(work.iterdir()):
        p.error(f"--work_dir {work} is not empty")
    built = build(work)
    write_parquet(work, built["omnigen2"], args.authors_python)
    bank = ReplyBank()
    rows = []
    with FakeJudgeServer(bank, port=PORT) as server:
        sides = Sides(args, server, bank)
        rows.append(compare_scone(sides, work, "sconeeval", built["sconeeval"], args.sconeeval_passes))
        rows.append(compare_scone(sides, work, "omnicontext", built["omnicontext"], 1))
        rows.append(compare_psr(sides, work, *built["psr"]))
        rows.append(compare_omnigen2(sides, work, built["omnigen2"]))
    print(
        "| authors' code | requests (theirs / ours) | distinct bodies | bodies identical | table numbers | max abs difference |"
    )
    print("|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        same = r["bodies_identical"] and not r["missing"] and r["max_abs_diff"] <= 1e-9
        ok &= same
        print(
            f"| {r['upstream']} | {r['requests_theirs']} / {r['requests_ours']} | {r['distinct_bodies']} | "
            f"{'yes' if r['bodies_identical'] else 'NO'} | {r['numbers']}"
            f"{' (missing: ' + ', '.join(r['missing'][:5]) + ')' if r['missing'] else ''} | {r['max_abs_diff']:.2e} |"
        )
    (work / "comparison.json").write_text(json.dumps(rows, indent=1))
    return 0 if ok and all(math.isfinite(r["max_abs_diff"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
