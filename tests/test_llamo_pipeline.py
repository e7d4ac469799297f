"""`pipeline("molecule-text-to-text", model=folder, trust_remote_code=True)`, and text-generation's refusal."""

from __future__ import annotations

import json

import pytest
from conftest import MOLECULES, user_turn
from jinja2.exceptions import TemplateError
from transformers import pipeline


def test_saved_folder_declares_the_pipeline_and_carries_its_code(tiny_folder):
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["custom_pipelines"]["molecule-text-to-text"]["impl"] == "pipeline_llamo.LlamoPipeline"
    assert (tiny_folder / "pipeline_llamo.py").is_file()


def test_pipeline_answers_chat_messages_with_the_molecule(tiny, tiny_folder):
    model, processor = tiny
    pipe = pipeline("molecule-text-to-text", model=str(tiny_folder), trust_remote_code=True)
    assert type(pipe).__name__ == "LlamoPipeline"
    messages = user_turn(MOLECULES["aspirin"], "Describe this molecule.")
    result = pipe(messages, max_new_tokens=8, do_sample=False)
    # the same answer as the processor + generate path, which puts the graph into the slots
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = processor.decode(
        model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert result[0]["generated_text"][:-1] == messages
    assert result[0]["generated_text"][-1] == {"role": "assistant", "content": expected.strip()}
    # a single question, and the task inferred from the config
    question = pipe({"smiles": MOLECULES["aspirin"], "text": "Describe this molecule."}, max_new_tokens=8, do_sample=False)
    assert question == [{"generated_text": expected.strip()}]
    assert type(pipeline(model=str(tiny_folder), trust_remote_code=True)).__name__ == "LlamoPipeline"


def test_text_generation_refuses_molecule_items_and_names_the_task(tiny_folder):
    text_generation = pipeline("text-generation", model=str(tiny_folder), trust_remote_code=True)
    with pytest.raises(TemplateError, match="molecule-text-to-text"):
        text_generation(user_turn("CCO", "Describe."), max_new_tokens=2)
    # plain text still works (the language model alone, no molecule)
    assert isinstance(text_generation("CCO is", max_new_tokens=2, do_sample=False)[0]["generated_text"], str)
