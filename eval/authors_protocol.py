"""The benchmark authors' judging protocol, read from their released evaluation files (docs/evaluation.md §5).

``--protocol authors`` makes a score comparable with a published table: the judge prompts and request
settings (model name, max_tokens, temperature, image encoding, image order) are taken from the authors'
own files, never from text copied into this repository. Each file is pinned by repository, commit and
sha256; it is read from a local clone (``--authors_repo DIR``) or downloaded once from the public
repository at that commit and cached. A file whose hash is not the pinned one is refused, not used: an
unknown version of a rubric would silently give other numbers.

The files are parsed with ``ast`` (nothing of them is executed): string constants by variable name, the
request dict / call keywords of their client. How the authors assemble a prompt from those strings (which
context block goes before which rubric, which placeholder is replaced) is written down here per upstream.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from eval.psrbench.semantic import SEMANTIC_PROMPTS

log = logging.getLogger(__name__)

RAW_BASE_URL = "https://raw.githubusercontent.com"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scone" / "authors"
PIL_DEFAULT_JPEG_QUALITY = 75  # what Image.save(format="JPEG") uses without a quality argument


class AuthorsProtocolError(RuntimeError):
    """The authors' files cannot be used: missing, unreachable, an unknown hash, or not the expected structure."""


@dataclass(frozen=True)
class Upstream:
    """One pinned release of an authors' evaluation code: role -> (path in the repository, sha256)."""

    name: str
    repo: str
    commit: str
    files: dict[str, tuple[str, str]] = field(default_factory=dict)

    def describe(self, role: str) -> str:
        return f"{self.repo}@{self.commit[:7]}:{self.files[role][0]}"


# PSR's semantic-alignment script of subset S is eval/semantic-alignment/{name}-alignment.py, where name is
# also our own prompt file's (SEMANTIC_PROMPTS).
_PSR_SCRIPTS = SEMANTIC_PROMPTS
UPSTREAMS: dict[str, Upstream] = {
    # SconeEval's scorer; its prompt file also holds Scone's copy of the OmniContext rubrics.
    "scone": Upstream(
        "scone",
        "Ryann-Ran/Scone",
        "787fa8fe26e6455c23945ee9b71058cb6df13fcc",
        {
            "prompts": (
                "eval/s2i/sconeeval/prompt_generator.py",
                "9c4176426d84d05f1d56399a8ea14571707d75a3942b9d2ec308895c1e305226",
            ),
            "client": (
                "eval/s2i/sconeeval/openai_util.py",
                "b234d4378a1de11a7bd9155de3b3de6275c9677ceda769947a0c50cdba1b91ed",
            ),
        },
    ),
    # The original OmniContext evaluator (its PF/SC rubrics differ from Scone's copy in a few lines).
    "omnigen2": Upstream(
        "omnigen2",
        "VectorSpaceLab/OmniGen2",
        "0f72fa92564d9f8ba76f53fcc3c05aca2372458f",
        {
            "prompts": (
                "omnicontext/prompt_generator.py",
                "a8f2976f9ceff9f0ae7d80f604dd272d491f846ab434fa033530c797583505a1",
            ),
            "client": (
                "omnicontext/openai_util.py",
                "b234d4378a1de11a7bd9155de3b3de6275c9677ceda769947a0c50cdba1b91ed",
            ),
        },
    ),
    # PSRBench's semantic-alignment scripts, one per subset (Position is geometric).
    "psr": Upstream(
        "psr",
        "wang-shulei/PSR",
        "c7191686cf7ada2e833238b0cc7b735546ab5c4c",
        {
            subset: (f"eval/semantic-alignment/{stem}-alignment.py", digest)
            for (subset, stem), digest in zip(
                _PSR_SCRIPTS.items(),
                (
                    "e01b9f9fa14d184145f336849ff84d7393d77034e9a8a13a57ca31f2ed68921c",
                    "75a7a1bf1ef664a9ff265563ea3c7460edf12056df92fbb05d1cff06284aaabb",
                    "03e8bb2bb1ea29e1c985acdc285c34e65b6611125c6325ccef56f50e1a4a4c9e",
                    "bb7f3dab550361960cd76846b5e0dcc7259daab45a08069a77be5cd1456c393a",
                    "bb7f3dab550361960cd76846b5e0dcc7259daab45a08069a77be5cd1456c393a",
                    "bb7f3dab550361960cd76846b5e0dcc7259daab45a08069a77be5cd1456c393a",
                ),
            )
        },
    ),
}
OMNICONTEXT_UPSTREAMS = ("scone", "omnigen2")


