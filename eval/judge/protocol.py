"""The judging protocol of a run, chosen once from ``--protocol`` (and ``--authors_upstream``) for every judged
benchmark: its prompts, the request it sends (with the command line's flags applied) and its rules
(eval/judge/rules.py: image preparation, reply reading, tries). ``ours`` is this project's protocol;
``authors`` reads the benchmark authors' pinned files (eval/authors_protocol.py) and follows their
evaluator, quirks included (docs/evaluation.md §5, docs/psrbench.md)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
from dataclasses import dataclass

from eval.authors_protocol import load_judge_protocol, load_psr_protocol
from eval.judge.prompts import PromptSet
from eval.judge.rules import AUTHORS, OURS, JudgingRules
from eval.judge.settings import REQUEST_FLAGS, JudgeSettings, settings_from_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    name: str  # "ours" or "authors"
    upstream: str | None  # whose evaluator "authors" follows: scone, omnigen2 or psr
    rules: JudgingRules
    settings: JudgeSettings  # the request and the connection
    prompts: PromptSet | None  # SconeEval / OmniContext templates
    templates: dict[str, str] | None  # PSRBench: rubric per subset
    sources: dict[str, dict]  # prompt name -> where it came from and its sha256
    files: dict[str, dict] | None = None  # PSRBench authors' scripts read (file, sha256)


def resolve_protocol(benchmark: str, args: argparse.Namespace) -> Protocol:
    """The protocol of ``benchmark`` ("sconeeval", "omnicontext" or "psrbench") from the parsed command line.
    Raises ValueError for flags the authors' files set (and FileNotFoundError / AuthorsProtocolError when
    prompts or the authors' files cannot be read)."""
    protocol = _ours(benchmark, args) if args.protocol == "ours" else _authors(benchmark, args)
    # the authors' scorers never ask again for an unreadable reply: their own tries are the re-asking
    return dataclasses.replace(
        protocol, settings=protocol.settings.with_(retry_unparseable=protocol.rules.reask)
    )


def _authors(benchmark: str, args: argparse.Namespace) -> Protocol:
    if args.prompt_dir is not None:
        raise ValueError("--prompt_dir: set by the authors' files with --protocol authors")
    if benchmark == "psrbench":
        templates, req, files = load_psr_protocol(args.authors_repo, args.authors_cache, args.authors_url)
        upstream, prompts, sources = "psr", None, _text_sources(templates)
    else:
        loaded = load_judge_protocol(
            benchmark, args.authors_upstream, args.authors_repo, args.authors_cache, args.authors_url
        )
        upstream, req, templates, files = loaded.upstream, loaded.request, None, None
        prompts = PromptSet.from_texts(benchmark, loaded.templates, loaded.sources)
        sources = prompts.sources
        for role, src in loaded.sources.items():
            log.info("authors' %s: %s (sha256 %s)", role, src["file"], src["sha256"][:12])
    if args.judge_model is not None and args.judge_model != req.model:
        log.warning("--judge_model %s replaces the authors' %s in the requests", args.judge_model, req.model)
    rules = AUTHORS[upstream]
    # their client sends no seed, and a temperature or max_tokens only where their files name one
    request = JudgeSettings(
        model=req.model,
        temperature=req.temperature,
        seed=None,
        max_tokens=req.max_tokens,
        image_format=req.image_format,
        jpeg_quality=req.jpeg_quality,
        image_first=req.image_first,
        body_style="sdk" if upstream == "psr" else "requests",  # SconeEval/OmniContext post with `requests`
    )
    settings = settings_from_args(args, request, fixed=tuple(REQUEST_FLAGS))
    return Protocol("authors", upstream, rules, settings, prompts, templates, sources, files)


def _ours(benchmark: str, args: argparse.Namespace) -> Protocol:
    if benchmark == "psrbench":
        from eval.psrbench.semantic import judge_settings, load_prompt_templates

        templates = load_prompt_templates(args.prompt_dir)
        settings = settings_from_args(args, judge_settings())
        return Protocol("ours", None, OURS, settings, None, templates, _text_sources(templates))
    prompts = PromptSet(benchmark, args.prompt_dir)
    # gpt-4.1, temperature 0, seed 0 (+ pass), max_tokens 1400, PNG
    settings = settings_from_args(args, JudgeSettings())
    return Protocol("ours", None, OURS, settings, prompts, None, prompts.sources)


def _text_sources(templates: dict[str, str]) -> dict[str, dict]:
    return {k: {"sha256": hashlib.sha256(t.encode("utf-8")).hexdigest()} for k, t in templates.items()}
