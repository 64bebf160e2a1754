"""Judge prompt templates: our own rubric files in eval/prompts/, optionally overridden by the files of
`--prompt_dir` (e.g. the benchmark authors' original wording, for exact reproduction), which must then
hold every template of the benchmark.

Templates use `string.Template` placeholders: `${instruction}`, `${num_references}`, `${subject}`
(write a literal dollar sign as `$$`). Every substitution is strict: an unknown placeholder is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from string import Template

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "prompts"
TEMPLATE_NAMES = {
    "omnicontext": ("omnicontext_pf", "omnicontext_sc", "omnicontext_sc_scene"),
    "sconeeval": ("sconeeval_pf", "sconeeval_sc", "sconeeval_sc_scene", "sconeeval_dis"),
}


class PromptSet:
    """Named templates of one benchmark plus where each came from (path, sha256) for the score report."""

    def __init__(self, benchmark: str, prompt_dir: str | os.PathLike | None = None):
        if benchmark not in TEMPLATE_NAMES:
            raise ValueError(f"no prompt templates for benchmark {benchmark!r}")
        self.templates: dict[str, Template] = {}
        self.sources: dict[str, dict] = {}
        names = TEMPLATE_NAMES[benchmark]
        folder = BUILTIN_DIR
        if prompt_dir is not None:
            folder = Path(prompt_dir)
            if not folder.is_dir():
                raise FileNotFoundError(f"--prompt_dir {prompt_dir} is not a directory")
            # all or nothing: a partial set would mix two rubrics in one table
            missing = [f"{n}.txt" for n in names if not (folder / f"{n}.txt").is_file()]
            if missing:
                raise FileNotFoundError(
                    f"--prompt_dir {prompt_dir} lacks {', '.join(missing)}: a prompt set must hold all of "
                    f"{', '.join(n + '.txt' for n in names)} (copy the built-in ones from {BUILTIN_DIR} to keep them)"
                )
        for name in names:
            path = folder / f"{name}.txt"
            text = path.read_text(encoding="utf-8")
            self.templates[name] = Template(text)
            self.sources[name] = {"path": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest()}

    @classmethod
    def from_texts(cls, benchmark: str, texts: dict[str, str], sources: dict[str, dict]) -> PromptSet:
        """A prompt set built from template texts read elsewhere (the authors' files,
        eval/authors_protocol.py); every template of the benchmark must be given."""
        names = TEMPLATE_NAMES[benchmark]
        missing = [n for n in names if n not in texts]
        if missing:
            raise ValueError(f"prompt set for {benchmark} lacks {', '.join(missing)}")
        self = cls.__new__(cls)
        self.templates = {n: Template(texts[n]) for n in names}
        self.sources = {n: dict(sources) for n in names}
        return self

    def render(self, name: str, **fields: object) -> str:
        try:
            return self.templates[name].substitute(**{k: str(v) for k, v in fields.items()})
        except KeyError as e:
            raise ValueError(
                f"prompt template {self.sources[name]['path']} uses unknown placeholder {e}"
            ) from None
