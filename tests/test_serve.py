"""The OpenAI-compatible server (inference.serve) on the shipped tiny model, driven by the real ``openai``
client over HTTP on a free local port: image edits, generations and chat completions (vllm-omni's
``modalities``/``extra_body``), per-request LoRA adapters, batching, and hostile requests."""

from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from inference.pipeline import SconePipeline  # noqa: E402
from inference.request_batcher import RequestBatcher  # noqa: E402
from inference.serve import ImageAPI, create_app  # noqa: E402
from inference.serving import Limits, make_runner  # noqa: E402
from tests.test_lora import REFS, SHIPPED, TEXT, adapter  # noqa: E402, F401 - the fixture

KEY = "test-key-123"
STEPS = {"num_inference_steps": 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(adapter):  # noqa: F811
    folder, _ = adapter
    pipe = SconePipeline.from_pretrained(SHIPPED)
    pipe.add_adapter("heart", str(folder))
    limits = Limits(max_side=256, max_upload_mb=2.0, max_prompt_chars=20_000)
    batcher = RequestBatcher(make_runner(pipe), max_batch_size=8, max_queue=32, gather_s=0.5,
                             max_queued_cost=limits.max_queued_pixels)  # fmt: skip
    api = ImageAPI(pipe, batcher, limits, "scone-tiny")
    port = free_port()
    config = uvicorn.Config(create_app(api, KEY), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/v1", "api": api, "batcher": batcher, "port": port}
    srv.should_exit = True
    thread.join(30)
    batcher.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=300)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def data_url(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def edit(client, seed: int, **extra):
    with open(REFS[0], "rb") as a, open(REFS[1], "rb") as b:
        return client.images.edit(image=[a, b], prompt=TEXT, size="96x96", response_format="b64_json",
                                  extra_body={"seed": seed, **STEPS, **extra})  # fmt: skip


def test_models_list_the_base_and_the_adapters(client):
    assert sorted(m.id for m in client.models.list().data) == ["heart", "scone-tiny"]


def test_twelve_concurrent_edits_share_batches_and_a_seed_gives_the_same_bytes(server, client, caplog):
    seeds = [11, 12, 13, 14, 15, 16] * 2  # every seed twice
    before = server["batcher"].batches_run
    with caplog.at_level(logging.INFO, logger="scone.serving"), ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda s: edit(client, s), seeds))
    images = [r.data[0].b64_json for r in results]
    assert all(decode(b).size == (96, 96) for b in images)
    for k in range(6):  # the same seed: the same PNG bytes
        assert base64.b64decode(images[k]) == base64.b64decode(images[k + 6]), seeds[k]
    assert len({images[k] for k in range(6)}) == 6  # different seeds: different images
    batches = server["batcher"].batches_run - before
    sizes = [int(r.getMessage().split()[1]) for r in caplog.records if "in one batch" in r.getMessage()]
    assert batches < 12 and max(sizes) > 1, (batches, sizes)  # requests shared forward passes
    assert sum(sizes) == 12


def test_generations_and_n(client):
    out = client.images.generate(prompt="a red star on a mint grid background", size="96x96", n=2,
                                 response_format="b64_json", extra_body={"seed": 5, **STEPS})  # fmt: skip
    assert len(out.data) == 2 and out.data[0].b64_json != out.data[1].b64_json


def test_chat_completions_generate_with_extra_body_and_answer_questions(client):
    content = [{"type": "text", "text": TEXT},
               {"type": "image_url", "image_url": {"url": data_url(REFS[0])}},
               {"type": "image_url", "image_url": {"url": data_url(REFS[1])}}]  # fmt: skip
    out = client.chat.completions.create(
        model="scone-tiny", messages=[{"role": "user", "content": content}], modalities=["image"],
        extra_body={"height": 96, "width": 96, "num_inference_steps": 4, "cfg_text_scale": 2.0, "cfg_img_scale": 1.0,
                    "cfg_interval": [0.0, 1.0], "cfg_renorm_type": "global", "timestep_shift": 1.0, "seed": 3},
    )  # fmt: skip
    part = out.choices[0].message.content[0]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    assert decode(part["image_url"]["url"].split(",", 1)[1]).size == (96, 96)
    answer = client.chat.completions.create(
        model="scone-tiny", max_tokens=4,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                               {"type": "image_url", "image_url": {"url": data_url(REFS[0])}}]}],
    )  # fmt: skip
    assert isinstance(answer.choices[0].message.content, str) and answer.usage.completion_tokens <= 4


