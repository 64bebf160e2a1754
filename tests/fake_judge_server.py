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
from email.parser import BytesParser
from email.policy import HTTP
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
    served_model: str | None = None  # the `model` the reply names (default: the requested one)

    def body(self, model: str) -> dict:
        if self.status != 200:
            return {
                "error": {"message": self.error_message, "type": self.error_code, "code": self.error_code}
            }
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_model or model,
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
    """Chat completions, plus the Batch API's files and batches endpoints: an uploaded batch stays
    ``in_progress`` until ``finish_batches()`` answers its lines with the responder."""

    def __init__(self, responder: Callable[[dict], Reply], port: int = 0):
        self.responder, self.port = responder, port  # port 0: any free port
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
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

            def _send(self, data: bytes, content_type: str, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, obj: dict, status: int = 200) -> None:
                self._send(json.dumps(obj).encode(), "application/json", status)

            def do_GET(self) -> None:  # noqa: N802
                parts = self.path.rstrip("/").split("/")
                with server._lock:
                    if len(parts) >= 2 and parts[-2] == "batches" and parts[-1] in server.batches:
                        return self._json(server.batches[parts[-1]])
                    if parts[-1] == "content" and parts[-2] in server.files:
                        return self._send(server.files[parts[-2]], "application/octet-stream")
                return self._json({"error": {"message": f"no route {self.path}", "code": "not_found"}}, 404)

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if self.path.rstrip("/").endswith("/files"):
                    return self._json(server._upload(self.headers.get("content-type", ""), body))
                if self.path.rstrip("/").endswith("/batches"):
                    return self._json(server._create_batch(json.loads(body)))
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

    # ---------------------------------------------------------------- Batch API
    def _upload(self, content_type: str, body: bytes) -> dict:
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        data = next(p.get_payload(decode=True) for p in msg.iter_parts() if p.get_filename())
        with self._lock:
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": "upload.jsonl",
            "purpose": "batch",
            "status": "processed",
        }

    def _create_batch(self, req: dict) -> dict:
        with self._lock:
            batch_id = f"batch-{len(self.batches)}"
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": req["endpoint"],
                "input_file_id": req["input_file_id"],
                "completion_window": req["completion_window"],
                "status": "in_progress",
                "created_at": int(time.time()),
                "output_file_id": None,
                "error_file_id": None,
            }
            return self.batches[batch_id]

    def finish_batches(self) -> int:
        """Answer every running batch's requests with the responder; returns the requests answered."""
        n = 0
        for batch in [b for b in self.batches.values() if b["status"] == "in_progress"]:
            ok, failed = [], []
            for line in self.files[batch["input_file_id"]].decode().splitlines():
                item = json.loads(line)
                with self._lock:
                    self.requests.append(item["body"])
                reply = self.responder(item["body"])
                out = {
                    "id": f"req-{n}",
                    "custom_id": item["custom_id"],
                    "error": None,
                    "response": {
                        "status_code": reply.status,
                        "body": reply.body(item["body"].get("model", "")),
                    },
                }
                (ok if reply.status == 200 else failed).append(json.dumps(out) + "\n")
                n += 1
            with self._lock:
                for kind, lines in (("output_file_id", ok), ("error_file_id", failed)):
                    if lines:
                        file_id = f"file-{len(self.files)}"
                        self.files[file_id] = "".join(lines).encode()
                        batch[kind] = file_id
                batch["status"] = "completed"
        return n

    def start(self) -> str:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
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
