r"""PSRBench evaluation CLI: subject consistency, position alignment, semantic alignment, aesthetics.

    python -m eval.psrbench.evaluate --data_root PSRBench --results_dir outputs/psrbench \\
        --base_url http://127.0.0.1:17140/v1 --judge_model Qwen/Qwen2.5-VL-7B-Instruct

Reads `{results_dir}/{subset}.json` (subset records + `result_path`, written by the runner through
`data.psrbench_cases.write_results_json`), resolves relative result paths against `--result_root`
(default: the current directory, like PSR's scripts) and reference images inside `--data_root`.
Writes per_case.jsonl and summary.{json,md,csv} to `--save_dir` (default `{results_dir}/eval`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from data.psrbench_cases import (
    SUBSETS,
    Case,
    check_results_against_benchmark,
    load_psrbench_cases,
    resolve_result_path,
)
from eval.authors_protocol import AuthorsProtocolError, add_protocol_args
from eval.judge.client import JudgeClient
from eval.judge.protocol import Protocol, resolve_protocol
from eval.judge.provenance import judge_record
from eval.judge.rules import OURS, JudgingRules, judging_rules
from eval.judge.run_modes import (
    EXIT_FAILED_CASES,
    EXIT_FATAL,
    EXIT_OK,
    JudgedRun,
    add_run_mode_args,
    dry_run,
)
from eval.judge.settings import add_judge_args
from eval.psrbench.aesthetics import hpsv3_scores
from eval.psrbench.detection import BOX_THRESHOLD, DEFAULT_DETECTOR, TEXT_THRESHOLD, CachedDetector, Detector
from eval.psrbench.features import DEFAULT_FEATURE_MODEL
from eval.psrbench.position import position_alignment
from eval.psrbench.report import summarize, to_markdown, write_report
from eval.psrbench.semantic import (
    DEFAULT_BASE_URL,
    SEMANTIC_PROMPTS,
    JudgedImage,
    load_prompt_templates,
    placeholder_key,
    semantic_alignment,
    semantic_jobs,
)
from eval.psrbench.subject_consistency import FeatureExtractor, open_image, subject_consistency
from eval.scoring import Scorer, Unit, score_units

log = logging.getLogger("eval.psrbench")

METRICS = ("sc", "position", "semantic", "aesthetics")


def _new_record(case: Case, result_root: Path) -> tuple[dict, Path | None]:
    path = resolve_result_path(case, result_root)
    rec: dict[str, Any] = {
        "uid": case.uid,
        "subset": case.subset,
        "id": case.id,
        "instruction": case.instruction,
        "categories": list(case.categories),
        "result_path": None if path is None else str(path),
        "error": None,
        "sc": None,
        "sc_error": None,
        "position": None,
        "position_error": None,
        "semantic": None,
        "aesthetics": None,
        "aesthetics_error": None,
    }
    if path is None:
        rec["error"] = "no result_path in the results JSON"
    elif not path.is_file():
        rec["error"] = f"generated image not found: {path}"
    return rec, (path if rec["error"] is None else None)


class GeometryScorer(Scorer):
    """Subject consistency and position alignment as a scorer of the shared driver (eval/scoring.py): no
    judge request; the generated image's detections are shared by the two metrics. The record holds
    ``sc``/``position`` or their ``*_error``; an unreadable generated image is the case's ``error``."""

    def __init__(
        self, detector: Detector, features: FeatureExtractor | None, metrics: tuple[str, ...], rule: str
    ):
        self.detector, self.features, self.metrics, self.rule = detector, features, metrics, rule

    def prepare(self, item: JudgedImage, image_dir: Path):
        try:
            return open_image(item.image)
        except OSError as e:
            raise ValueError(f"generated image unreadable: {e}") from None

    def record(self, item: JudgedImage, gen, results: dict) -> dict:
        case, out = item.case, {}
        det = CachedDetector(self.detector)  # SC and position share the generated image's detections
        if "sc" in self.metrics:
            try:
                refs = [open_image(p) for p in case.input_images]
                res = subject_consistency(gen, refs, case.categories, det, self.features, rule=self.rule)
                out["sc"] = _sc_dict(res)
            except (OSError, ValueError) as e:
                out["sc_error"] = f"{type(e).__name__}: {e}"
                log.warning("%s: subject consistency failed: %s", case.uid, e)
        if "position" in self.metrics and case.subset == "Position":
            try:
                res = position_alignment(gen, case.instruction, case.categories, det, rule=self.rule)
                out["position"] = res.to_dict()
            except (OSError, ValueError) as e:
                out["position_error"] = f"{type(e).__name__}: {e}"
                log.warning("%s: position alignment failed: %s", case.uid, e)
        return out

    def failed(self, item: JudgedImage, reason: str, result) -> dict:
        return {"error": reason}


def _sc_dict(res) -> dict:
    return {"score": res.score, "similarities": res.similarities, "crops": [c.to_dict() for c in res.crops]}


