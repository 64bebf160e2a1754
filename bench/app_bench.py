"""Web demo under load: N concurrent API clients against the same N requests one after another.

    python bench/app_bench.py --clients 8                # starts the demo (tiny model) on a free port
    python bench/app_bench.py --clients 8 --url http://127.0.0.1:7860   # a demo already running
    python bench/app_bench.py --soak 40 --clients 8      # 40 requests, a few bad uploads mixed in

Every request goes through the real app (HTTP, uploads, the queue) with ``gradio_client``; only the
arrival pattern differs between the two runs, so the ratio is what batching buys. The last line is
``app bench: K/N ok, batched X.XXs vs sequential Y.YYs, speedup Z.ZZx``. ``--soak`` also reports the
app process's resident memory at the start and at the end. ``AppProcess`` and ``soak`` are used by the
test suite (tests/test_app_browser.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = [os.path.join(ROOT, "assets", "examples", f) for f in ("ref1.png", "ref2.png")]
INSTRUCTION = "Place the green cross from image 1 on the right, on the gray background from image 2."

log = logging.getLogger("app_bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """A server (``python -m inference.app`` by default, or ``module="inference.serve"``) on a free port, as
    a child process; a context manager. Ready once ``ready_path`` answers 200."""

    def __init__(
        self,
        extra_args: list[str] = (),
        model_path: str | None = None,
        log_path: str | None = None,
        module: str = "inference.app",
        ready_path: str = "",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_url = self.url + ready_path
        self.args = [sys.executable, "-m", module, "--port", str(self.port), *extra_args]
        if model_path:
            self.args += ["--model_path", model_path]
        self.log_path = log_path or os.path.join(tempfile.mkdtemp(prefix="scone-app-"), "app.log")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> AppProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the app process (Linux /proc), MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def log_tail(self, n: int = 4000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()


@dataclass
class Outcome:
    ok: bool
    seconds: float
    image: str | None = None  # path of the returned PNG
    error: str | None = None
    settings: str = ""


def connect(url: str):
    """A ``gradio_client.Client`` of the demo: one person with the page open."""
    from gradio_client import Client

    return Client(url, verbose=False)


def generate(client, files: list[str], instruction: str, seed: int, steps: int | None = None) -> Outcome:
    """One /generate call (``client``: a ``connect`` result or the demo's URL)."""
    from gradio_client import handle_file

    start = time.monotonic()
    try:
        if isinstance(client, str):
            client = connect(client)
        kw = {} if steps is None else {"steps": steps}
        image, settings = client.predict(
            files=[handle_file(f) for f in files],
            instruction=instruction,
            seed=seed,
            api_name="/generate",
            **kw,
        )
        return Outcome(True, time.monotonic() - start, image=image, settings=settings)
    except Exception as e:  # the app's error message arrives as gradio_client's AppError
        return Outcome(False, time.monotonic() - start, error=f"{type(e).__name__}: {e}")


def run_requests(url: str, requests: list[dict], clients: int) -> tuple[list[Outcome], float]:
    """``requests`` (kwargs of ``generate``) from ``clients`` people, each sending its share one after
    another; (outcomes in order, wall seconds). The clients connect before the clock starts."""
    people = [connect(url) for _ in range(clients)]
    outs: list[Outcome | None] = [None] * len(requests)

    def person(k: int) -> None:
        for i in range(k, len(requests), clients):
            outs[i] = generate(people[k], **requests[i])

    start = time.monotonic()
    with cf.ThreadPoolExecutor(clients) as ex:
        list(ex.map(person, range(clients)))
    return outs, time.monotonic() - start


@dataclass
class SoakReport:
    good: int = 0
    good_ok: int = 0
    bad: int = 0
    bad_errors: int = 0
    lost: int = 0  # neither an image nor an error message
    rss_start_mb: float = 0.0  # before the first request
    rss_mid_mb: float = 0.0  # after the first half (first-use allocations are done by then)
    rss_end_mb: float = 0.0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def bad_uploads(folder: str) -> list[tuple[list[str], str]]:
    """(files, instruction) pairs the app must refuse with a message."""
    text = os.path.join(folder, "notes.txt")
    fake = os.path.join(folder, "fake.png")
    for path in (text, fake):
        with open(path, "w") as f:
            f.write("these are notes, not an image\n")
    return [([fake], INSTRUCTION), ([text], INSTRUCTION), ([EXAMPLES[0]], "   "), ([], INSTRUCTION)]


def soak(
    app: AppProcess, n: int = 40, clients: int = 8, bad_every: int = 5, steps: int | None = None
) -> SoakReport:
    """``n`` requests from ``clients`` threads, every ``bad_every``-th a bad one, in two halves; the app's
    RSS before, between and after (memory that keeps growing shows as mid -> end growth)."""
    rep = SoakReport()
    folder = tempfile.mkdtemp(prefix="scone-soak-")
    bads = bad_uploads(folder)
    reqs, is_bad = [], []
    for i in range(n):
        bad = bad_every > 0 and i % bad_every == bad_every - 1
        files, text = bads[(i // bad_every) % len(bads)] if bad else (EXAMPLES, INSTRUCTION)
        reqs.append(dict(files=files, instruction=text, seed=i, steps=steps))
        is_bad.append(bad)
    rep.rss_start_mb = app.rss_mb()
    first, t1 = run_requests(app.url, reqs[: n // 2], clients)
    rep.rss_mid_mb = app.rss_mb()
    second, t2 = run_requests(app.url, reqs[n // 2 :], clients)
    rep.rss_end_mb = app.rss_mb()
    outs, rep.seconds = first + second, t1 + t2
    for i, (o, bad) in enumerate(zip(outs, is_bad)):
        if bad:
            rep.bad += 1
            rep.bad_errors += (not o.ok) and bool(o.error)
            if o.ok:
                rep.failures.append(f"request {i}: a bad upload got an image")
        else:
            rep.good += 1
            rep.good_ok += o.ok and o.image is not None and os.path.isfile(o.image)
            if not o.ok:
                rep.failures.append(f"request {i}: {o.error}")
        rep.lost += not o.ok and not o.error
    return rep


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--url", default=None, help="a running demo (default: start one on a free port)")
    p.add_argument(
        "--model_path", default=None, help="for the demo started here (default: the shipped tiny model)"
    )
    p.add_argument("--max_batch_size", type=int, default=8, help="for the demo started here")
    p.add_argument("--threads", type=int, default=None, help="--threads of the demo started here")
    p.add_argument("--steps", type=int, default=None, help="timesteps per image (default: the model's)")
    p.add_argument(
        "--soak", type=int, default=0, metavar="N", help="instead: N requests with bad uploads mixed in"
    )
    args = p.parse_args(argv)
    for name in ("httpx", "gradio_client"):
        logging.getLogger(name).setLevel(logging.WARNING)

    app = None
    url = args.url
    if url is None:
        app = AppProcess(
            ["--max_batch_size", str(args.max_batch_size)], model_path=args.model_path
        ).__enter__()
        url = app.url
        log.info("demo started at %s (log: %s)", url, app.log_path)
    try:
        if args.soak:
            if app is None:
                p.error("--soak measures the app process's memory: start it here (no --url)")
            rep = soak(app, args.soak, args.clients, steps=args.steps)
            for f in rep.failures:
                log.info("  %s", f)
            log.info(
                "app soak: %d/%d good requests got an image, %d/%d bad ones an error, %d lost, %.1f s, "
                "RSS %.0f MiB at start, %.0f MiB after %d requests, %.0f MiB at end",
                rep.good_ok,
                rep.good,
                rep.bad_errors,
                rep.bad,
                rep.lost,
                rep.seconds,
                rep.rss_start_mb,
                rep.rss_mid_mb,
                args.soak // 2,
                rep.rss_end_mb,
            )
            return 0 if not rep.failures and not rep.lost else 1
        reqs = [
            dict(files=EXAMPLES, instruction=INSTRUCTION, seed=i, steps=args.steps)
            for i in range(args.clients)
        ]
        run_requests(url, reqs[:1], 1)  # warm-up: first-call costs are not what is compared
        batched, t_batched = run_requests(url, reqs, args.clients)
        sequential, t_seq = run_requests(url, reqs, 1)
        for o in batched + sequential:
            if not o.ok:
                log.info("  failed: %s", o.error)
        shared = sorted(
            {o.settings.split("in one batch with ")[-1].split(" other")[0] for o in batched if o.ok}
        )
        log.info("batched run: each request shared its batch with %s other(s)", ", ".join(shared))
        n = len(reqs)
        ok = sum(
            a.ok and b.ok for a, b in zip(batched, sequential)
        )  # a request counts if both runs served it
        print(
            f"app bench: {ok}/{n} ok, batched {t_batched:.2f}s vs sequential {t_seq:.2f}s, "
            f"speedup {t_seq / t_batched:.2f}x"
        )
        return 0 if ok == n else 1
    finally:
        if app is not None:
            app.stop()


if __name__ == "__main__":
    sys.exit(main())
