"""The web demo as people use it: a real headless Chromium against ``python -m inference.app``, then a soak
of concurrent API clients with bad uploads mixed in.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them with apt); without them the
browser test is skipped locally and fails in CI. The screenshot is saved to ``$SCONE_TEST_ARTIFACTS``
(default ``outputs/test-artifacts``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from bench.app_bench import EXAMPLES, INSTRUCTION, AppProcess, generate, soak  # noqa: E402

ARTIFACTS = Path(os.environ.get("SCONE_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def app():
    # batches of up to 8, a short gather window; 8 timesteps keep each request under a second on 2 cores
    with AppProcess(["--max_batch_size", "8", "--batch_wait_ms", "50"], model_path="ckpts/scone-tiny") as a:
        yield a
        assert a.alive(), f"the app died:\n{a.log_tail()}"


@pytest.fixture()
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail(
                "chromium and chromedriver are required in CI (apt-get install chromium chromium-driver)"
            )
        pytest.skip("needs Debian's chromium and chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # the system driver: no download
    yield driver
    driver.quit()


def _wait(fn, timeout=90.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_generate_in_a_real_browser_then_a_bad_upload_then_generate_again(app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(app.url)

    def upload(*paths):
        _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#refs input[type=file]"), what="the upload field")
        d.find_element(By.CSS_SELECTOR, "#refs input[type=file]").send_keys("\n".join(paths))
        stems = [Path(p).stem for p in paths]  # the file list shows "ref1" and ".png" on separate lines
        _wait(
            lambda: (
                len(d.find_elements(By.CSS_SELECTOR, "#refs tbody tr")) == len(paths)
                and all(s in d.find_element(By.ID, "refs").text for s in stems)
            ),
            what=f"{stems} listed",
        )

    def clear_uploads():
        for button in d.find_elements(By.CSS_SELECTOR, "#refs button[aria-label='Clear']"):
            button.click()
        _wait(lambda: not d.find_elements(By.CSS_SELECTOR, "#refs tbody tr"), what="the uploads cleared")

    def output_image():
        """(src, natural width, natural height) of the output image once it has loaded, else None."""
        for img in d.find_elements(By.CSS_SELECTOR, "#output img"):
            size = d.execute_script(
                "return arguments[0].complete ? [arguments[0].naturalWidth, arguments[0].naturalHeight] : null",
                img,
            )
            if size and size[0]:
                return img.get_attribute("src"), *size
        return None

    def errors_shown():
        return " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))

    # 1. the two example references + the instruction -> an image of the model's size (96 x 96)
    upload(*EXAMPLES)
    box = d.find_element(By.CSS_SELECTOR, "#instruction textarea")
    box.send_keys(INSTRUCTION)
    d.find_element(By.ID, "generate-btn").click()
    src, w, h = _wait(output_image, what="the output image")
    assert (w, h) == (96, 96)
    settings = d.find_element(By.CSS_SELECTOR, "#settings textarea").get_attribute("value")
    assert "seed 1234 · 96x96" in settings
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "app_generate.png"))

    # 2. a text file uploaded as an image -> a message, not a crash
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not an image\n")
    clear_uploads()
    upload(str(fake))
    d.find_element(By.ID, "generate-btn").click()
    _wait(lambda: "is not an image this app can read" in errors_shown(), what="the error message")
    d.save_screenshot(str(ARTIFACTS / "app_bad_upload.png"))

    # 3. the app still serves the next request, this time from the one-click example: new seed, new image
    clear_uploads()
    d.find_element(By.XPATH, "//div[contains(text(), 'ref1.png, ref2.png')]").click()
    _wait(
        lambda: len(d.find_elements(By.CSS_SELECTOR, "#refs tbody tr")) == 2, what="the example's references"
    )
    assert d.find_element(By.CSS_SELECTOR, "#instruction textarea").get_attribute("value") == INSTRUCTION
    seed = d.find_element(By.CSS_SELECTOR, "#seed input")
    seed.clear()
    seed.send_keys("7")
    d.find_element(By.ID, "generate-btn").click()
    _wait(lambda: (o := output_image()) and o[0] != src, what="a second output image")
    assert output_image()[1:] == (96, 96)
    assert "seed 7 · 96x96" in d.find_element(By.CSS_SELECTOR, "#settings textarea").get_attribute("value")


def test_soak_40_requests_from_8_clients_with_bad_uploads(app, capsys):
    generate(app.url, EXAMPLES, INSTRUCTION, seed=0, steps=8)  # first-use allocations before measuring
    rep = soak(app, n=40, clients=8, bad_every=5, steps=8)
    with capsys.disabled():
        print(
            f"\napp soak: {rep.good_ok}/{rep.good} images, {rep.bad_errors}/{rep.bad} errors, {rep.lost} lost, "
            f"{rep.seconds:.1f} s, RSS {rep.rss_start_mb:.0f} -> {rep.rss_mid_mb:.0f} -> {rep.rss_end_mb:.0f} MiB"
        )
    assert rep.failures == [] and rep.lost == 0
    assert (rep.good, rep.bad) == (32, 8) and rep.good_ok == 32 and rep.bad_errors == 8
    # memory does not keep growing: the second 20 requests add far less than a model copy (10 MB of weights;
    # allocator noise on the order of a few MiB)
    assert rep.rss_end_mb - rep.rss_mid_mb < 64, (rep.rss_mid_mb, rep.rss_end_mb)
    assert app.alive()


def test_a_5mb_instruction_gets_a_message_and_the_next_request_is_served(app):
    huge = generate(app.url, EXAMPLES, "x" * 5_000_000, seed=1, steps=4)
    assert not huge.ok and "characters; the limit is 20,000" in (huge.error or ""), huge.error
    assert app.alive(), app.log_tail()
    after = generate(app.url, EXAMPLES, INSTRUCTION, seed=2, steps=4)
    assert after.ok, after.error
