"""One judge client for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, ...).

Request shape: one user message, the text prompt first, then every image as a base64 data URL (PNG by
default). Temperature and seed are sent where the server accepts them (a 400 naming one of them drops
that parameter for the rest of the run, with a warning). Retries with exponential backoff + jitter on
rate limits, 5xx, timeouts, connection errors and unparseable replies; quota exhaustion, auth errors and
an unknown model stop the whole run at once (JudgeFatalError) instead of hammering the server.
Finished judgements go to a disk cache so a rerun makes zero calls for them. The API key is read from the
environment, never logged (error texts are redacted) and never written anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import openai

from eval.judge.cache import JudgeCache, UsageLedger, cache_key
from eval.judge.images import ImageLike, encode_image, file_bytes, image_hash, load_rgb
from eval.judge.settings import JudgeSettings

log = logging.getLogger(__name__)

NOT_REPORTED = "(not reported by the server)"
NOT_RECORDED = "(cached before the answering model was recorded)"
_QUOTA_CODES = {"insufficient_quota", "insufficient_user_quota", "billing_hard_limit_reached"}
_OPTIONAL_PARAMS = ("seed", "temperature")


class JudgeFatalError(RuntimeError):
    """The run cannot go on (quota exhausted, bad key, unknown model): stop instead of retrying."""


@dataclass
class JudgeResult:
    """Outcome of one judgement. `value` is parse(raw) when ok; `error` says why not otherwise."""

    ok: bool
    value: Any
    raw: str | None
    error: str | None
    attempts: int  # HTTP attempts made for this item in this run (0 when served from the cache)
    cached: bool


@dataclass
class JudgeJob:
    """Arguments of one `JudgeClient.judge` call: what --dry_run counts and the Batch API submits."""

    prompt: str
    images: list
    parse: Callable[[str], Any]
    scoring_round: int = 0
    tag: str = ""
    send: int = 0  # > 0: the same request sent again by a protocol that asks several times


class _Retryable(Exception):
    """Internal: an attempt failed in a way worth retrying."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


class _ItemFailure(Exception):
    """Internal: this item cannot succeed (e.g. content policy); no retry, the run goes on."""


def _post_raw(client: openai.OpenAI, body: bytes):
    """POST these exact bytes to /chat/completions, with the SDK's error handling."""
    from openai.types.chat import ChatCompletion

    options = {"headers": {"Content-Type": "application/json"}}
    try:
        return client.post("/chat/completions", cast_to=ChatCompletion, content=body, options=options)
    except TypeError:  # an SDK without `content=`: it sends bytes given as the body unchanged
        return client.post("/chat/completions", cast_to=ChatCompletion, body=body, options=options)


