"""The web page: its functions on a tiny run, and the page itself in a real headless browser."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from helpers import bomb_png, encode
from PIL import Image

from dalle1.__main__ import main as dalle1_main
from dalle1.pipeline import Pipeline
from dalle1.serve import Limits, Studio, build_app, launch, listening_notice

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (
    6,
    3,
    1.0,
    0,
    1.0,
    1.0,
    0,
)  # candidates, kept, temperature, top-k, top-p, guidance, seed


@pytest.fixture(scope="module")
def studio(dalle_run):
    return Studio(Pipeline.load(dalle_run))


def test_sample_gives_the_kept_images_best_first_with_their_scores(studio):
    shown = studio.sample("a red circle", *SETTINGS)
    assert len(shown) == 3
    scores = [float(label.split("CLIP ")[1]) for _, label in shown]
    assert scores == sorted(scores, reverse=True)
    assert [label.split()[0] for _, label in shown] == ["#1", "#2", "#3"]
    image, _ = shown[0]
    assert image.size == (256, 256)  # 16 px enlarged for the page
    assert studio.sample("a red circle", *SETTINGS)[0][0].tobytes() == image.tobytes()  # seeded


def test_bad_input_is_a_message_not_a_stack_trace(studio, tmp_path):
    with pytest.raises(gr.Error, match="Type a caption"):
        studio.sample("   ", *SETTINGS)
    with pytest.raises(gr.Error, match="top_p in"):
        studio.sample("a red circle", 6, 3, 1.0, 0, 0.0, 1.0, 0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="Cannot use this image: cannot decode"):
        studio.complete(str(broken), None, 2, "a red circle", *SETTINGS)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    with pytest.raises(gr.Error, match="Cannot use this image: .*bomb"):
        studio.complete(str(bomb), None, 2, "a red circle", *SETTINGS)
    with pytest.raises(gr.Error, match="Upload an image or pick"):
        studio.complete(None, None, 2, "a red circle", *SETTINGS)


def test_complete_shows_the_original_then_the_completions(studio):
    assert studio.held_out, "the run's training images are offered to complete"
    picture = str(studio.held_out[0])
    shown = studio.complete(None, picture, 2, "a red circle", *SETTINGS)
    assert [label for _, label in shown][0] == "original" and len(shown) == 4
    preview = studio.preview(None, picture, 1)
    # A red line under the first of 4 code rows: a quarter of the way down.
    assert preview.getpixel((10, 64)) == (230, 0, 0)
    assert preview.getpixel((10, 150)) != (230, 0, 0)


def test_edit_shows_the_region_then_the_edits(studio):
    picture = str(studio.held_out[0])
    shown = studio.edit(None, picture, 0, 0, 8, 8, "a red circle", *SETTINGS)
    labels = [label for _, label in shown]
    assert labels[0] == "original" and len(shown) == 4 and labels[1].startswith("#1  score ")
    preview = studio.edit_preview(None, picture, 0, 0, 8, 8)  # 16 px enlarged to 256
    assert preview.getpixel((20, 20))[0] > preview.getpixel((20, 20))[2]  # tinted red
    assert preview.getpixel((200, 200)) == studio.preview(None, picture, 1).getpixel((200, 200))
    with pytest.raises(gr.Error, match="Cannot use this region: .* is empty"):
        studio.edit(None, picture, 8, 0, 8, 8, "a red circle", *SETTINGS)


def test_the_page_tells_the_runs_facts(studio):
    facts = studio.facts()
    assert "step 6" in facts and "4x4 codes of 32" in facts and "DiscreteVAE" in facts
    assert "tok.model" in facts and "clip" in facts
    assert build_app(studio) is not None


def test_a_run_that_does_not_load_stops_at_start(tmp_path, capsys):
    assert dalle1_main(["serve", "--run", str(tmp_path)]) == 2
    assert "neither a model folder" in capsys.readouterr().err


def test_one_request_may_cost_only_so_much_and_each_refusal_is_one_log_line(
    dalle_run, tmp_path, caplog
):
    limits = Limits(upload_mib=0.05, decoded_mib=0.5, candidates=8)
    studio = Studio(Pipeline.load(dalle_run), limits)
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.fromarray(noise)))  # ~120 KB on disk
    deep = tmp_path / "deep.png"  # 600x600 16-bit grey: 8 KB on disk, 0.7 MiB decoded
    deep.write_bytes(encode(Image.fromarray(np.full((600, 600), 9000, dtype=np.uint16))))
    refusals = [
        (lambda: studio.sample("a red circle", 9, 3, 1.0, 0, 1.0, 1.0, 0), r"in \[1, 8\]"),
        (lambda: studio.sample("a circle", 6, 3, float("nan"), 0, 1.0, 1.0, 0), "finite"),
        (lambda: studio.complete(str(big), None, 2, "a red circle", *SETTINGS), "0.05 MiB"),
        (lambda: studio.complete(str(deep), None, 2, "a circle", *SETTINGS), "MiB decoded"),
        (lambda: temperature.preprocess(5.0), "greater than maximum"),  # the page's own check
    ]
    page = build_app(studio).blocks.values()
    temperature = next(b for b in page if str(getattr(b, "label", "")).startswith("Temperature"))
    for call, message in refusals:
        caplog.clear()
        with pytest.raises(gr.Error, match=message) as refused:
            call()
        assert not refused.value.print_exception  # gradio prints no traceback for it
        assert [r.getMessage()[:9] for r in caplog.records] == ["refused: "]


def test_every_event_waits_in_one_queue(studio):
    app = build_app(studio)
    assert len(app.fns) >= 11  # sample and its caption's submit, complete, edit, 7 previews
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in app.fns.values()} == {("model", 1)}


def test_uploads_are_bounded_and_deleted_and_a_password_can_be_required(dalle_run, capsys):
    limits = Limits(upload_mib=0.05, upload_lifetime_s=1)
    studio = Studio(Pipeline.load(dalle_run), limits)
    assert listening_notice("127.0.0.1", False, limits) is None
    port = free_port()
    app = launch(studio, "127.0.0.1", port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        small = encode(Image.new("RGB", (16, 16), (200, 0, 0)))
        kept = httpx.post(url, files={"files": ("small.png", small, "image/png")})
        path = Path(kept.json()[0])
        assert path.is_file()
        too_big = httpx.post(url, files={"files": ("big.png", b"0" * 60_000, "image/png")})
        assert too_big.status_code == 413
        deadline = time.time() + 20
        while path.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert not path.exists(), "an upload outlived its lifetime"
    finally:
        app.close()

    port = free_port()  # every interface, with a password: it says so first
    app = launch(studio, "0.0.0.0", port, auth=[("ann", "secret")], block=False)
    try:
        assert "listening on 0.0.0.0" in capsys.readouterr().err
        config = f"http://127.0.0.1:{port}/config"
        assert httpx.get(config).status_code == 401
        with httpx.Client() as client:
            login = {"username": "ann", "password": "secret"}
            assert client.post(f"http://127.0.0.1:{port}/login", data=login).status_code == 200
            assert client.get(config).status_code == 200
    finally:
        app.close()


def test_a_bad_auth_file_stops_the_server_at_start(dalle_run, tmp_path, capsys):
    auth = tmp_path / "auth.txt"
    auth.write_text("ann-without-a-password\n")
    assert dalle1_main(["serve", "--run", str(dalle_run), "--auth-file", str(auth)]) == 2
    assert "USER:PASSWORD lines" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(dalle_run):
    """`python -m dalle1 serve` on the tiny run, on a free local port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dalle1", "serve", "--run", str(dalle_run), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert process.poll() is None, "the server exited"
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(CHROMEDRIVER is None, reason="needs chromium and chromium-driver (.ci/run)")
def test_in_a_browser_a_caption_gives_images_and_a_bad_image_a_message(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(server)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#caption textarea")).send_keys(
            "a red circle"
        )
        driver.find_element(By.CSS_SELECTOR, "#sample-button").click()
        # 8 kept by the page's default settings, each with its rank and CLIP score
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples img")) == 8)
        assert "CLIP" in driver.find_element(By.CSS_SELECTOR, "#samples").text

        driver.find_element(By.XPATH, "//button[@role='tab'][normalize-space()='Complete']").click()
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not an image")
        upload = driver.find_element(By.CSS_SELECTOR, "#complete-upload input[type=file]")
        upload.send_keys(str(broken))
        driver.find_element(By.CSS_SELECTOR, "#completion-caption textarea").send_keys("a circle")
        driver.find_element(By.CSS_SELECTOR, "#complete-button").click()
        wait.until(lambda d: "Cannot use this image" in d.find_element(By.TAG_NAME, "body").text)
        # The server keeps serving: another seed gives new images (script clicks, since the
        # message may still lie over the buttons).
        driver.find_element(By.XPATH, "//button[@role='tab'][normalize-space()='Sample']").click()
        first = driver.find_element(By.CSS_SELECTOR, "#samples img").get_attribute("src")
        settings = driver.find_element(By.CSS_SELECTOR, "#settings .label-wrap")
        driver.execute_script("arguments[0].click()", settings)
        seed = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#seed input"))
        seed.clear()
        seed.send_keys("7")
        button = driver.find_element(By.CSS_SELECTOR, "#sample-button")
        driver.execute_script("arguments[0].click()", button)
        new_first = lambda d: d.find_element(By.CSS_SELECTOR, "#samples img").get_attribute("src")  # noqa: E731
        wait.until(lambda d: new_first(d) != first)

        # The Edit tab: an uploaded picture, the default box shown in red, then the edits.
        driver.find_element(By.XPATH, "//button[@role='tab'][normalize-space()='Edit']").click()
        picture = tmp_path / "picture.png"
        picture.write_bytes(encode(Image.new("RGB", (40, 40), (0, 90, 200))))
        driver.find_element(By.CSS_SELECTOR, "#edit-upload input[type=file]").send_keys(
            str(picture)
        )
        driver.find_element(By.CSS_SELECTOR, "#edit-caption textarea").send_keys("a red circle")
        button = driver.find_element(By.CSS_SELECTOR, "#edit-button")
        driver.execute_script("arguments[0].click()", button)
        # the picture with its region, then the 8 kept
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#edits img")) == 9)
    finally:
        driver.quit()