def add_protocol_args(p: argparse.ArgumentParser, clone_of: str) -> None:
    """``--protocol``, ``--authors_repo``, ``--authors_cache`` (and the hidden ``--authors_url``) of a CLI."""
    p.add_argument(
        "--protocol",
        choices=("ours", "authors"),
        default="ours",
        help="ours: our rubric wording and request settings; authors: the benchmark authors' scoring, with "
        "prompts and request settings read from their pinned evaluation files (docs/evaluation.md)",
    )
    p.add_argument("--authors_repo", default=None, help=f"--protocol authors: a local clone of {clone_of}")
    p.add_argument(
        "--authors_cache",
        default=None,
        help="--protocol authors without --authors_repo: where downloaded files are kept "
        "(default: ~/.cache/scone/authors)",
    )
    p.add_argument("--authors_url", default=RAW_BASE_URL, help=argparse.SUPPRESS)  # tests: a local server


# ----------------------------------------------------------------------------- getting the files
class AuthorsFiles:
    """Reads an upstream's pinned files from a local clone, or from the cache / the public repository."""

    def __init__(
        self,
        upstream: Upstream,
        authors_repo: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        base_url: str = RAW_BASE_URL,
        timeout: float = 30.0,
    ):
        self.upstream, self.timeout, self.base_url = upstream, timeout, base_url.rstrip("/")
        self.authors_repo = Path(authors_repo) if authors_repo is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
        self.sources: dict[str, dict] = {}

    def _check(self, role: str, data: bytes, where: str) -> bytes:
        path, expected = self.upstream.files[role]
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            raise AuthorsProtocolError(
                f"{where}: sha256 {got} is not the pinned {expected} of {self.upstream.describe(role)}; "
                "an unknown version of the authors' file is refused (check out that commit)"
            )
        self.sources[role] = {"file": self.upstream.describe(role), "sha256": got, "read_from": where}
        return data

    def read(self, role: str) -> str:
        """The text of the file playing ``role`` (hash-checked)."""
        if role not in self.upstream.files:
            raise AuthorsProtocolError(f"{self.upstream.repo} has no pinned file for {role!r}")
        path, _ = self.upstream.files[role]
        if self.authors_repo is not None:
            local = self.authors_repo / path
            if not local.is_file():
                raise AuthorsProtocolError(
                    f"--authors_repo {self.authors_repo} has no {path} (a clone of {self.upstream.repo} "
                    f"at {self.upstream.commit[:7]} is expected)"
                )
            return self._check(role, local.read_bytes(), str(local)).decode("utf-8")
        cached = self.cache_dir / self.upstream.repo.replace("/", "+") / self.upstream.commit / path
        if cached.is_file():
            return self._check(role, cached.read_bytes(), str(cached)).decode("utf-8")
        url = f"{self.base_url}/{self.upstream.repo}/{self.upstream.commit}/{path}"
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # noqa: S310 (pinned https URL)
                data = resp.read()
        except (urllib.error.URLError, OSError) as e:
            raise AuthorsProtocolError(
                f"cannot download {url} ({e}); pass --authors_repo with a local clone of {self.upstream.repo}"
            ) from None
        self._check(role, data, url)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(cached.suffix + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
        return data.decode("utf-8")


# ----------------------------------------------------------------------------- reading them (ast)
def _parse(text: str, where: str) -> ast.Module:
    try:
        return ast.parse(text)
    except SyntaxError as e:
        raise AuthorsProtocolError(f"{where}: not readable Python ({e})") from None


def module_strings(text: str, where: str = "file") -> dict[str, str]:
    """Module-level ``NAME = "string"`` assignments."""
    out = {}
    for node in _parse(text, where).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        out[t.id] = node.value.value
    return out


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError):
        return None