class JudgeClient:
    """Thread-safe judge. `usage` counts requests, tokens, retries, failures and cache hits."""

    def __init__(
        self,
        settings: JudgeSettings | None = None,
        *,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        offline: str | None = None,
    ):
        """``api_key``: the key itself (tests, local servers); otherwise read from ``settings.api_key_env``
        when the first request is made. ``offline``: a reason; answer only from the cache, an uncached
        judgement fails with it (no request is sent)."""
        self.settings = settings or JudgeSettings()
        self._api_key = api_key
        self.offline = offline
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self.usage = UsageLedger()
        self._sem = threading.BoundedSemaphore(self.settings.max_concurrency)
        self._lock = threading.Lock()
        # provenance: the `model` each reply says answered it (the name a server maps the request to, e.g.
        # gpt-4.1 -> gpt-4.1-2025-04-14), counted over the replies the scores use (fresh and cached)
        self.served_models: Counter[str] = Counter()
        self._replied = threading.local()  # this thread's last reply's model, stored with its cache entry
        self._openai: openai.OpenAI | None = None
        self._dropped: set[str] = set()
        self._fatal: str | None = None
        self._urls: OrderedDict[str, str] = OrderedDict()
        self._sleep = time.sleep  # replaced in tests

    # ---------------------------------------------------------------- plumbing
    def _client(self) -> openai.OpenAI:
        """The openai client, built on first use so that a fully cached rerun needs no key at all."""
        with self._lock:
            if self._openai is None:
                key = self._api_key or (
                    os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
                )
                if not key:
                    self._set_fatal(
                        f"no API key: set the environment variable {self.settings.api_key_env} "
                        "(or pass --api_key_env NAME of a variable that holds it)"
                    )
                    raise JudgeFatalError(self._fatal)
                self._key_for_redaction = key
                # retries are ours (classified, jittered, ledgered), so the SDK's own are off
                self._openai = openai.OpenAI(
                    api_key=key, base_url=self.settings.base_url, timeout=self.settings.timeout, max_retries=0
                )
            return self._openai

    def _redact(self, text: str) -> str:
        key = getattr(self, "_key_for_redaction", None) or self._api_key
        return text.replace(key, "***") if key else text

    def _set_fatal(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message
            self.usage.fatal = message
            log.error("judge stopped: %s", message)

    def close(self) -> None:
        if self._openai is not None:
            self._openai.close()

    def _pixels(self, images: list[ImageLike]) -> tuple[list, list[str]]:
        """(RGB images, their content hashes as cache-key parts: format + pixels)."""
        rgb = [load_rgb(im) for im in images]
        return rgb, [f"{self.settings.image_format}:{image_hash(im)}" for im in rgb]

    def _image_urls(self, images: list[ImageLike], rgb: list, hashes: list[str]) -> list[str]:
        """Data URLs of the images: re-encoded from their pixels, or (``"file"``) their files as stored,
        memoised by the file's own hash (two files with the same pixels may differ in bytes)."""
        if self.settings.image_format == "file":
            raws = [file_bytes(im) for im in images]
            return [self._data_url(b, "file:" + hashlib.sha256(b).hexdigest()) for b in raws]
        return [self._data_url(im, h) for im, h in zip(rgb, hashes)]

    def _data_url(self, img, digest: str) -> str:
        """Encoded data URL, memoised for the last few images: the PF, SC and DIS calls of one case send
        the same pictures, and PNG-encoding a 1024x1024 image costs far more than a dict lookup."""
        with self._lock:
            if digest in self._urls:
                self._urls.move_to_end(digest)
                return self._urls[digest]
        if isinstance(img, bytes):  # image_format "file": sent as stored
            url = f"data:image/png;base64,{base64.b64encode(img).decode('ascii')}"
        else:
            url = encode_image(img, self.settings.image_format, self.settings.jpeg_quality)
        with self._lock:
            self._urls[digest] = url
            while len(self._urls) > 32:
                self._urls.popitem(last=False)
        return url

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, capped at ``backoff_max``; a server's Retry-After is honoured
        over that cap, up to ``retry_after_max`` (a server asking for an hour does not stall the run)."""
        delay = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: concurrent workers do not retry in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.retry_after_max))
        return delay

    # ---------------------------------------------------------------- one HTTP attempt
    def _content(self, prompt: str, urls: list[str]) -> list[dict]:
        text = [{"type": "text", "text": prompt}]
        pictures = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        return pictures + text if self.settings.image_first else text + pictures

    def _options(self, scoring_round: int) -> dict[str, Any]:
        """The request's optional fields (max_tokens, temperature, seed, extra_body)."""
        kwargs: dict[str, Any] = {}
        if (
            self.settings.max_tokens is not None
        ):  # None: let the server decide (PSRBench's VLM client sends none)
            kwargs["max_tokens"] = self.settings.max_tokens
        if self.settings.temperature is not None and "temperature" not in self._dropped:
            kwargs["temperature"] = self.settings.temperature
        if self.settings.seed is not None and "seed" not in self._dropped:
            # a distinct seed per scoring round keeps the K judging passes independent samples
            kwargs["seed"] = int(self.settings.seed) + int(scoring_round)
        if self.settings.extra_body:
            kwargs["extra_body"] = self.settings.extra_body
        return kwargs

    def _body(self, prompt: str, urls: list[str], scoring_round: int) -> dict:
        """The request as one JSON object: model, messages, then the options (extra_body merged in)."""
        options = self._options(scoring_round)
        extra = options.pop("extra_body", {})
        body = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": self._content(prompt, urls)}],
        }
        body.update(options, **extra)
        return body

    def _request(self, prompt: str, urls: list[str], scoring_round: int) -> str:
        """One chat-completions call -> reply text. Raises _Retryable, _ItemFailure or JudgeFatalError."""
        client = self._client()
        self.usage.add(requests=1)
        try:
            if self.settings.body_style == "requests":
                body = self._body(prompt, urls, scoring_round)
                resp = _post_raw(client, json.dumps(body, allow_nan=False).encode("utf-8"))
            else:
                messages = [{"role": "user", "content": self._content(prompt, urls)}]
                resp = client.chat.completions.create(
                    model=self.settings.model, messages=messages, **self._options(scoring_round)
                )
        except openai.APITimeoutError as e:  # subclass of APIConnectionError: test it first
            raise _Retryable("timeout", f"timeout: {e}") from None
        except openai.APIConnectionError as e:
            raise _Retryable("connection", f"connection error: {e}") from None
        except openai.APIStatusError as e:
            self._classify_status(e)
        except (openai.APIError, ValueError, TypeError, AttributeError, KeyError) as e:
            # a 200 whose body the SDK cannot read as a completion (HTML from a proxy, a JSON array, ...)
            raise _Retryable(
                "malformed", self._redact(f"unreadable reply ({type(e).__name__}: {e})")[:300]
            ) from None
        return self._reply_text(resp)

    def _reply_text(self, resp) -> str:
        """The text of a chat completion. Anything else a server or proxy may answer with 200 (an HTML page,
        a JSON array, a choice without a message, content of another type) is a retryable fault."""
        usage = getattr(resp, "usage", None)
        try:
            self.usage.add(
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            )
        except (TypeError, ValueError):
            pass  # a malformed usage block does not make the reply unusable
        choices = getattr(resp, "choices", None)
        if isinstance(resp, (str, bytes, list, dict)) or not isinstance(choices, list):
            raise _Retryable("malformed", f"reply is not a chat completion: {str(resp)[:120]!r}")
        if not choices:
            raise _Retryable("empty", "reply has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None) if message is not None else None
        if content is None and message is not None and getattr(message, "refusal", None):
            raise _ItemFailure(f"the judge refused: {str(message.refusal)[:200]}")
        if isinstance(content, list):  # content as a list of parts: keep the text parts
            parts = [p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in content]
            content = "".join(x for x in parts if isinstance(x, str))
        if not isinstance(content, str):
            raise _Retryable("malformed", f"reply has no text content: {str(choices[0])[:120]!r}")
        served = getattr(resp, "model", None)
        self._replied.model = served if isinstance(served, str) and served else NOT_REPORTED
        return content

    def _record_reply(self, key: str, raw: str, scoring_round: int, tag: str) -> None:
        """A usable reply to this thread's last request: counted, with the model that answered it, and cached."""
        served = getattr(self._replied, "model", None)
        self._count_served(served)
        if self.cache is not None:
            entry = {
                "raw": raw,
                "model": self.settings.model,
                "served_model": served,
                "scoring_round": scoring_round,
            }
            self.cache.put(key, {**entry, "tag": tag})
        self.usage.add(successes=1)

    def _count_served(self, model: str | None) -> None:
        with self._lock:
            self.served_models[model or NOT_RECORDED] += 1

    def _classify_status(self, e: openai.APIStatusError) -> NoReturn:
        status, code = e.status_code, getattr(e, "code", None)
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
        code = code or err.get("code") or err.get("type")
        msg = self._redact(f"HTTP {status} {code or ''}: {getattr(e, 'message', e)}".strip())
        if code in _QUOTA_CODES or err.get("type") in _QUOTA_CODES:
            self._set_fatal(f"quota exhausted ({msg}); add credit or change the key, then rerun to resume")
            raise JudgeFatalError(self._fatal)
        if status in (401, 403):
            self._set_fatal(f"authentication failed ({msg}); check {self.settings.api_key_env}")
            raise JudgeFatalError(self._fatal)
        if status == 404:
            self._set_fatal(f"endpoint or model not found ({msg}); check --base_url and --judge_model")
            raise JudgeFatalError(self._fatal)
        if status == 429:
            retry_after = None
            try:
                retry_after = float(e.response.headers.get("retry-after"))
            except (TypeError, ValueError, AttributeError):
                pass
            raise _Retryable("rate_limit", msg, retry_after)
        if status >= 500 or status in (408, 409):
            raise _Retryable(f"http_{status}", msg)
        if status == 400:
            text = str(getattr(e, "message", "")).lower()
            for p in _OPTIONAL_PARAMS:
                if (
                    p in text
                    and p not in self._dropped
                    and any(
                        w in text
                        for w in ("unsupported", "not supported", "unrecognized", "unknown", "extra")
                    )
                ):
                    with self._lock:
                        if p not in self._dropped:
                            self._dropped.add(p)
                            self.usage.dropped_params.append(p)
                            log.warning("server rejects '%s'; sending requests without it from now on", p)
                    raise _Retryable("dropped_param", msg, retry_after=0.0)
        raise _ItemFailure(msg)

    # ---------------------------------------------------------------- public API
    def prepare(
        self, prompt: str, images: list[ImageLike], scoring_round: int = 0, send: int = 0
    ) -> tuple[str, dict]:
        """(cache key, request body) of one judgement, exactly as ``judge`` would send it: for requests
        answered elsewhere (the Batch API, eval/judge/batch.py)."""
        rgb, hashes = self._pixels(images)
        body = self._body(prompt, self._image_urls(images, rgb, hashes), scoring_round)
        return cache_key(self.settings.model, prompt, hashes, scoring_round, send), body

    def accept(
        self, key: str, raw: str, parse: Callable[[str], Any], scoring_round: int = 0, tag: str = ""
    ) -> bool:
        """Cache a reply obtained elsewhere when ``parse`` accepts it; returns whether it did."""
        try:
            parse(raw)
        except ValueError as e:
            self.usage.error("unparseable")
            log.warning("[%s] batch reply does not parse: %s", tag, e)
            return False
        self._record_reply(key, raw, scoring_round, tag)
        return True

    def reply_text(self, completion: dict) -> str:
        """The text of a chat completion given as JSON (a Batch API output line's body); ValueError when it
        is not a usable completion."""
        from openai.types.chat import ChatCompletion

        try:
            return self._reply_text(ChatCompletion.model_validate(completion))
        except (_Retryable, _ItemFailure, openai.APIError, ValueError, TypeError) as e:
            raise ValueError(f"not a usable chat completion: {e}") from None

    def is_cached(self, prompt: str, images: list[ImageLike], scoring_round: int = 0, send: int = 0) -> bool:
        """Whether ``judge`` would answer this from the disk cache (no request)."""
        if self.cache is None:
            return False
        _, hashes = self._pixels(images)
        return self.cache.get(cache_key(self.settings.model, prompt, hashes, scoring_round, send)) is not None

    def judge(
        self,
        prompt: str,
        images: list[ImageLike],
        parse: Callable[[str], Any],
        *,
        scoring_round: int = 0,
        tag: str = "",
        send: int = 0,
    ) -> JudgeResult:
        """Ask the judge about `images` (PIL / path / bytes) with `prompt`; `parse(reply)` must return the
        value or raise ValueError (-> retry, then ok=False). ``send`` > 0: the same request sent again by a
        protocol that asks several times (its own cache entry). Raises JudgeFatalError to stop the run."""
        if self._fatal is not None:
            raise JudgeFatalError(self._fatal)
        try:
            rgb, hashes = self._pixels(images)
        except (OSError, TypeError, ValueError) as e:
            self.usage.add(failures=1)
            return JudgeResult(False, None, None, f"image error: {e}", 0, False)
        key = cache_key(self.settings.model, prompt, hashes, scoring_round, send)
        if self.cache is not None and (entry := self.cache.get(key)) is not None:
            try:
                value = parse(entry["raw"])
                self.usage.add(cache_hits=1)
                self._count_served(entry.get("served_model"))
                return JudgeResult(True, value, entry["raw"], None, 0, True)
            except (ValueError, KeyError, TypeError):
                log.warning("[%s] cached reply no longer parses; asking again", tag)
        if self.offline is not None:
            self.usage.add(failures=1)
            return JudgeResult(False, None, None, self.offline, 0, False)
        try:
            urls = self._image_urls(images, rgb, hashes)
        except (OSError, TypeError) as e:
            self.usage.add(failures=1)
            return JudgeResult(False, None, None, f"image error: {e}", 0, False)

        attempts, raw, error = 0, None, None
        max_attempts = self.settings.max_retries + 1
        while attempts < max_attempts:
            if self._fatal is not None:
                raise JudgeFatalError(self._fatal)
            attempts += 1
            retry_after = None
            try:
                with self._sem:
                    raw = self._request(prompt, urls, scoring_round)
                value = parse(raw)
            except _Retryable as e:
                error, retry_after = str(e), e.retry_after
                self.usage.error(e.kind)
                if e.kind == "dropped_param":
                    attempts -= 1  # not the item's fault: a free attempt
            except _ItemFailure as e:
                error = str(e)
                self.usage.error("rejected")
                break
            except ValueError as e:
                error = f"unparseable reply: {e}"
                self.usage.error("unparseable")
                if not self.settings.retry_unparseable:
                    break
            else:
                self._record_reply(key, raw, scoring_round, tag)
                return JudgeResult(True, value, raw, None, attempts, False)
            if attempts < max_attempts:
                self.usage.add(retries=1)
                delay = self._backoff(attempts, retry_after)
                log.debug("[%s] attempt %d failed (%s); retrying in %.2fs", tag, attempts, error, delay)
                self._sleep(delay)
        self.usage.add(failures=1)
        log.warning("[%s] failed after %d attempt(s): %s", tag, attempts, error)
        return JudgeResult(False, None, raw, error, attempts, False)
