"""Generation: graph inputs used at prefill only, one graph encoding per call, batched == one by one."""

from __future__ import annotations

import pytest
import torch
from conftest import MOLECULES, user_turn

from llamo.tiny import build_tiny_llamo


QUESTIONS = {
    "aspirin": "Describe this molecule.",
    "methane": "What is it?",
    "caffeine": "Name the functional groups of this molecule, please.",
    "salt": "Is it charged?",
    "alanine_zwitterion": "Give its formula.",
}


@pytest.fixture(scope="module")
def model_and_processor():
    # a different seed than the shared fixture: any random tiny model must pass
    model, processor = build_tiny_llamo(seed=3)
    return model.eval(), processor


def chat_inputs(processor, names, **processor_kwargs):
    conversations = [user_turn(MOLECULES[name], QUESTIONS[name]) for name in names]
    return processor.apply_chat_template(
        conversations if len(names) > 1 else conversations[0],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs=processor_kwargs,
    )  # fmt: skip


class EncoderCalls:
    """Counts graph-encoder forward passes."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.model.graph_encoder.register_forward_hook(self)

    def __call__(self, *args):
        self.count += 1


def test_the_graph_is_encoded_once_per_generate_call(model_and_processor):
    model, processor = model_and_processor
    calls = EncoderCalls(model)
    inputs = chat_inputs(processor, list(QUESTIONS), padding=True, padding_side="left")
    model.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert calls.count == 1
    model.generate(**inputs, max_new_tokens=10, do_sample=True, top_k=5)
    assert calls.count == 2
    model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    assert calls.count == 3
    calls.handle.remove()


def test_without_kv_cache_the_graph_is_reencoded_but_the_answer_is_the_same(model_and_processor):
    model, processor = model_and_processor
    inputs = chat_inputs(processor, ["caffeine"])
    calls = EncoderCalls(model)
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert calls.count == 1
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, min_new_tokens=8, use_cache=False)
    assert calls.count == 1 + 8  # every step recomputes the whole sequence, graph included
    calls.handle.remove()
    assert torch.equal(cached, uncached)


def test_batched_left_padded_greedy_equals_one_by_one(model_and_processor):
    model, processor = model_and_processor
    names = list(QUESTIONS)
    one_by_one = []
    for name in names:
        inputs = chat_inputs(processor, [name])
        output = model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        one_by_one.append(output[0, inputs["input_ids"].shape[1] :].tolist())
    inputs = chat_inputs(processor, names, padding=True, padding_side="left")
    output = model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    batched = [row[inputs["input_ids"].shape[1] :].tolist() for row in output]
    assert batched == one_by_one
    assert len({tuple(answer) for answer in one_by_one}) > 1  # the molecules do make a difference


def test_beam_search_in_a_batch_equals_beam_search_one_by_one(model_and_processor):
    model, processor = model_and_processor
    names = ["aspirin", "salt", "caffeine"]
    settings = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    one_by_one = []
    for name in names:
        inputs = chat_inputs(processor, [name])
        output = model.generate(**inputs, **settings)
        one_by_one += [row[inputs["input_ids"].shape[1] :].tolist() for row in output]
    inputs = chat_inputs(processor, names, padding=True, padding_side="left")
    output = model.generate(**inputs, **settings)
    assert [row[inputs["input_ids"].shape[1] :].tolist() for row in output] == one_by_one


def test_several_molecules_per_prompt_are_expanded_with_their_prompt(model_and_processor):
    model, processor = model_and_processor
    texts = ["Compare <graph> and <graph>.", "<graph> Describe."]
    smiles = [[MOLECULES["aspirin"], MOLECULES["methane"]], [MOLECULES["caffeine"]]]
    inputs = processor(text=texts, smiles=smiles, padding=True, padding_side="left", return_tensors="pt")
    sampled = model.generate(**inputs, max_new_tokens=4, num_return_sequences=3, do_sample=True)
    assert sampled.shape[0] == 6
    model_kwargs = {key: value for key, value in inputs.items() if key != "input_ids"}
    input_ids, expanded = model._expand_inputs_for_generation(expand_size=2, input_ids=inputs["input_ids"], **model_kwargs)
    expanded["input_ids"] = input_ids
    reference = processor(
        text=[texts[0]] * 2 + [texts[1]] * 2, smiles=[smiles[0]] * 2 + [smiles[1]] * 2,
        padding=True, padding_side="left", return_tensors="pt",
    )  # fmt: skip
    for key in reference:
        assert torch.equal(expanded[key], reference[key]), key


def test_generate_returns_prompt_then_answer_and_stops_at_eos(model_and_processor):
    model, processor = model_and_processor
    inputs = chat_inputs(processor, ["aspirin"])
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(output[0, : inputs["input_ids"].shape[1]], inputs["input_ids"][0])
    assert output.shape[1] <= inputs["input_ids"].shape[1] + 5
    text = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(text, str)