@dataclass
class RequestSettings:
    """What the authors' client puts in a chat-completions request (None: not sent)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    image_format: str = "jpeg"  # "jpeg": re-encoded by PIL; "file": the file's own bytes
    jpeg_quality: int = PIL_DEFAULT_JPEG_QUALITY
    image_first: bool = False  # content order: images before the text


def openai_util_settings(text: str, where: str = "openai_util.py") -> RequestSettings:
    """The request of the OmniContext/SconeEval client: the payload dict literal holding ``"model"`` and
    the ``save(..., format="JPEG"[, quality=q])`` of its image encoder. Text goes before the images."""
    payload, quality, jpeg = None, PIL_DEFAULT_JPEG_QUALITY, False
    for node in ast.walk(_parse(text, where)):
        if isinstance(node, ast.Dict):
            keys = [_literal(k) if k is not None else None for k in node.keys]
            if "model" in keys and "messages" in keys:
                payload = {k: _literal(v) for k, v in zip(keys, node.values) if k not in ("messages",)}
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "save":
            kw = {k.arg: _literal(k.value) for k in node.keywords}
            if str(kw.get("format", "")).upper() in ("JPEG", "JPG"):
                jpeg = True
                quality = int(kw.get("quality") or PIL_DEFAULT_JPEG_QUALITY)
    if payload is None or not isinstance(payload.get("model"), str) or not jpeg:
        raise AuthorsProtocolError(f"{where}: no request payload with a model / no JPEG encoder found")
    return RequestSettings(
        model=payload["model"],
        max_tokens=payload.get("max_tokens"),
        temperature=payload.get("temperature"),
        image_format="jpeg",
        jpeg_quality=quality,
        image_first=False,
    )


def psr_script(text: str, where: str = "alignment script") -> tuple[str, RequestSettings]:
    """(prompt template, request) of one PSR semantic-alignment script: the ``self.task = '''...'''``
    string (a ``str.format`` template with one ``{}``) and the keywords of its ``chat.completions.create``
    call; the image goes first when the first content part is an ``image_url``."""
    task, create = None, None
    for node in ast.walk(_parse(text, where)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t = node.targets[0]
            if isinstance(t, ast.Attribute) and t.attr == "task" and isinstance(node.value, ast.Constant):
                task = node.value.value
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "create":
            create = node
    if not isinstance(task, str) or task.count("{}") != 1 or create is None:
        raise AuthorsProtocolError(f"{where}: no 'self.task' template with one '{{}}' / no create() call")
    kw = {k.arg: k.value for k in create.keywords}
    model, temperature = _literal(kw.get("model")), _literal(kw.get("temperature"))
    image_first = False
    messages = kw.get("messages")
    if isinstance(messages, ast.List) and messages.elts and isinstance(messages.elts[0], ast.Dict):
        msg = dict(zip([_literal(k) for k in messages.elts[0].keys], messages.elts[0].values))
        content = msg.get("content")
        if isinstance(content, ast.List) and content.elts and isinstance(content.elts[0], ast.Dict):
            first = dict(zip([_literal(k) for k in content.elts[0].keys], content.elts[0].values))
            image_first = _literal(first.get("type")) == "image_url"
    if not isinstance(model, str):
        raise AuthorsProtocolError(f"{where}: create() has no literal model name")
    return task, RequestSettings(
        model=model,
        max_tokens=_literal(kw["max_tokens"]) if "max_tokens" in kw else None,
        temperature=temperature,
        image_format="file",
        image_first=image_first,
    )


# ----------------------------------------------------------------------------- assembling prompts
# How each upstream's PromptGenerator builds a prompt: (context variable, rubric variable) per template
# of our PromptSet; "<instruction>" / "<subject>" are its placeholders (plain str.replace).
_ASSEMBLY: dict[tuple[str, str], dict[str, tuple[str, str]]] = {
    ("scone", "sconeeval"): {
        "sconeeval_pf": ("_context_no_delimit", "_prompt_sconeeval_COM_PF"),
        "sconeeval_sc": ("_context_no_delimit", "_prompt_sconeeval_COM_SC_Single_and_Multiple"),
        "sconeeval_sc_scene": ("_context_no_delimit", "_prompt_sconeeval_COM_SC_Scene"),
        "sconeeval_dis": ("_context_no_delimit_distinction", "_prompt_sconeeval_DIS"),
    },
    ("scone", "omnicontext"): {
        "omnicontext_pf": ("_context_no_delimit", "_prompt_omnicontext_PF_Single_and_multiple"),
        "omnicontext_sc": ("_context_no_delimit", "_prompt_omnicontext_SC_Single_and_Multiple"),
        "omnicontext_sc_scene": ("_context_no_delimit", "_prompt_omnicontext_SC_Scene"),
    },
    ("omnigen2", "omnicontext"): {
        "omnicontext_pf": (
            "_context_no_delimit",
            "_prompts_0shot_in_context_generation_rule_PF_Single_and_Multiple",
        ),
        "omnicontext_sc": (
            "_context_no_delimit",
            "_prompts_0shot_in_context_generation_rule_SC_Single_and_Multiple",
        ),
        "omnicontext_sc_scene": ("_context_no_delimit", "_prompts_0shot_in_context_generation_rule_SC_Scene"),
    },
}


def to_template(text: str) -> str:
    """An authors' prompt as one of our ``string.Template`` files: ``$`` escaped, their placeholders ours."""
    return (
        text.replace("$", "$$").replace("<instruction>", "${instruction}").replace("<subject>", "${subject}")
    )