def run_evaluation(
    cases: list[Case],
    *,
    result_root: str | Path = ".",
    metrics: tuple[str, ...] = METRICS,
    detector: Detector | None = None,
    features: FeatureExtractor | None = None,
    judge_client: Any = None,
    templates: dict[str, str] | None = None,
    rules: JudgingRules = OURS,
    aesthetics_device: str = "cuda",
    aesthetics_batch_size: int = 8,
    aesthetics_inferencer: Any = None,
    progress: bool = True,
) -> tuple[list[dict], dict[str, str]]:
    """Score `cases` -> (per-case records, {metric: reason} for metrics skipped entirely).

    detector/features are needed for sc/position, judge_client for semantic (objects are injected so
    tests and other drivers can pass their own). ``rules=AUTHORS["psr"]`` (eval/judge/rules.py): the PSR
    scripts' box rule, relation matching and reading of judge replies (docs/psrbench.md); ``templates`` are
    then the authors' (eval.authors_protocol.load_psr_protocol)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRICS}")
    records, images = [], []
    for c in cases:
        rec, img = _new_record(c, Path(result_root))
        records.append(rec)
        images.append(img)
    n_missing = sum(1 for r in records if r["error"])
    if n_missing:
        log.warning(
            "%d of %d cases have no usable generated image (reported as 'no output')", n_missing, len(cases)
        )
    skipped: dict[str, str] = {}

    if "sc" in metrics or "position" in metrics:
        if detector is None or ("sc" in metrics and features is None):
            raise ValueError("sc/position need a detector (and sc a feature extractor)")
        todo = [i for i, p in enumerate(images) if p is not None]
        units = [Unit(0, Path("."), 0, JudgedImage(cases[i], images[i])) for i in todo]
        scorer = GeometryScorer(detector, features, metrics, rules.box_rule)
        for i, rec in zip(
            todo, score_units(units, scorer, workers=1, progress=progress, desc="SC / position")
        ):
            records[i].update(rec)
            if rec.get("error"):
                images[i] = None  # an unreadable image is not judged by the other metrics either

    if "semantic" in metrics:
        if judge_client is None:
            raise ValueError("semantic alignment needs a judge client")
        templates = templates if templates is not None else load_prompt_templates()
        from eval.judge.client import JudgeFatalError

        sel = [i for i, c in enumerate(cases) if c.subset in SEMANTIC_PROMPTS and images[i] is not None]
        try:
            results = semantic_alignment(
                [(cases[i], images[i]) for i in sel],
                judge_client,
                templates,
                rules=rules,
                progress=progress,
            )
            for i, r in zip(sel, results):
                records[i]["semantic"] = r.to_dict()
        except JudgeFatalError as e:
            skipped["semantic"] = f"judge stopped: {e}"
            log.error("semantic alignment stopped: %s", e)

    if "aesthetics" in metrics:
        sel = [i for i, p in enumerate(images) if p is not None]
        out = hpsv3_scores(
            [images[i] for i in sel],
            [cases[i].instruction for i in sel],
            device=aesthetics_device,
            batch_size=aesthetics_batch_size,
            inferencer=aesthetics_inferencer,
            progress=progress,
        )
        if out.skipped is not None:
            skipped["aesthetics"] = out.skipped
        else:
            for i, s, err in zip(sel, out.scores, out.errors):
                records[i]["aesthetics"], records[i]["aesthetics_error"] = s, err
    for m in METRICS:
        if m not in metrics:
            skipped.setdefault(m, "not requested (--metrics)")
    return records, skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="PSRBench folder (subset JSONs + reference images)")
    p.add_argument(
        "--results_dir", required=True, help="folder with {subset}.json results files (result_path)"
    )
    p.add_argument("--result_root", default=".", help="base of relative result_path values (default: cwd)")
    p.add_argument("--save_dir", default=None, help="report folder (default: {results_dir}/eval)")
    p.add_argument("--subsets", nargs="+", default=None, choices=SUBSETS, help="default: all seven")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="Grounding DINO folder or hub id")
    p.add_argument("--feature_model", default=DEFAULT_FEATURE_MODEL, help="DINO ViT folder or hub id")
    p.add_argument("--box_threshold", type=float, default=BOX_THRESHOLD)
    p.add_argument("--text_threshold", type=float, default=TEXT_THRESHOLD)
    add_judge_args(p, api_key_env="PSR_JUDGE_API_KEY", base_url=DEFAULT_BASE_URL)
    p.add_argument(
        "--prompt_dir", default=None, help="folder with {attribute,action,...}.txt rubric templates"
    )
    p.add_argument("--hpsv3_batch_size", type=int, default=8)
    add_protocol_args(p, "wang-shulei/PSR")
    add_run_mode_args(p)
    p.add_argument("--upstream_compat", action="store_true", help=argparse.SUPPRESS)  # old name of authors
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    metrics = tuple(args.metrics)
    save_dir = Path(args.save_dir) if args.save_dir else Path(args.results_dir) / "eval"
    benchmark = load_psrbench_cases(args.data_root, args.subsets)
    malformed: list[str] = []
    results = load_psrbench_cases(
        args.data_root, args.subsets, json_dir=args.results_dir, check_files=False, errors=malformed
    )
    # the results files are checked against the benchmark's own: nothing missing, extra or edited is scored
    cases, coverage = check_results_against_benchmark(benchmark, results)
    coverage["malformed"] = malformed
    for kind in ("missing", "extra", "edited", "malformed"):
        if coverage[kind]:
            log.error(
                "%d %s record(s) in the results files: %s", len(coverage[kind]), kind, coverage[kind][:10]
            )
    log.info("scoring %d of the benchmark's %d cases", coverage["scored_cases"], coverage["benchmark_cases"])
    client = None
    if args.upstream_compat:
        log.warning("--upstream_compat is now --protocol authors")
        args.protocol = "authors"
    rules, protocol = judging_rules(args.protocol, "psr"), None
    if "semantic" in metrics:
        try:
            protocol = resolve_protocol("psrbench", args)
        except (AuthorsProtocolError, FileNotFoundError, ValueError) as e:
            log.error("%s", e)
            return EXIT_FATAL
        client = JudgeClient(
            protocol.settings,
            api_key=placeholder_key(protocol.settings.api_key_env),
            cache_dir=args.cache_dir or save_dir / "judge_cache",
        )
    if args.dry_run and client is None:
        log.error("--dry_run counts judge requests: it needs the semantic metric (--metrics ... semantic)")
        return EXIT_FATAL
    if args.dry_run:
        return dry_run(client, _semantic_jobs(cases, args, protocol), args)
    if client is None:
        return _score_and_report(args, cases, coverage, None, None, rules)
    with JudgedRun(client, save_dir, args) as run:
        pending = run.batch(lambda unusable: _semantic_jobs(cases, args, protocol))
        return pending or _score_and_report(args, cases, coverage, client, protocol, rules)


def _score_and_report(
    args: argparse.Namespace,
    cases: list[Case],
    coverage: dict,
    client: JudgeClient | None,
    protocol: Protocol | None,
    rules: JudgingRules,
) -> int:
    """Score every requested metric, write the report and return the exit code."""
    metrics = tuple(args.metrics)
    save_dir = Path(args.save_dir) if args.save_dir else Path(args.results_dir) / "eval"
    detector = features = None
    if "sc" in metrics or "position" in metrics:
        from eval.psrbench.detection import GroundingDinoDetector

        detector = GroundingDinoDetector(
            args.detector,
            device=args.device,
            box_threshold=args.box_threshold,
            text_threshold=args.text_threshold,
        )
    if "sc" in metrics:
        from eval.psrbench.features import DinoFeatureExtractor

        features = DinoFeatureExtractor(args.feature_model, device=args.device)

    records, skipped = run_evaluation(
        cases,
        result_root=args.result_root,
        metrics=metrics,
        detector=detector,
        features=features,
        judge_client=client,
        templates=protocol.templates if protocol else None,
        rules=rules,
        aesthetics_device=args.device,
        aesthetics_batch_size=args.hpsv3_batch_size,
        progress=not args.no_progress,
    )
    del detector, features
    gc.collect()

    settings = client.settings if client else None
    meta = {
        "data_root": str(args.data_root),
        "results_dir": str(args.results_dir),
        "metrics": list(metrics),
        "detector": args.detector if ("sc" in metrics or "position" in metrics) else None,
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "feature_model": args.feature_model if "sc" in metrics else None,
        "judge_model": settings.model if settings else None,
        "judge_base_url": settings.base_url if settings else None,
        "judge_temperature": settings.temperature if settings else None,
        "prompt_dir": args.prompt_dir or "bundled (eval/psrbench/prompts)",
        "judge_usage": client.usage.as_dict() if client else None,
        "protocol": args.protocol,
        "judge": judge_record(client.served_models, protocol.name, protocol.sources, settings)
        if client
        else None,
        "authors_files": protocol.files if protocol else None,
        "box_rule": rules.box_rule,
        "coverage": coverage,
    }
    summary = summarize(records, meta, skipped)
    paths = write_report(summary, records, save_dir)
    log.info("PSRBench report:\n%s", to_markdown(summary))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if "semantic" in skipped and skipped["semantic"].startswith("judge stopped"):
        return EXIT_FATAL
    incomplete = any(coverage[k] for k in ("missing", "extra", "edited", "malformed"))
    return EXIT_FAILED_CASES if incomplete else EXIT_OK


def _semantic_jobs(cases: list[Case], args: argparse.Namespace, protocol: Protocol) -> list:
    """The judge requests of the semantic metric (``--dry_run``, ``--batch_api``)."""
    return semantic_jobs(_semantic_items(cases, args.result_root), protocol.templates, rules=protocol.rules)


def _semantic_items(cases: list[Case], result_root: str) -> list[tuple[Case, Path]]:
    """(case, generated image) of every case the semantic metric judges (``run_evaluation``'s selection)."""
    items = []
    for c in cases:
        if c.subset in SEMANTIC_PROMPTS:
            _, image = _new_record(c, Path(result_root))
            if image is not None:
                items.append((c, image))
    return items


if __name__ == "__main__":
    sys.exit(main())