def test_an_adapter_is_chosen_per_request_and_never_shares_a_forward(client):
    base = [edit(client, 7), edit(client, 7, model="heart"), edit(client, 7, model="scone-tiny")]
    px = [np.asarray(decode(r.data[0].b64_json), dtype=int) for r in base]
    assert np.abs(px[0] - px[1]).max() > 2  # the adapter acts
    assert np.abs(px[0] - px[2]).max() == 0  # and is detached again for the base
    with pytest.raises(openai.NotFoundError, match="not served here"):
        edit(client, 7, model="nope")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"num_inference_steps": 0}, "Steps must be a whole number from 2"),
        ({"bogus_field": 1}, "unknown field"),
        ({"cfg_renorm_type": "sideways"}, "CFG renorm must be one of"),
    ],
)
def test_bad_requests_are_400_with_a_message(client, extra, message):
    with pytest.raises(openai.BadRequestError, match=message):
        edit(client, 1, **extra)


def test_wrong_size_unknown_format_and_no_key(server, client):
    with open(REFS[0], "rb") as a:
        with pytest.raises(openai.BadRequestError, match="multiple of 16"):
            client.images.edit(image=[a], prompt=TEXT, size="100x100", extra_body=STEPS)
        with pytest.raises(openai.BadRequestError, match="b64_json"):
            client.images.edit(image=[a], prompt=TEXT, size="96x96", response_format="url", extra_body=STEPS)
    anonymous = openai.OpenAI(base_url=server["url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_a_5mb_prompt_and_a_huge_image_are_refused_and_the_server_keeps_serving(server, client, tmp_path):
    with open(REFS[0], "rb") as a:
        with pytest.raises(openai.BadRequestError, match="at most 20,000 characters"):
            client.images.edit(image=[a], prompt="x" * 5_000_000, size="96x96", extra_body=STEPS)
    with pytest.raises(
        openai.BadRequestError, match="characters; the limit is 20,000"
    ):  # JSON: the same limit
        client.images.generate(prompt="x" * 5_000_000, size="96x96", extra_body=STEPS)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4100, 4100)).save(huge)
    with open(huge, "rb") as h:
        with pytest.raises(openai.BadRequestError, match="pixels; the limit is"):
            client.images.edit(image=[h], prompt=TEXT, size="96x96", extra_body=STEPS)
    # a body over the server's limit is refused before it is read
    import httpx

    r = httpx.post(f"{server['url']}/images/generations", content=b"{" + b" " * (server["api"].limits.max_request_bytes + 10) + b"}",
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["message"].startswith("the request is larger")
    assert edit(client, 2).data[0].b64_json  # the next request is served


def test_one_process_serves_the_api_and_the_web_demo_on_one_queue(tmp_path):
    """``inference.serve --web``: an openai client and a gradio_client person, answered by one process."""
    pytest.importorskip("gradio_client")
    from bench.app_bench import EXAMPLES, INSTRUCTION, AppProcess, generate

    with AppProcess(
        ["--web", "--model_path", SHIPPED], module="inference.serve", ready_path="/v1/models"
    ) as srv:
        web = generate(srv.url + "/web", EXAMPLES, INSTRUCTION, seed=1, steps=4)
        assert web.ok, (web.error, srv.log_tail())
        api = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        assert edit(api, 1).data[0].b64_json
        assert srv.alive() and "running 1 generate request(s)" in srv.log_tail(20000)
