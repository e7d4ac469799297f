"""LlamoProcessor(piecewise_tokenization=True): the original LLaMo's tokenization, for parity with its weights.

The original (llamo-original.md section 3.2) tokenizes BOS on its own, then each piece of a user string split at the
graph placeholder, stripped, without special tokens; the graph becomes a run of slots. Off by default.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MOLECULES, user_turn
from rdkit import Chem

from llamo.tiny import load_tiny_tokenizer
from processing_llamo import DEFAULT_SYSTEM_MESSAGE, LlamoProcessor


SLOTS = 5


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


@pytest.fixture(scope="module")
def piecewise(tokenizer):
    return LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=SLOTS, piecewise_tokenization=True)


def original_ids(tokenizer, user_string: str, smiles: list[str]) -> list[int]:
    """BOS + pieces of the system+first-user string, as the original builds it (SMILES written before <graph>)."""
    for molecule in smiles:
        shown = Chem.MolToSmiles(Chem.MolFromSmiles(molecule), isomericSmiles=False, canonical=True)[:128]
        user_string = user_string.replace("<graph>", f"{shown}\0", 1)
    text = f"[INST] <<SYS>>\n{DEFAULT_SYSTEM_MESSAGE}\n<</SYS>>\n\n{user_string} [/INST]"
    ids = [tokenizer.bos_token_id]
    for index, piece in enumerate(text.split("\0")):
        if index:
            ids += [tokenizer.convert_tokens_to_ids("<graph>")] * SLOTS
        ids += tokenizer(piece.strip(), add_special_tokens=False)["input_ids"]
    return ids


def test_off_by_default_and_then_one_tokenizer_call(tokenizer):
    processor = LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=SLOTS)
    assert processor.piecewise_tokenization is False
    ids = processor(text="<graph> Describe it.", smiles="CCO")["input_ids"][0]
    assert ids == tokenizer("CCO" + "<graph>" * SLOTS + " Describe it.")["input_ids"]


@pytest.mark.parametrize(
    "user, smiles",
    [
        ("<graph> Describe this molecule.", [MOLECULES["aspirin"]]),
        ("<graph> What is its formula?", ["C[C@@H](N)C(=O)O"]),  # stereo dropped from the shown SMILES
        ("Compare <graph> with <graph>.", [MOLECULES["benzene"], MOLECULES["caffeine"]]),
    ],
)
def test_chat_prompt_equals_the_originals_piecewise_sequence(piecewise, tokenizer, user, smiles):
    content = []
    for index, part in enumerate(user.split("<graph>")):
        if index:
            content.append({"type": "molecule", "smiles": smiles[index - 1]})
        if part.strip():
            content.append({"type": "text", "text": part.strip()})
    inputs = piecewise.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert inputs["input_ids"][0] == original_ids(tokenizer, user, smiles)


def test_pieces_differ_from_one_call_where_the_tokenizer_has_no_word_prefix(piecewise, tokenizer):
    joint = LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=SLOTS)
    a = joint(text="<graph> Describe it.", smiles="CCO")["input_ids"][0]
    b = piecewise(text="<graph> Describe it.", smiles="CCO")["input_ids"][0]
    after_slots = [ids[ids.index(piecewise.graph_token_id) + SLOTS :] for ids in (a, b)]
    # the byte-level BPE keeps the space before "Describe" in one call; the stripped piece has none (Llama's
    # SentencePiece gives every piece a word-start prefix instead, which is what the original's weights saw)
    assert [tokenizer.decode(ids) for ids in after_slots] == [" Describe it.", "Describe it."]


def test_bos_comes_from_the_template_or_from_add_special_tokens(piecewise, tokenizer):
    bos = tokenizer.bos_token_id
    chat = piecewise.apply_chat_template(
        user_turn("CCO", "Describe."), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert chat["input_ids"][0][0] == bos and chat["input_ids"][0].count(bos) == 1
    assert piecewise(text="<graph> Describe.", smiles="CCO")["input_ids"][0][0] == bos
    assert bos not in piecewise(text="<graph> Describe.", smiles="CCO", add_special_tokens=False)["input_ids"][0]


def test_later_turns_and_answers_keep_their_special_tokens(piecewise, tokenizer):
    conversation = [
        *user_turn("CCO", "Describe."),
        {"role": "assistant", "content": "Ethanol."},
        {"role": "user", "content": "Formula?"},
    ]
    ids = piecewise.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0]
    assert ids.count(tokenizer.bos_token_id) == 2 and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith("Ethanol.</s><s>[INST] Formula? [/INST]")


def test_padding_truncation_and_tensors(piecewise, tokenizer):
    texts, smiles = ["<graph>", "a longer prompt about <graph> here"], ["C", "CCO"]
    single = [piecewise(text=text, smiles=molecule)["input_ids"][0] for text, molecule in zip(texts, smiles)]
    for side in ("left", "right"):
        batch = piecewise(text=texts, smiles=smiles, padding=True, padding_side=side, return_tensors="pt")
        for row, ids in enumerate(single):
            kept = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            assert kept == ids
        assert (batch["input_ids"][0] == tokenizer.pad_token_id).sum() == len(single[1]) - len(single[0])
        assert batch["attention_mask"][0, 0 if side == "left" else -1] == 0
    assert (batch["input_ids"] == piecewise.graph_token_id).sum() == 2 * SLOTS
    with pytest.raises(ValueError, match="truncated inside its graph tokens"):
        piecewise(text=texts[1], smiles="CCO", truncation=True, max_length=len(single[1]) - 3)
    cut = piecewise(text="<graph> then a long tail of words", smiles="C", truncation=True, max_length=SLOTS + 3)["input_ids"][0]
    full = piecewise(text="<graph> then a long tail of words", smiles="C")["input_ids"][0]
    assert cut == full[: SLOTS + 3]


def test_assistant_mask_covers_the_answer(piecewise):
    conversation = [*user_turn("CCO", "Describe."), {"role": "assistant", "content": "Ethanol."}]
    out = piecewise.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [token for token, keep in zip(out["input_ids"][0], out["assistant_masks"][0]) if keep]
    assert piecewise.decode(answer) == " Ethanol.</s>"


def test_the_setting_is_saved_with_the_processor(piecewise, tmp_path):
    piecewise.save_pretrained(tmp_path)
    loaded = LlamoProcessor.from_pretrained(tmp_path)
    assert loaded.piecewise_tokenization is True
    a = piecewise(text="<graph> Describe.", smiles=MOLECULES["caffeine"], return_tensors="pt")
    b = loaded(text="<graph> Describe.", smiles=MOLECULES["caffeine"], return_tensors="pt")
    assert all(torch.equal(a[key], b[key]) for key in a)
