"""The web demo's logic without a browser: input checks, and concurrent requests sharing one batch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from inference.app import BusyError, DemoServer
from inference.pipeline import SconePipeline
from inference.request_batcher import RequestBatcher
from inference.sampling import SamplingConfig
from inference.serving import Limits, check_images, check_sampling, check_text, make_runner
from tests.conftest import ROOT

SHIPPED = ROOT / "ckpts" / "scone-tiny"
REFS = [str(ROOT / "assets" / "examples" / f) for f in ("ref1.png", "ref2.png")]
TEXT = "Place the green cross from image 1 on the right, on the gray background from image 2."
ADVANCED = dict(cfg_interval_start=0.0, cfg_interval_end=1.0)


@pytest.fixture(scope="module")
def tiny():
    return SconePipeline.from_pretrained(str(SHIPPED))


def test_images_are_checked_with_messages_for_people(tmp_path):
    lim = Limits(max_images=2, max_upload_mb=0.01, max_pixels=100 * 100)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    Image.new("RGB", (120, 100), (1, 2, 3)).save(big)
    heavy = tmp_path / "heavy.bmp"
    Image.new("RGB", (90, 90)).save(heavy)  # 24 KB uncompressed, over 0.01 MB
    cases = [
        ([], "at least 1 reference image"),
        ([*REFS, REFS[0]], "at most 2 images (got 3)"),
        ([REFS[0], str(text)], "Image 2 (notes.png) is not an image"),
        ([str(tmp_path / "gone.png")], "Image 1 (gone.png) did not arrive"),
        ([str(big)], "Image 1 (big.png) has 120x100 pixels; the limit is 10,000"),
        ([str(heavy)], "Image 1 (heavy.bmp) is 0.0 MB; the limit is 0.01 MB"),
    ]
    for files, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_images(files, lim, min_images=1)
    ims = check_images([{"path": REFS[0]}, REFS[1]], lim, min_images=1)  # Gradio's dict form too
    assert [im.mode for im in ims] == ["RGB", "RGB"]
    assert check_images(None, lim, min_images=0) == []
    with pytest.raises(ValueError, match="Write a question first"):
        check_text("  \n", "a question")


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(height=100), "Height must be a multiple of 16"),
        (dict(width=2048), "Width must be a multiple of 16 from 16 to 256"),
        (dict(height=None), "Height must be"),
        (dict(num_timesteps=1), "Steps must be a whole number from 2 to 50"),
        (dict(num_timesteps=10.5), "Steps must be"),
        (dict(cfg_interval_start=0.8, cfg_interval_end=0.2), "CFG interval"),
        (dict(cfg_renorm_type="none"), "CFG renorm must be one of"),
        (dict(cfg_text_scale=-1), "cfg_text_scale must be a number"),
        (dict(cfg_img_scale=float("nan")), "cfg_img_scale must be a number"),
        (dict(timestep_shift=0), "shift must be positive"),
    ],
)
def test_sampling_settings_out_of_range_are_refused(settings, message):
    lim = Limits(max_side=256, max_steps=50)
    full = dict(height=96, width=96, num_timesteps=10, **ADVANCED) | settings
    with pytest.raises(ValueError, match=message):
        check_sampling(SamplingConfig(), lim, **full)


def test_sampling_settings_reach_the_config():
    cfg = check_sampling(
        SamplingConfig(),
        Limits(),
        height=64.0,
        width=32,
        num_timesteps=7.0,
        cfg_interval_start=0.1,
        cfg_interval_end=0.9,
        cfg_text_scale=3,
        cfg_renorm_type="channel",
    )
    assert (cfg.height, cfg.width, cfg.num_timesteps, cfg.cfg_interval) == (64, 32, 7, (0.1, 0.9))
    assert cfg.cfg_text_scale == 3 and cfg.cfg_renorm_type == "channel" and cfg.cfg_img_scale == 2.0


def test_concurrent_requests_share_one_batch_and_match_single_generation(tiny):
    """Four people press generate at once: one generate_batch call serves them, and each gets the image
    it would have got alone (same seed)."""
    batcher = RequestBatcher(make_runner(tiny), max_batch_size=4, max_queue=8, gather_s=2.0)
    server = DemoServer(tiny, batcher, Limits(max_side=256))
    results, errors = {}, []
    seen_progress = []

    def person(seed):
        try:
            results[seed] = server.generate(
                REFS, TEXT, seed, 96, 96, 6, ADVANCED, progress=lambda *a, **k: seen_progress.append(a)
            )
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=person, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    batcher.close()
    assert not errors and sorted(results) == [0, 1, 2, 3]
    assert batcher.batches_run == 1
    for seed, (image, info) in results.items():
        assert image.size == (96, 96)
        assert f"seed {seed} · 96x96 · 6 timesteps" in info and "with 3 other requests" in info
        alone = tiny.generate(images=REFS, prompt=TEXT, seed=seed, num_timesteps=6)
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(alone.image, dtype=np.int16))
        assert diff.max() <= 1  # batched forwards differ from single ones only in float rounding
    assert any(isinstance(a[0], tuple) and a[0][1] == 5 for a in seen_progress)  # (done, 5 Euler steps)


def test_a_full_queue_says_busy_and_bad_input_never_reaches_the_model(tiny):
    gate = threading.Event()
    runner = make_runner(tiny)
    calls = []

    def slow(key, payloads, progress):
        calls.append(len(payloads))
        gate.wait(30)
        return runner(key, payloads, progress)

    batcher = RequestBatcher(slow, max_batch_size=1, max_queue=1, gather_s=0.0)
    server = DemoServer(tiny, batcher, Limits(max_side=256))
    try:
        with pytest.raises(ValueError, match="Write an instruction first"):
            server.generate(REFS, " ", 1, 96, 96, 4, ADVANCED)
        assert calls == [] and batcher.waiting() == 0
        out = {}
        first = threading.Thread(
            target=lambda: out.setdefault(1, server.generate(REFS, TEXT, 1, 96, 96, 4, ADVANCED))
        )
        first.start()
        while not calls:
            threading.Event().wait(0.01)
        second = threading.Thread(
            target=lambda: out.setdefault(2, server.generate(REFS, TEXT, 2, 96, 96, 4, ADVANCED))
        )
        second.start()
        while batcher.waiting() < 1:
            threading.Event().wait(0.01)
        with pytest.raises(BusyError, match="busy .*try again"):
            server.generate(REFS, TEXT, 3, 96, 96, 4, ADVANCED)
        gate.set()
        first.join(60)
        second.join(60)
        assert sorted(out) == [1, 2] and out[1][0].size == (96, 96)
    finally:
        gate.set()
        batcher.close()


def test_understanding_goes_through_the_same_worker_and_warns_for_a_generation_only_model(tiny):
    batcher = RequestBatcher(make_runner(tiny), max_batch_size=4, gather_s=0.0)
    server = DemoServer(tiny, batcher, Limits(max_side=256))
    try:
        text, note = server.understand([REFS[0]], "How many shapes are in the image?", False, 4)
        assert (text, note) == ("2", "")  # the shipped model answers, and right
        tiny.config.extra["generation_only"] = True  # as a model trained for generation only says
        text, note = server.understand([REFS[0]], "What is in the picture?", False, 4)
        assert isinstance(text, str) and "generation only" in note
        with pytest.raises(ValueError, match="Max new tokens must be from 1"):
            server.understand([], "What?", False, 0)
    finally:
        tiny.config.extra.pop("generation_only", None)
        batcher.close()
    assert torch.is_grad_enabled()  # the worker's no_grad did not leak into this thread


def test_the_app_command_line_has_help_and_a_bad_model_folder_is_one_error_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "inference.app", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "--max_batch_size" in r.stdout and "127.0.0.1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "inference.app", "--model_path", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    errors = [x for x in r.stderr.splitlines() if "ERROR" in x]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
