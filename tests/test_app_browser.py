"""The demo app (app.py) in a real browser: headless Chromium drives the page a person would use.

The app runs in its own process on a tiny saved model; this process computes what the page must show (the model's
greedy answers, the attention picture, the processor's error) through the public API and compares.

Needs Debian's chromium + chromium-driver and the Python packages selenium and gradio. Locally the test skips
when they are missing; under `.ci/run` (which installs them and sets LLAMO_BROWSER_TESTS=1) it fails instead.
"""

from __future__ import annotations

import io
import os
import pathlib
import urllib.request

import numpy as np
import pytest
import torch
from conftest import MOLECULES, ROOT


REQUIRED = os.environ.get("LLAMO_BROWSER_TESTS") == "1"
MISSING = []
for module in ("selenium", "gradio"):
    try:
        __import__(module)
    except ImportError:
        MISSING.append(f"python package {module}")
if not MISSING:
    from scripts.app_browser import missing_browser_parts

    MISSING = missing_browser_parts()
if MISSING and not REQUIRED:
    pytest.skip(
        f"browser test needs {', '.join(MISSING)} (apt-get install chromium chromium-driver; pip install -r requirements.txt); "
        ".ci/run installs them and sets LLAMO_BROWSER_TESTS=1, which turns this skip into a failure",
        allow_module_level=True,
    )

from PIL import Image  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from llamo.attention import compute_atom_attention, draw_atom_attention  # noqa: E402
from scripts.app_browser import (  # noqa: E402
    ask,
    attention_image_url,
    bot_messages,
    chromium,
    fill_textbox,
    open_app,
    serve_app,
    status_text,
)


MAX_NEW_TOKENS = 12
SCREENSHOTS = pathlib.Path(os.environ.get("LLAMO_SCREENSHOT_DIR", ROOT / "outputs" / "screenshots"))


def normalize(text: str) -> str:
    return " ".join(text.split())


def greedy_answer(model, processor, messages: list[dict]) -> str:
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def wait_for_answer(driver, index: int, expected: str, timeout: float = 90) -> None:
    def shown(d):
        messages = bot_messages(d)
        return len(messages) > index and normalize(messages[index]) == normalize(expected)

    try:
        WebDriverWait(driver, timeout).until(shown)
    except TimeoutException:
        pytest.fail(f"answer {index} never became {expected!r}; the page shows {bot_messages(driver)!r}")


def rgb_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def app_url(tiny_folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    with serve_app(tiny_folder, MAX_NEW_TOKENS, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser(app_url):
    with chromium() as driver:
        open_app(driver, app_url)
        yield driver


def screenshot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / name))


def test_multi_turn_answers_and_attention_picture_appear(browser, tiny):
    model, processor = tiny
    smiles = MOLECULES["aspirin"]
    first_question, follow_up = "Describe this molecule.", "Which functional groups does it have?"
    first_turn = [{"role": "user", "content": [{"type": "molecule", "smiles": smiles}, {"type": "text", "text": first_question}]}]
    first_answer = greedy_answer(model, processor, first_turn)
    second_turn = first_turn + [
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": [{"type": "text", "text": follow_up}]},
    ]
    second_answer = greedy_answer(model, processor, second_turn)
    assert normalize(first_answer) and normalize(second_answer) != normalize(first_answer)

    ask(browser, smiles, first_question)
    wait_for_answer(browser, 0, first_answer)
    image_url = WebDriverWait(browser, 60).until(attention_image_url)
    with urllib.request.urlopen(image_url, timeout=10) as response:
        shown_png = response.read()
    expected_png = draw_atom_attention(compute_atom_attention(model, processor, smiles))
    np.testing.assert_array_equal(rgb_pixels(shown_png), rgb_pixels(expected_png))

    fill_textbox(browser, "question", follow_up)  # same molecule: the conversation goes on
    browser.find_element("css selector", "#send").click()
    wait_for_answer(browser, 1, second_answer)
    assert len(bot_messages(browser)) == 2
    screenshot(browser, "app-multi-turn.png")


def test_invalid_smiles_shows_the_processor_error(browser, tiny):
    _, processor = tiny
    bad = "C1CC("
    with pytest.raises(ValueError) as error:
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "molecule", "smiles": bad}, {"type": "text", "text": "Hi"}]}],
            add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        )  # fmt: skip
    answers_before = bot_messages(browser)

    ask(browser, bad, "Describe this molecule.")
    WebDriverWait(browser, 60).until(lambda d: str(error.value) in status_text(d))
    screenshot(browser, "app-invalid-smiles.png")
    page = browser.find_element("css selector", "body").text
    assert "Traceback" not in page
    assert bot_messages(browser) == answers_before  # nothing was answered for the bad molecule
