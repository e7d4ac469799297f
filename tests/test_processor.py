"""LlamoProcessor: placeholder expansion, molecule tensors, chat template, errors, save/load."""

from __future__ import annotations

import pytest
import torch
from conftest import MOLECULES, user_turn

from featurization_llamo import parse_smiles, prompt_smiles
from llamo.tiny import load_tiny_tokenizer
from processing_llamo import DEFAULT_SYSTEM_MESSAGE, LlamoProcessor


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


def slot_count(processor, ids) -> int:
    return sum(1 for token in ids if token == processor.graph_token_id)


def test_each_placeholder_becomes_smiles_text_then_the_graph_slots(processor):
    inputs = processor(text="<graph> Describe this molecule.", smiles="C[C@@H](N)C(=O)O")
    ids = inputs["input_ids"][0]
    assert slot_count(processor, ids) == processor.num_graph_tokens == 28
    first_slot = ids.index(processor.graph_token_id)
    assert ids[first_slot : first_slot + 28] == [processor.graph_token_id] * 28  # one contiguous run
    # the SMILES shown to the LLM is canonical and non-isomeric, right before the slots
    shown = processor.tokenizer.decode(ids[:first_slot], skip_special_tokens=True)
    assert shown == "CC(N)C(=O)O"
    assert processor.tokenizer.decode(ids[first_slot + 28 :]) == " Describe this molecule."


def test_graph_tensors_describe_the_molecules_in_placeholder_order(processor):
    smiles = [MOLECULES["aspirin"], MOLECULES["methane"], MOLECULES["benzene"]]
    inputs = processor(
        text=["<graph> describe", "compare <graph> with <graph>"], smiles=smiles, padding=True, return_tensors="pt"
    )
    atoms = [parse_smiles(s).GetNumAtoms() for s in smiles]
    assert inputs["graph_node_batch"].tolist() == sum(([i] * n for i, n in enumerate(atoms)), [])
    assert inputs["graph_node_features"].shape == (sum(atoms), 9)
    assert inputs["graph_edge_index"].shape[1] == inputs["graph_edge_features"].shape[0] == 2 * (13 + 0 + 6)
    assert inputs["graph_motif_batch"].tolist() == [0, 0, 0, 2]  # aspirin 3 groups, methane none, benzene 1
    assert inputs["graph_motif_features"].shape == (4, 73)
    slots = (inputs["input_ids"] == processor.graph_token_id).sum(dim=1)
    assert slots.tolist() == [28, 56]


def test_flat_and_per_text_smiles_lists_are_equivalent(processor):
    texts = ["<graph> and <graph>", "<graph> alone"]
    flat = processor(text=texts, smiles=["CCO", "CCN", "c1ccccc1"], padding=True, return_tensors="pt")
    nested = processor(text=texts, smiles=[["CCO", "CCN"], ["c1ccccc1"]], padding=True, return_tensors="pt")
    assert flat.keys() == nested.keys()
    for key in flat:
        assert torch.equal(flat[key], nested[key]), key


def test_molecule_count_must_match_the_placeholders(processor):
    with pytest.raises(ValueError, match="2 <graph> placeholder\\(s\\) but 1 SMILES"):
        processor(text="<graph> vs <graph>", smiles=["CCO"])
    with pytest.raises(ValueError, match="0 <graph> placeholder\\(s\\) but 1 SMILES"):
        processor(text="no placeholder here", smiles="CCO")
    with pytest.raises(ValueError, match="text 1 has 1 <graph> placeholder\\(s\\) but 2 SMILES"):
        processor(text=["<graph>", "<graph>"], smiles=[["CCO"], ["CCO", "CCN"]])
    with pytest.raises(ValueError, match="2 lists of SMILES for 1 texts"):
        processor(text=["<graph>"], smiles=[["CCO"], ["CCN"]])


def test_invalid_smiles_error_names_the_string_and_its_batch_index(processor):
    with pytest.raises(ValueError, match=r"molecule 2 \(text 1\): invalid SMILES 'C1CC\(': .*syntax error"):
        processor(text=["<graph>", "<graph> <graph>"], smiles=["CCO", "CCN", "C1CC("])
    with pytest.raises(ValueError, match=r"molecule 0 \(text 0\): empty SMILES"):
        processor(text="<graph>", smiles="")


def test_text_without_molecules_has_no_graph_inputs(processor):
    inputs = processor(text="What is a carboxylic acid?", return_tensors="pt")
    assert set(inputs.keys()) == {"input_ids", "attention_mask"}


