"""The judge client's options as one object, and the command-line flags every judged benchmark shares.

``JudgeSettings`` holds what a request carries (model, sampling settings, image encoding, body layout) and
how the client talks to the server (endpoint, concurrency, retries, timeouts). It holds no secret: the API
key is read from the environment variable it names, so the settings can be written next to the scores.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace

IMAGE_FORMATS = ("png", "jpeg", "file")  # "file": each image's own file bytes, labelled image/png
BODY_STYLES = ("sdk", "requests")


@dataclass(frozen=True)
class JudgeSettings:
    model: str = "gpt-4.1"
    base_url: str | None = None  # None: the openai SDK's default (OpenAI)
    api_key_env: str = "OPENAI_API_KEY"
    # the request; None: not sent (the server's default)
    temperature: float | None = 0.0
    seed: int | None = 0  # pass s of a multi-pass run sends seed + s
    max_tokens: int | None = 1400
    extra_body: dict = field(default_factory=dict)
    image_format: str = "png"
    jpeg_quality: int = 75
    image_first: bool = False  # content order: the images before the text
    # "sdk": the openai SDK's body; "requests": {"model", "messages", ...} in that order, serialised as
    # `requests.post(json=...)` does (the SconeEval/OmniContext authors' client), byte for byte
    body_style: str = "sdk"
    # the connection
    max_concurrency: int = 8
    max_retries: int = 5
    timeout: float = 180.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 300.0  # longest wait a server's Retry-After may ask for
    # False: a reply the parser rejects fails at once (protocols whose own tries are the re-asking)
    retry_unparseable: bool = True

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if self.body_style not in BODY_STYLES:
            raise ValueError(f"body_style must be one of {BODY_STYLES}, got {self.body_style!r}")

    def with_(self, **changes) -> JudgeSettings:
        return replace(self, **changes)

    def as_record(self) -> dict:
        """Every setting, for score files (no secret is held here)."""
        return asdict(self)


def add_judge_args(
    p: argparse.ArgumentParser, *, api_key_env: str = "OPENAI_API_KEY", base_url: str | None = None
) -> None:
    """The judge flags of every judged benchmark, one vocabulary (PSRBench's older ``--judge_*`` spellings
    are aliases). Request settings default to None here: the protocol fills in what is left unset, and
    refuses those its authors' files fix. The connection flags default to ``JudgeSettings``'."""
    d = JudgeSettings()
    p.add_argument(
        "--judge_model", default=None, help="model name the server serves (default: the protocol's)"
    )
    p.add_argument(
        "--base_url",
        "--judge_base_url",
        dest="base_url",
        default=base_url,
        help="OpenAI-compatible endpoint, e.g. http://host:8000/v1",
    )
    p.add_argument(
        "--api_key_env",
        "--judge_api_key_env",
        dest="api_key_env",
        default=api_key_env,
        help="environment variable holding the key",
    )
    p.add_argument(
        "--max_concurrency",
        "--judge_concurrency",
        dest="max_concurrency",
        type=int,
        default=d.max_concurrency,
    )
    p.add_argument(
        "--max_retries", "--judge_max_retries", dest="max_retries", type=int, default=d.max_retries
    )
    p.add_argument("--timeout", "--judge_timeout", dest="timeout", type=float, default=d.timeout)
    p.add_argument(
        "--temperature",
        "--judge_temperature",
        dest="temperature",
        type=float,
        default=None,
        help="default: the protocol's; negative: do not send a temperature",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="default: the protocol's; negative: do not send a seed"
    )
    p.add_argument(
        "--max_tokens",
        "--judge_max_tokens",
        dest="max_tokens",
        type=int,
        default=None,
        help="default: the protocol's",
    )
    p.add_argument("--backoff_base", type=float, default=d.backoff_base)
    p.add_argument("--backoff_max", type=float, default=d.backoff_max)
    p.add_argument(
        "--retry_after_max",
        type=float,
        default=d.retry_after_max,
        help="longest wait a server's Retry-After may ask for (it overrides --backoff_max up to this)",
    )
    p.add_argument(
        "--image_format",
        choices=("png", "jpeg"),
        default=None,
        help="default: the protocol's (png for ours; jpeg = the SconeEval/OmniContext authors')",
    )
    p.add_argument(
        "--cache_dir",
        "--judge_cache_dir",
        dest="cache_dir",
        default=None,
        help="judge cache folder (default: judge_cache/ in the output folder)",
    )


# the request flags above, by JudgeSettings field
REQUEST_FLAGS = {
    "temperature": "--temperature",
    "seed": "--seed",
    "max_tokens": "--max_tokens",
    "image_format": "--image_format",
}


def settings_from_args(
    args: argparse.Namespace, defaults: JudgeSettings, fixed: tuple[str, ...] = ()
) -> JudgeSettings:
    """The run's settings: ``defaults`` (the protocol's request) with the flags given on the command line.
    ValueError for a flag in ``fixed`` (set by the authors' files). A negative --temperature/--seed: not sent."""
    clash = [REQUEST_FLAGS[k] for k in fixed if getattr(args, k, None) is not None]
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the authors' files with --protocol authors")
    given = {k: getattr(args, k) for k in REQUEST_FLAGS if getattr(args, k, None) is not None}
    for k in ("temperature", "seed"):
        if k in given and given[k] < 0:
            given[k] = None
    return defaults.with_(
        model=args.judge_model or defaults.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency,
        max_retries=args.max_retries,
        timeout=args.timeout,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        retry_after_max=args.retry_after_max,
        **given,
    )
