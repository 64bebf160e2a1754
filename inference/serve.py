"""An OpenAI-compatible HTTP API on one loaded Scone model.

    python -m inference.serve                                  # the shipped tiny model, http://127.0.0.1:8000/v1
    python -m inference.serve --model_path ckpts/Scone --lora mine=ckpts/scone_lora/0000999 --api_key_env SCONE_API_KEY

Endpoints (the shapes image clients already speak):

* ``POST /v1/images/edits`` — multipart: one or more ``image[]`` (or ``image``) files, ``prompt``, ``size``
  (``WxH``), ``n``, ``response_format`` (``b64_json``), ``seed``, ``model`` and Scone's sampling fields as
  extra form fields (``num_inference_steps``, ``cfg_text_scale``, ``cfg_img_scale`` / ``true_cfg_scale``,
  ``cfg_interval``, ``cfg_renorm_type``, ``cfg_renorm_min``, ``timestep_shift``, ``cache``, ``think``);
* ``POST /v1/images/generations`` — the same as JSON, without reference images;
* ``POST /v1/chat/completions`` — with ``modalities: ["image"]`` it generates (images as ``image_url`` data
  URLs in the user message, the sampling fields at the top level as ``extra_body`` puts them, like
  vllm-omni's BAGEL server) and answers with the image as a data URL in the message content; without it,
  it answers the question about the images (understanding);
* ``GET /v1/models`` — the base model and every adapter loaded with ``--lora NAME=PATH``, chosen per request
  by ``model``. Requests for different adapters never share a forward.

Every request is checked before it is queued: size of the body, images (count, bytes, pixels, decodable),
prompt (characters, then tokens against the model's context), sampling values; unknown fields are refused,
not dropped. Errors come in OpenAI's JSON shape with 400/401/404/413/429/500 codes. All requests go through
one ``RequestBatcher`` (inference/request_batcher.py): requests with the same settings and adapter share
forward passes; with ``--web`` the Gradio demo is served at ``/web`` by the same process and queue, so a web
user and an API client share batches too.

Why FastAPI + uvicorn: both are widely used, maintained and already installed with Gradio (which runs on
them), they parse multipart uploads with bounded sizes (python-multipart), and the OpenAI SDK's own examples
and vLLM/SGLang's servers use the same stack. Binds 127.0.0.1 unless ``--host`` says otherwise; the API key
(``--api_key``, or better ``--api_key_env NAME``) is compared in constant time and never logged.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' ``Request`` annotations, which
# name a class imported inside create_app (FastAPI is imported only when a server starts).
import argparse
import hmac
import json
import logging
import os
import random
import sys
import time
import uuid

import torch

from inference.api_requests import (
    CHAT_FIELDS,
    IMAGE_FIELDS,
    SAMPLING_FIELDS,
    APIError,
    chat_inputs,
    parse_flag,
    parse_number,
    parse_size,
    png_b64,
    refuse_unknown,
    sampling_settings,
)
from inference.cli_common import (
    USER_ERRORS,
    add_model_args,
    default_model_path,
    report_user_error,
)
from inference.pipeline import GenerationRequest, SconePipeline
from inference.request_batcher import QueueFull, RequestBatcher, describe_error
from inference.serving import (
    Limits,
    add_front_door_args,
    check_images,
    check_new_tokens,
    check_prompt,
    check_sampling,
    image_cost,
    load_served_model,
    understand_key,
)

log = logging.getLogger("scone.serve")


# ---------------------------------------------------------------------- the service
class ImageAPI:
    """The API's logic without HTTP: validate, queue, wait, answer. ``models`` maps an API model id to an
    adapter name (None: the base)."""

    def __init__(self, pipe: SconePipeline, batcher: RequestBatcher, limits: Limits, base_id: str):
        self.pipe, self.batcher, self.limits = pipe, batcher, limits
        self.models = {base_id: None, **{name: name for name in pipe.adapters}}
        self.base_id = base_id

    def adapter(self, model) -> str | None:
        if model is None or model == "":
            return None
        if model not in self.models:
            raise APIError(
                404,
                f"model {model!r} is not served here; GET /v1/models lists {sorted(self.models)}",
                "model",
                "model_not_found",
            )
        return self.models[model]

    def list_models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "scone"} for m in self.models],
        }

    def _submit(self, key, payload, cost):
        try:
            return self.batcher.submit(key, payload, cost)
        except QueueFull as e:
            raise APIError(429, f"the server is busy ({e}); try again in a moment", code="busy") from e

    @staticmethod
    def _result(job):
        if job.error is not None:
            if isinstance(job.error, ValueError):
                raise APIError(400, str(job.error))
            raise APIError(500, f"the request failed: {describe_error(job.error)}")
        return job.result

    def image_jobs(self, fields: dict, refs: list[tuple[str, bytes]]) -> tuple[list, int]:
        """Check one image request and queue its ``n`` images. Returns (jobs, tokens of the prompt)."""
        if fields.get("response_format", "b64_json") != "b64_json":
            raise APIError(
                400, "response_format must be b64_json (images are returned inline)", "response_format"
            )
        if fields.get("stream") not in (None, False, "false"):
            raise APIError(400, "stream is not supported", "stream")
        adapter = self.adapter(fields.get("model"))
        n = parse_number("n", fields.get("n", 1), int)
        if not 1 <= n <= self.limits.max_images_per_request:
            raise APIError(400, f"n must be from 1 to {self.limits.max_images_per_request}, got {n}", "n")
        try:
            images = check_images(refs, self.limits, min_images=0)
            prompt, ids = check_prompt(fields.get("prompt"), "a prompt", self.limits, self.pipe)
            height, width = parse_size(fields.get("size"), fields.get("height"), fields.get("width"))
            base = self.pipe.sampling
            settings = {"num_timesteps": base.num_timesteps, **sampling_settings(fields)}
            cfg = check_sampling(
                base, self.limits, height=height or base.height, width=width or base.width, **settings
            )
        except ValueError as e:
            raise APIError(400, str(e)) from e
        think = parse_flag("think", fields.get("think"))
        seed = fields.get("seed")
        seed = random.randrange(2**31) if seed is None else parse_number("seed", seed, int)
        key = ("generate", adapter, cfg, think)
        jobs = [
            self._submit(key, GenerationRequest(images, prompt, seed + i), image_cost(images))
            for i in range(n)
        ]
        return jobs, len(ids)

    def image_response(self, jobs) -> dict:
        return {
            "created": int(time.time()),
            "data": [{"b64_json": png_b64(self._result(j).image)} for j in jobs],
        }

    def understand_job(self, fields: dict, refs: list[tuple[str, bytes]], text: str):
        """Check one question and queue it. Returns (job, tokens of the question)."""
        adapter = self.adapter(fields.get("model"))
        n_tokens = parse_number(
            "max_tokens", fields.get("max_completion_tokens") or fields.get("max_tokens") or 256, int
        )
        temperature = parse_number("temperature", fields.get("temperature") or 0.0)
        try:
            n_tokens = check_new_tokens(n_tokens, self.limits, self.pipe, "max_tokens")
            images = check_images(refs, self.limits, min_images=0)
            prompt, ids = check_prompt(text, "a question", self.limits, self.pipe)
        except ValueError as e:
            raise APIError(400, str(e)) from e
        seed = fields.get("seed")
        payload = dict(
            images=images,
            prompt=prompt,
            max_new_tokens=n_tokens,
            do_sample=temperature > 0,
            temperature=temperature or 0.3,
            seed=None if seed is None else parse_number("seed", seed, int),
            think=parse_flag("think", fields.get("think")),
        )
        return self._submit(understand_key(adapter), payload, image_cost(images)), len(ids)

    def chat_response(self, fields: dict, content, prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": fields.get("model") or self.base_id,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


# ---------------------------------------------------------------------- HTTP
class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 without being read further
    (by its Content-Length, or by counting when it has none)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_error(send, APIError(413, f"the request is larger than {self.limit:,} bytes"))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _send_error(send, APIError(413, f"the request is larger than {self.limit:,} bytes"))


class _TooLarge(Exception):
    pass


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(api: ImageAPI, api_key: str | None = None):
    """The FastAPI application of ``api``; ``api_key``: required as ``Authorization: Bearer KEY``."""
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="Scone OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        log.exception("unexpected error")
        return JSONResponse(APIError(500, f"internal error: {describe_error(e)}").body(), status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                e = APIError(
                    401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key"
                )
                return await api_error(request, e)  # middleware errors do not reach the handlers
        return await call_next(request)

    async def json_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        return body

    async def wait(jobs) -> None:
        for job in jobs:
            await anyio.to_thread.run_sync(job.wait)

    @app.get("/v1/models")
    async def models():
        return api.list_models()

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        fields = await json_body(request)
        refuse_unknown(fields, IMAGE_FIELDS)
        jobs, _ = api.image_jobs(fields, [])
        await wait(jobs)
        return api.image_response(jobs)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "send multipart/form-data with image[] files and a prompt")
        try:
            form = await request.form(
                max_files=api.limits.max_images,
                max_fields=64,
                max_part_size=4 * api.limits.max_prompt_chars + 1024,
            )
        except Exception as e:  # too many files or fields, a text field over the limit, a malformed body
            if "maximum size" in str(e):
                raise APIError(
                    400,
                    f"a text field is too long: the prompt may have at most "
                    f"{api.limits.max_prompt_chars:,} characters",
                    "prompt",
                ) from None
            raise APIError(400, f"cannot read the form: {getattr(e, 'detail', e)}") from None
        fields, refs = {}, []
        for name, value in form.multi_items():
            if name in ("image", "image[]"):
                if not hasattr(value, "read"):
                    raise APIError(400, f"{name} must be a file", name)
                refs.append((value.filename or f"image {len(refs) + 1}", await value.read()))
            elif name in fields:
                raise APIError(400, f"field {name!r} given twice", name)
            else:
                fields[name] = value if isinstance(value, str) else None
        refuse_unknown(fields, IMAGE_FIELDS)
        if not refs:
            raise APIError(400, "send at least one reference image as image[]", "image")
        jobs, _ = api.image_jobs(fields, refs)
        await wait(jobs)
        return api.image_response(jobs)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        fields = await json_body(request)
        refuse_unknown(fields, CHAT_FIELDS)
        text, refs = chat_inputs(fields.get("messages"))
        modalities = fields.get("modalities") or ["text"]
        if not isinstance(modalities, list) or not set(modalities) <= {"text", "image"}:
            raise APIError(400, f"modalities must be ['image'] or ['text'], got {modalities!r}", "modalities")
        if "image" in modalities:
            jobs, prompt_tokens = api.image_jobs(
                {**{k: v for k, v in fields.items() if k != "messages"}, "prompt": text}, refs
            )
            await wait(jobs)
            parts = [
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + png_b64(api._result(j).image)},
                }
                for j in jobs
            ]
            return api.chat_response(fields, parts, prompt_tokens, 0)
        for name in ("height", "width", "size", *SAMPLING_FIELDS):
            if fields.get(name) is not None:
                raise APIError(400, f"{name} is for image generation (modalities: ['image'])", name)
        if fields.get("n") not in (None, 1) or fields.get("stream"):
            raise APIError(400, "n > 1 and stream are not supported for text answers", "n")
        job, prompt_tokens = api.understand_job(fields, refs, text)
        await wait([job])
        out = api._result(job)
        return api.chat_response(fields, out.text, prompt_tokens, len(out.token_ids))

    return BodyLimit(app, api.limits.max_request_bytes)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, several_lora=True)
    add_front_door_args(p, port=8000)
    g = p.add_argument_group("API")
    g.add_argument("--api_key", default=None, help="require this key (visible in ps: prefer --api_key_env)")
    g.add_argument("--api_key_env", default=None, help="require the key held in this environment variable")
    g.add_argument(
        "--model_id", default=None, help="the base model's id in /v1/models (default: folder name)"
    )
    g.add_argument("--web", action="store_true", help="also serve the Gradio demo at /web, on the same queue")
    return p


def named_adapters(values: list[str] | None) -> dict[str, str]:
    """``--lora NAME=PATH`` (or ``PATH``: named after its folder) -> {name: path}."""
    out = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.normpath(value)), value
        if name in out:
            raise ValueError(f"--lora: the name {name!r} is given twice")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        log.error("the API server needs FastAPI and uvicorn: pip install -r requirements-app.txt")
        return 2
    api_key = args.api_key
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            log.error("--api_key_env %s: that environment variable is empty or unset", args.api_key_env)
            return 2
    try:
        adapters = named_adapters(args.lora)
        args.model_path = default_model_path(args.model_path)
        args.lora = None  # named adapters are switched per request, not merged into the base
        pipe, limits, batcher = load_served_model(args, adapters)
    except USER_ERRORS as e:
        return report_user_error(log, e, args.debug)
    base_id = args.model_id or os.path.basename(os.path.normpath(args.model_path))
    api = ImageAPI(pipe, batcher, limits, base_id)
    app = create_app(api, api_key)
    if args.web:
        import gradio as gr

        from inference.app import DemoServer, build_app

        inner = app.app  # the FastAPI app inside the body-size limit
        gr.mount_gradio_app(inner, build_app(DemoServer(pipe, batcher, limits)), path="/web")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "binding to %s: anyone who can reach this machine can use the API%s",
            args.host,
            "" if api_key else " (no --api_key)",
        )
    log.info(
        "serving %s on http://%s:%d/v1 (models: %s)", base_id, args.host, args.port, ", ".join(api.models)
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        batcher.close()
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