def test_truncation_inside_the_graph_tokens_is_refused(processor):
    with pytest.raises(ValueError, match="truncated inside its graph tokens"):
        processor(text="<graph> Describe it.", smiles=MOLECULES["aspirin"], truncation=True, max_length=20)
    ok = processor(text="<graph> Describe it.", smiles=MOLECULES["aspirin"], truncation=True, max_length=200)
    assert slot_count(processor, ok["input_ids"][0]) == 28


def test_other_modalities_are_refused(processor):
    with pytest.raises(ValueError, match="not images"):
        processor(text="<graph>", smiles="C", images=[object()])


def test_per_atom_mode_gives_one_slot_per_atom():
    processor = LlamoProcessor(tokenizer=load_tiny_tokenizer(), num_graph_tokens=None)
    inputs = processor(text=["<graph>", "<graph>"], smiles=[MOLECULES["aspirin"], MOLECULES["salt"]], padding=True)
    assert [slot_count(processor, ids) for ids in inputs["input_ids"]] == [13, 2]


def test_text_only_mode_keeps_the_smiles_text_but_no_graph():
    processor = LlamoProcessor(tokenizer=load_tiny_tokenizer(), num_graph_tokens=0)
    inputs = processor(text="<graph> Describe it.", smiles=MOLECULES["aspirin"], return_tensors="pt")
    assert set(inputs.keys()) == {"input_ids", "attention_mask"}
    assert processor.decode(inputs["input_ids"][0], skip_special_tokens=True) == "CC(=O)Oc1ccccc1C(=O)O Describe it."


def test_smiles_display_options():
    tokenizer = load_tiny_tokenizer()
    mol = "C[C@@H](N)C(=O)O"
    hidden = LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=2, smiles_in_prompt=False)
    assert hidden.decode(hidden(text="<graph>", smiles=mol)["input_ids"][0], skip_special_tokens=True) == ""
    isomeric = LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=2, isomeric_smiles=True, smiles_max_length=5)
    shown = isomeric.decode(isomeric(text="<graph>", smiles=mol)["input_ids"][0], skip_special_tokens=True)
    assert shown == "C[C@@H](N)C(=O)O"[:5]


def test_the_tokenizer_must_know_the_graph_token():
    with pytest.raises(ValueError, match="no special token '<mol>'"):
        LlamoProcessor(tokenizer=load_tiny_tokenizer(), graph_token="<mol>")


