"""A tiny scripted OpenAI-compatible chat-completions server (stdlib only) for tests and offline dry runs.

    server = FakeJudgeServer(responder)      # responder(payload: dict) -> Reply
    base_url = server.start()                # "http://127.0.0.1:<port>/v1"
    ...
    server.stop()

Every request payload is recorded in `server.requests` (thread-safe). `Reply` can delay the answer (to
provoke client timeouts), return any status with an OpenAI-style error body, or return free text.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """One scripted answer: `content` for a 200 completion, or `error_code`/`status` for an error body."""

    content: str | None = None
    status: int = 200
    error_code: str | None = None
    error_message: str = "scripted error"
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    raw: bytes | None = None  # sent as the body verbatim (a proxy's HTML page, malformed JSON)
    content_type: str = "application/json"

    def body(self, model: str) -> dict:
        if self.status != 200:
            return {
                "error": {"message": self.error_message, "type": self.error_code, "code": self.error_code}
            }
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        }


def prompt_text(payload: dict) -> str:
    """The text part(s) of the user message of a chat-completions payload."""
    parts = payload["messages"][-1]["content"]
    if isinstance(parts, str):
        return parts
    return "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")


def image_urls(payload: dict) -> list[str]:
    parts = payload["messages"][-1]["content"]
    return (
        []
        if isinstance(parts, str)
        else [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    )


class ScriptedResponder:
    """Answers from a list of Replies in request order, then from `default(payload)` (thread-safe)."""

    def __init__(self, script: list[Reply] | None = None, default: Callable[[dict], Reply] | None = None):
        self.script, self.default = list(script or []), default
        self._lock = threading.Lock()

    def __call__(self, payload: dict) -> Reply:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        if self.default is None:
            raise RuntimeError("script exhausted and no default reply")
        return self.default(payload)


class FakeJudgeServer:
    def __init__(self, responder: Callable[[dict], Reply]):
        self.responder = responder
        self.requests: list[dict] = []
        self.bodies: list[bytes] = []  # each request body as received, byte for byte
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                payload = json.loads(body or b"{}")
                with server._lock:
                    server.bodies.append(body)
                    server.requests.append(payload)
                    server.headers.append(dict(self.headers))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    reply = Reply(status=404, error_code="not_found", error_message=f"no route {self.path}")
                else:
                    reply = server.responder(payload)
                if reply.delay:
                    time.sleep(reply.delay)
                data = (
                    reply.raw
                    if reply.raw is not None
                    else json.dumps(reply.body(payload.get("model", ""))).encode()
                )
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.content_type)
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, str(v))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler

    def start(self) -> str:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeJudgeServer:
        self.base_url = self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
