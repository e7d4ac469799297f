"""app.py without a browser: choosing the model, and what the page says when it cannot show something."""

from __future__ import annotations

import re

import pytest
from conftest import MOLECULES, ROOT
from huggingface_hub import SpaceCard


pytest.importorskip("gradio", reason="the demo needs gradio (pip install -r requirements.txt)")

import llamo.demo as app  # noqa: E402
from llamo.attention import available_panels  # noqa: E402
from llamo.tiny import build_tiny_llamo  # noqa: E402


def unescape_markdown(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def test_missing_default_model_says_how_to_make_it_or_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "outputs" / "llamo-tiny")
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        app.main([])
    message = str(exit_info.value.code)
    assert f"No model at {tmp_path / 'outputs' / 'llamo-tiny'}" in message
    assert "README's main job" in message and "--model PATH_OR_HUB_ID" in message and app.MODEL_ENV_VAR in message
    assert "llamo-tiny --output_dir tiny-llamo && python app.py --model tiny-llamo" in message


def test_model_comes_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.setenv(app.MODEL_ENV_VAR, "org/llamo-from-env")
    assert app.parse_args([]).model == "org/llamo-from-env"
    assert app.parse_args(["--model", "some/folder"]).model == "some/folder"


def test_a_model_that_cannot_be_loaded_is_reported_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--model", str(tmp_path / "nowhere")])
    assert str(exit_info.value.code).startswith(f"Could not load a LLaMo model from '{tmp_path / 'nowhere'}'")


def test_first_user_turn_carries_the_molecule_and_later_turns_carry_text_only():
    messages = app.chat_messages("CCO", [("What is it?", "Ethanol."), ("Is it polar?", None)])
    assert messages == [
        {"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "Ethanol."},
        {"role": "user", "content": [{"type": "text", "text": "Is it polar?"}]},
    ]


@pytest.mark.parametrize("projector_type", ["mlp_high", "none"])
def test_projectors_without_attention_get_an_explanation_instead_of_a_picture(projector_type):
    model, processor = build_tiny_llamo(seed=0, projector_type=projector_type)
    demo = app.LlamoDemo(model.eval(), processor, model_name="tiny")
    assert demo.panels == ()
    with pytest.raises(ValueError) as error:
        available_panels(model.config)
    image, note = demo.show_attention(MOLECULES["aspirin"], app.ALL_PANELS)
    assert image is None and unescape_markdown(note) == str(error.value)


def test_invalid_smiles_leaves_the_conversation_alone_and_reports_the_processor_error():
    model, processor = build_tiny_llamo(seed=0)
    demo = app.LlamoDemo(model.eval(), processor, model_name="tiny", max_new_tokens=4)
    conversation = app.Conversation()
    *_, (shown, conversation, _, status) = demo.respond(MOLECULES["aspirin"], "What is it?", conversation)
    assert len(conversation.turns) == 1 and conversation.smiles == MOLECULES["aspirin"]
    *_, (shown_after, conversation_after, question, status) = demo.respond("C1CC(", "And this one?", conversation)
    assert conversation_after is conversation and shown_after == shown and question == "And this one?"
    assert unescape_markdown(status) == "⚠️ molecule 0 (text 0): invalid SMILES 'C1CC(': RDKit cannot parse it (syntax error)"


def test_space_card_runs_app_py_with_the_pinned_gradio():
    card = SpaceCard.load(ROOT / "space" / "README.md")
    gradio_pin = next(line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio=="))
    assert card.data.sdk == "gradio" and card.data.sdk_version == gradio_pin
    assert (ROOT / card.data.app_file).is_file() and card.data.app_file == "app.py"