def test_chat_template_renders_molecules_as_placeholders_in_the_llama2_layout(processor):
    conversation = [
        {"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "Describe this molecule."}]},
        {"role": "assistant", "content": "It is ethanol."},
        {"role": "user", "content": "What is its formula?"},
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == (
        f"<s>[INST] <<SYS>>\n{DEFAULT_SYSTEM_MESSAGE}\n<</SYS>>\n\n<graph> Describe this molecule. [/INST]"
        " It is ethanol.</s><s>[INST] What is its formula? [/INST]"
    )
    with_system = processor.apply_chat_template([{"role": "system", "content": "Be brief."}, *conversation[:1]])
    assert with_system.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<graph> Describe")


def test_chat_template_tokenized_equals_the_lower_level_call(processor):
    messages = user_turn(MOLECULES["caffeine"], "Describe this molecule.")
    from_chat = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    direct = processor(text=prompt, smiles=[MOLECULES["caffeine"]], add_special_tokens=False, return_tensors="pt")
    assert from_chat.keys() == direct.keys()
    for key in direct:
        assert torch.equal(from_chat[key], direct[key]), key
    assert from_chat["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    assert (from_chat["input_ids"][0] == processor.tokenizer.bos_token_id).sum() == 1  # BOS from the template only


def test_batched_chat_template_keeps_each_conversations_molecules(processor):
    conversations = [user_turn(MOLECULES["aspirin"], "Describe."), user_turn(MOLECULES["benzene"], "Name it.")]
    batch = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )  # fmt: skip
    assert batch["input_ids"].shape[0] == 2
    assert batch["graph_node_batch"].bincount().tolist() == [13, 6]
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding


def test_chat_template_errors(processor):
    with pytest.raises(ValueError, match="needs a 'smiles' string"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "molecule", "url": "x"}]}], tokenize=True)
    with pytest.raises(ValueError, match="'text' or 'molecule'"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image", "url": "x"}]}])
    with pytest.raises(ValueError, match="invalid SMILES 'C1CC\\('"):
        processor.apply_chat_template(user_turn("C1CC(", "Describe."), tokenize=True)


def test_assistant_mask_marks_only_the_answers(processor):
    conversation = [*user_turn("CCO", "Describe."), {"role": "assistant", "content": "Ethanol."}]
    out = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    answer = [token for token, keep in zip(ids, mask) if keep]
    assert processor.decode(answer) == " Ethanol.</s>"


def test_save_and_load_keeps_tokenizer_template_and_settings(tmp_path):
    processor = LlamoProcessor(tokenizer=load_tiny_tokenizer(), num_graph_tokens=None, smiles_max_length=64, isomeric_smiles=True)
    processor.save_pretrained(tmp_path)
    loaded = LlamoProcessor.from_pretrained(tmp_path)
    for name in ("graph_token", "graph_token_id", "num_graph_tokens", "smiles_in_prompt", "smiles_max_length", "isomeric_smiles"):
        assert getattr(loaded, name) == getattr(processor, name), name
    assert loaded.chat_template == processor.chat_template
    messages = user_turn(MOLECULES["alanine_zwitterion"], "Describe.")
    a = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    b = loaded.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_prompt_smiles_of_long_molecules_is_truncated_to_128_characters(processor):
    long_smiles = "OC(=O)" + "CC(C)(C(=O)OC)" * 20
    ids = processor(text="<graph>", smiles=long_smiles)["input_ids"][0]
    shown = processor.decode(ids[: ids.index(processor.graph_token_id)], skip_special_tokens=True)
    assert shown == prompt_smiles(parse_smiles(long_smiles))[:128] and len(shown) == 128


# --- Issue 16: the paths transformers users reach for next ---------------------------------------------------------


def test_batched_chat_is_left_padded_and_each_row_answers_as_alone(tiny):
    model, processor = tiny
    chats = [user_turn(MOLECULES["aspirin"], "Describe this molecule in detail, please."), user_turn("CCO", "Describe.")]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    batch = processor.apply_chat_template(chats, processor_kwargs={"padding": True}, **kwargs)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1  # the short row: padded on the left
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, chat in enumerate(chats):
        alone = processor.apply_chat_template(chat, **kwargs)
        expected = model.generate(**alone, max_new_tokens=6, do_sample=False)[0, alone["input_ids"].shape[1] :]
        assert out[row, batch["input_ids"].shape[1] :].tolist() == expected.tolist(), row


def test_rendered_chat_then_processor_has_one_bos(processor):
    chat = user_turn("CCO", "Describe.")
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert text.startswith(processor.tokenizer.bos_token)
    ids = processor(text=text, smiles=["CCO"])["input_ids"][0]
    assert ids.count(processor.tokenizer.bos_token_id) == 1
    assert ids == processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0]


def test_string_content_with_placeholder_takes_smiles_from_processor_kwargs(processor):
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    from_string = processor.apply_chat_template(
        [{"role": "user", "content": "<graph> Describe."}], processor_kwargs={"smiles": ["c1ccccc1"]}, **kwargs
    )
    from_items = processor.apply_chat_template(user_turn("c1ccccc1", "Describe."), **kwargs)
    assert from_string["input_ids"] == from_items["input_ids"]
    assert torch.equal(from_string["graph_node_features"], from_items["graph_node_features"])
    with pytest.raises(ValueError, match="not both"):
        processor.apply_chat_template(user_turn("CCO", "and <graph>?"), processor_kwargs={"smiles": ["CCN"]}, **kwargs)


def test_rdkit_mol_objects_are_accepted_like_smiles(processor):
    from rdkit import Chem

    by_smiles = processor(text=["<graph> and <graph>"], smiles=[MOLECULES["aspirin"], "CCO"], return_tensors="pt")
    by_mol = processor(
        text=["<graph> and <graph>"],
        smiles=[Chem.MolFromSmiles(MOLECULES["aspirin"]), Chem.MolFromSmiles("CCO")],
        return_tensors="pt",
    )
    assert by_smiles.keys() == by_mol.keys() and all(torch.equal(by_smiles[k], by_mol[k]) for k in by_smiles)
    chat = [
        {"role": "user", "content": [{"type": "molecule", "smiles": Chem.MolFromSmiles("CCO")}, {"type": "text", "text": "Hi"}]}
    ]
    assert (
        processor.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        == processor.apply_chat_template(user_turn("CCO", "Hi"), tokenize=True, return_dict=True)["input_ids"]
    )
    with pytest.raises(ValueError, match="no atoms"):
        processor(text="<graph>", smiles=Chem.Mol())