@dataclass
class AuthorsProtocol:
    """Prompt templates (our PromptSet names) and request settings read from one upstream's files."""

    upstream: str
    templates: dict[str, str]
    request: RequestSettings
    sources: dict[str, dict]


def load_judge_protocol(
    benchmark: str,
    upstream: str | None = None,
    authors_repo: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    base_url: str = RAW_BASE_URL,
) -> AuthorsProtocol:
    """SconeEval (upstream "scone") or OmniContext ("scone": Scone's copy, the default; "omnigen2": the
    original evaluator) as their authors judge it."""
    upstream = upstream or "scone"
    if (upstream, benchmark) not in _ASSEMBLY:
        raise AuthorsProtocolError(f"no authors' protocol for {benchmark} from {upstream!r}")
    files = AuthorsFiles(UPSTREAMS[upstream], authors_repo, cache_dir, base_url)
    strings = module_strings(files.read("prompts"), UPSTREAMS[upstream].describe("prompts"))
    request = openai_util_settings(files.read("client"), UPSTREAMS[upstream].describe("client"))
    templates = {}
    for name, (context, rubric) in _ASSEMBLY[(upstream, benchmark)].items():
        missing = [v for v in (context, rubric) if v not in strings]
        if missing:
            raise AuthorsProtocolError(
                f"{UPSTREAMS[upstream].describe('prompts')} lacks {', '.join(missing)} (another structure)"
            )
        templates[name] = to_template(strings[context] + strings[rubric])
    return AuthorsProtocol(upstream, templates, request, files.sources)


def load_psr_protocol(
    authors_repo: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    base_url: str = RAW_BASE_URL,
) -> tuple[dict[str, str], RequestSettings, dict[str, dict]]:
    """PSRBench semantic alignment as its authors run it: (subset -> ``str.format`` template with one
    ``{}``, the request settings (the same in every script, else an error), file sources)."""
    files = AuthorsFiles(UPSTREAMS["psr"], authors_repo, cache_dir, base_url)
    templates, request = {}, None
    for subset in _PSR_SCRIPTS:
        task, req = psr_script(files.read(subset), UPSTREAMS["psr"].describe(subset))
        if request is not None and req != request:
            raise AuthorsProtocolError(f"PSR scripts disagree on the request: {request} vs {req} ({subset})")
        templates[subset], request = task, req
    return templates, request, files.sources
