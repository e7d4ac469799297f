"""Make the demo pictures of docs/demo.md with the project's own code: the attention picture of a molecule
(llamo/attention.py) and a screenshot of the demo app (app.py, driven in headless Chromium).

    python scripts/make_demo_images.py --model outputs/llamo-tiny [--output_dir docs/images]

Needs Debian's chromium and chromium-driver for the screenshot (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile


ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: it reads the variable once

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from llamo.attention import attention_png  # noqa: E402
from llamo.cli import load_model_and_processor  # noqa: E402

from app_browser import ask, attention_image_url, chromium, open_app, serve_app  # noqa: E402  (its sibling in scripts/)


def make_attention_picture(model_path: str, smiles: str, path: pathlib.Path) -> None:
    model, processor = load_model_and_processor(model_path, device="cpu")
    attention_png(smiles, model, processor, path=path)


def make_app_screenshot(model_path: str, smiles: str, question: str, max_new_tokens: int, path: pathlib.Path) -> None:
    with (
        tempfile.TemporaryDirectory() as scratch,
        serve_app(model_path, max_new_tokens, pathlib.Path(scratch) / "app.log") as url,
        chromium((1280, 1480)) as driver,
    ):
        open_app(driver, url)
        ask(driver, smiles, question)
        WebDriverWait(driver, 300).until(attention_image_url)  # drawn once the answer is complete
        driver.save_screenshot(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "llamo-tiny"), help="model folder or Hub id")
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "docs" / "images")
    parser.add_argument("--smiles", default="CC(=O)Oc1ccccc1C(=O)O", help="molecule of both pictures (default: aspirin)")
    parser.add_argument("--question", default="How many rings does this molecule contain?")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args()
    if args.model == parser.get_default("model") and not pathlib.Path(args.model).is_dir():
        sys.exit(
            f"No model at {args.model}: train it with run_tiny_pipeline.py (docs/tiny-pipeline.md), or pass --model PATH_OR_HUB_ID "
            "(random weights: llamo-tiny --output_dir tiny-llamo, then --model tiny-llamo)."
        )

    args.output_dir.mkdir(parents=True, exist_ok=True)
    make_attention_picture(args.model, args.smiles, args.output_dir / "attention.png")
    make_app_screenshot(args.model, args.smiles, args.question, args.max_new_tokens, args.output_dir / "app.png")
    print(f"wrote {args.output_dir / 'attention.png'} and {args.output_dir / 'app.png'} with the model {args.model}")


if __name__ == "__main__":
    main()
