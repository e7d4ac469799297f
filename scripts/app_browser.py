"""Drive the demo app (app.py) in headless Chromium with Selenium: used by the browser test and by
scripts/make_demo_images.py.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`), not from a download by
Selenium: both paths are given explicitly (found on PATH, or set by CHROMIUM_BINARY / CHROMEDRIVER), so Selenium
Manager stays idle.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait


ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_BINARY") or shutil.which("chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
# Headless, and quiet on a closed network: no background services phoning home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def missing_browser_parts() -> list[str]:
    """What of Chromium and its driver cannot be found."""
    return [
        name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path or not os.path.isfile(path)
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_app(model: str | pathlib.Path, max_new_tokens: int, log_path: pathlib.Path, timeout: float = 180) -> Iterator[str]:
    """Run `python app.py --model MODEL` on a free localhost port until the block exits; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [
        sys.executable,
        str(ROOT / "app.py"),
        "--model",
        str(model),
        "--port",
        str(port),
        "--max-new-tokens",
        str(max_new_tokens),
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(url, process, log_path, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_until_serving(url: str, process: subprocess.Popen, log_path: pathlib.Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"app.py did not answer at {url} within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def chromium(window_size: tuple[int, int] = (1280, 1400)) -> Iterator[WebDriver]:
    """Headless Debian Chromium with a fresh profile, driven through Debian's chromedriver."""
    if missing_browser_parts():
        raise RuntimeError(f"not found: {', '.join(missing_browser_parts())} (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size={},{}".format(*window_size))
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def open_app(driver: WebDriver, url: str, timeout: float = 60) -> None:
    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#smiles textarea"))


def fill_textbox(driver: WebDriver, elem_id: str, text: str) -> None:
    """Replace the text of a Gradio textbox the way a person does: select all, then type."""
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def ask(driver: WebDriver, smiles: str, question: str) -> None:
    """Type a molecule and a question and press Send."""
    fill_textbox(driver, "smiles", smiles)
    fill_textbox(driver, "question", question)
    driver.find_element(By.CSS_SELECTOR, "#send").click()


def bot_messages(driver: WebDriver) -> list[str]:
    """Text of the assistant's chat bubbles, in order."""
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, '#chat [data-testid="bot"]')]


def attention_image_url(driver: WebDriver) -> str | None:
    """Address of the attention picture once it is shown and decoded by the browser."""
    images = driver.find_elements(By.CSS_SELECTOR, "#attention img")
    if images and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", images[0]):
        return images[0].get_attribute("src")
    return None


def status_text(driver: WebDriver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#status").text
