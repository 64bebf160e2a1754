"""The OpenAI-shaped requests of ``inference/serve.py``, parsed without FastAPI: which fields each endpoint
accepts, their API names for Scone's sampling settings (vllm-omni's and SGLang's spellings included), sizes,
data-URL images in chat messages, and errors in OpenAI's JSON shape."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re

# API names of the sampling settings -> SamplingConfig names (vllm-omni's and SGLang's spellings included).
SAMPLING_FIELDS = {
    "num_inference_steps": "num_timesteps",
    "num_timesteps": "num_timesteps",
    "cfg_text_scale": "cfg_text_scale",
    "cfg_img_scale": "cfg_img_scale",
    "true_cfg_scale": "cfg_img_scale",
    "cfg_interval": "cfg_interval",
    "cfg_renorm_type": "cfg_renorm_type",
    "cfg_renorm_min": "cfg_renorm_min",
    "timestep_shift": "timestep_shift",
    "cache": "cache",
}
FLOAT_FIELDS = {"cfg_text_scale", "cfg_img_scale", "true_cfg_scale", "cfg_renorm_min", "timestep_shift"}
IMAGE_FIELDS = {"model", "prompt", "n", "size", "response_format", "seed", "height", "width", "think", "user"}
IMAGE_FIELDS |= set(SAMPLING_FIELDS)
CHAT_FIELDS = {
    "model",
    "messages",
    "modalities",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "seed",
}
CHAT_FIELDS |= {"n", "stream", "height", "width", "size", "think", "user", *SAMPLING_FIELDS}


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def refuse_unknown(fields, allowed: set[str]) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise APIError(400, f"unknown field(s) {unknown}; this server accepts {sorted(allowed)}", unknown[0])


def parse_number(name: str, value, kind=float):
    try:
        if isinstance(value, bool):
            raise ValueError
        v = kind(value)
        if kind is int and float(value) != v:
            raise ValueError
        return v
    except (TypeError, ValueError):
        raise APIError(
            400, f"{name} must be {'a whole number' if kind is int else 'a number'}, got {value!r}", name
        ) from None


def parse_size(size, height=None, width=None) -> tuple[int | None, int | None]:
    """``size`` "WxH" (OpenAI) or ``height``/``width`` (vllm-omni); None keeps the model's."""
    if size is not None and size != "auto":
        m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", str(size))
        if not m:
            raise APIError(400, f"size must look like 1024x1024, got {size!r}", "size")
        return int(m.group(2)), int(m.group(1))
    return (
        None if height is None else parse_number("height", height, int),
        None if width is None else parse_number("width", width, int),
    )


def sampling_settings(fields: dict) -> dict:
    """SamplingConfig keywords of a request's fields (form fields arrive as strings)."""
    out = {}
    for api, name in SAMPLING_FIELDS.items():
        if fields.get(api) is None:
            continue
        v = fields[api]
        if api == "cfg_interval":
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except ValueError:
                    v = v.replace(",", " ").split()
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise APIError(400, "cfg_interval must be two numbers [start, end]", api)
            out["cfg_interval_start"], out["cfg_interval_end"] = (parse_number(api, x) for x in v)
        elif api in ("num_inference_steps", "num_timesteps"):
            out[name] = parse_number(api, v, int)
        elif api in FLOAT_FIELDS:
            out[name] = parse_number(api, v)
        else:
            out[name] = str(v)
    return out


def parse_flag(name: str, value) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise APIError(400, f"{name} must be true or false, got {value!r}", name)


def decode_data_url(url: str, k: int) -> tuple[str, bytes]:
    """``data:image/...;base64,...`` -> (name, bytes). Remote URLs are refused: this server fetches nothing."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise APIError(
            400,
            f"image {k}: send images as data URLs (data:image/png;base64,...); this server does "
            "not fetch URLs",
            "messages",
        )
    head, _, payload = url.partition(",")
    if ";base64" not in head:
        raise APIError(400, f"image {k}: the data URL must be base64-encoded", "messages")
    try:
        return f"image {k}", base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"image {k}: the data URL is not valid base64", "messages") from None


def chat_inputs(messages) -> tuple[str, list[tuple[str, bytes]]]:
    """(text, images) of a chat request: one user message whose content is a string or text and
    image_url parts."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or len(users) != len(messages):
        raise APIError(
            400, "send exactly one message, with role 'user' (no history or system prompt)", "messages"
        )
    content = users[0].get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise APIError(400, "message content must be a string or a list of parts", "messages")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(decode_data_url(url.get("url") if isinstance(url, dict) else url, len(images) + 1))
        else:
            raise APIError(400, f"unsupported content part {kind!r} (text and image_url are)", "messages")
    return "\n".join(texts), images


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
