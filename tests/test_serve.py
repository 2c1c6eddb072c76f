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
import pytest
from helpers import bomb_png

from dalle1.__main__ import main as dalle1_main
from dalle1.pipeline import Pipeline
from dalle1.serve import Studio, build_app

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
    return Studio(Pipeline.load(dalle_run), dalle_run)


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


def test_the_page_tells_the_runs_facts(studio):
    facts = studio.facts()
    assert "step 6" in facts and "4x4 codes of 32" in facts and "DiscreteVAE" in facts
    assert "tok.model" in facts and "clip" in facts
    assert build_app(studio) is not None


def test_a_run_that_does_not_load_stops_at_start(tmp_path, capsys):
    assert dalle1_main(["serve", "--run", str(tmp_path)]) == 2
    assert "neither a model folder" in capsys.readouterr().err


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
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(broken))
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
    finally:
        driver.quit()
