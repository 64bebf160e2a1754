"""The OpenAI-compatible server under load: N concurrent ``openai`` clients, bad requests mixed in.

    python -m bench.serve_bench --clients 16            # starts inference.serve (tiny model) on a free port
    python -m bench.serve_bench --clients 16 --url http://127.0.0.1:8000/v1   # a server already running

Three phases against one server process: a warm-up round, then the same ``--clients`` good edit requests
(2 references each) once concurrently and once one after another (only the arrival pattern differs, so
the ratio is what batching buys), then a storm: every client sends good requests mixed with bad ones (a
5 MB prompt, a 4096² image, zero steps, a size that is not a multiple of 16, an unknown field). It prints
requests ok / refused (a bad request answered 4xx with a message) / lost (no answer, a 5xx, a dropped
connection, or a good request refused / a bad one accepted), the
speedup, p50/p95 latency of the good requests, and the server's resident memory after the warm-up and at
the end. The last line: ``serve bench: ok A, refused R, lost L; batched X s vs sequential Y s (Z.ZZx);
p50 P s, p95 Q s; RSS W -> E MiB``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from bench.app_bench import EXAMPLES, INSTRUCTION, AppProcess


def good(client, seed: int, steps: int) -> float:
    """One edit request with both example references; returns its latency in seconds."""
    start = time.perf_counter()
    with open(EXAMPLES[0], "rb") as a, open(EXAMPLES[1], "rb") as b:
        out = client.images.edit(
            image=[a, b],
            prompt=INSTRUCTION,
            size="96x96",
            response_format="b64_json",
            extra_body={"seed": seed, "num_inference_steps": steps},
        )
    if not out.data or not out.data[0].b64_json:
        raise RuntimeError("no image in the answer")
    return time.perf_counter() - start


def bad_requests(folder: str) -> list:
    """(name, call(client)) of requests the server must refuse with a 4xx and a message."""
    from PIL import Image

    huge = os.path.join(folder, "huge.png")  # just over the default --max_pixels (4096 x 4096)
    Image.new("RGB", (4100, 4100), (200, 30, 30)).save(huge)

    def edit(image=EXAMPLES[0], **kw):
        def call(client):
            with open(image, "rb") as f:
                args = dict(image=[f], prompt=INSTRUCTION, size="96x96", response_format="b64_json")
                args.update(kw)
                return client.images.edit(**args)

        return call

    return [
        ("5 MB prompt", edit(prompt="x" * 5_000_000)),
        ("4100x4100 image", edit(image=huge)),
        ("zero steps", edit(extra_body={"num_inference_steps": 0})),
        ("size 100x100", edit(size="100x100")),
        ("unknown field", edit(extra_body={"guidance": 3})),
    ]


def classify(call, client) -> tuple[str, str]:
    """(ok | refused | lost, what happened)."""
    import openai

    try:
        call(client)
        return "ok", "200"
    except openai.APIStatusError as e:
        return (
            "refused" if 400 <= e.status_code < 500 and e.message else "lost"
        ), f"{e.status_code} {e.message[:120]}"
    except Exception as e:  # a dropped connection or a timeout: the request got no answer
        return "lost", f"{type(e).__name__}: {e}"[:160]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--url", default=None, help="a running server's /v1 URL (default: start one)")
    p.add_argument("--steps", type=int, default=25, help="timesteps per image")
    p.add_argument("--storm_rounds", type=int, default=2, help="good + bad requests per client in the storm")
    p.add_argument("--max_batch_size", type=int, default=8, help="for the server this bench starts")
    args = p.parse_args(argv)
    import openai

    server = None
    if args.url is None:
        server = AppProcess(
            ["--max_batch_size", str(args.max_batch_size), "--max_queue", str(4 * args.clients)],
            module="inference.serve",
            ready_path="/v1/models",
        )
        server.start()
        url = server.url + "/v1"
    else:
        url = args.url
    client = openai.OpenAI(
        base_url=url, api_key=os.environ.get("SCONE_API_KEY", "unused"), max_retries=0, timeout=600
    )
    counts = {"ok": 0, "refused": 0, "lost": 0}
    latencies: list[float] = []
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda k: good(client, k, args.steps), range(args.clients)))  # warm-up
        rss_warm = server.rss_mb() if server else float("nan")
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            latencies += pool.map(lambda k: good(client, 100 + k, args.steps), range(args.clients))
            batched = time.perf_counter() - start
        start = time.perf_counter()
        latencies += [good(client, 100 + k, args.steps) for k in range(args.clients)]
        sequential = time.perf_counter() - start
        counts["ok"] += 2 * args.clients
        with tempfile.TemporaryDirectory() as folder:
            bad = bad_requests(folder)
            calls = []
            for r in range(args.storm_rounds):
                for k in range(args.clients):
                    seed = 1000 + r * args.clients + k
                    calls.append(("good", lambda c, s=seed: latencies.append(good(c, s, args.steps))))
                    calls.append(bad[(r * args.clients + k) % len(bad)])
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda nc: (nc[0], *classify(nc[1], client)), calls))
        for name, outcome, detail in results:
            expected = "ok" if name == "good" else "refused"
            counts[outcome if outcome == expected or outcome == "lost" else "lost"] += 1
            if outcome != expected:
                print(f"unexpected: {name}: {detail}")
        rss_end = server.rss_mb() if server else float("nan")
        alive = server.alive() if server else True
    finally:
        if server:
            server.stop()
    q = statistics.quantiles(latencies, n=20)
    print(f"requests: {counts}; server alive at the end: {alive}")
    print(
        f"serve bench: ok {counts['ok']}, refused {counts['refused']}, lost {counts['lost']}; batched "
        f"{batched:.2f} s vs sequential {sequential:.2f} s ({sequential / batched:.2f}x); p50 "
        f"{statistics.median(latencies):.2f} s, p95 {q[18]:.2f} s; RSS {rss_warm:.0f} -> {rss_end:.0f} MiB"
    )
    return 0 if counts["lost"] == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
