"""Training data: every format loads, bad rows are counted with their reasons, labels and batches are right."""

from __future__ import annotations

import json

import pytest
import selfies
import torch
from conftest import MOLECULES, user_turn
from rdkit import Chem

from llamo.collator import LlamoDataCollator
from llamo.data import (
    DataSource,
    conversation_with_molecules,
    encode_conversation,
    encode_dataset,
    is_held_out,
    load_mixture,
    load_source,
    split_by_molecule,
    undouble_backslashes,
)


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_messages_jsonl_with_its_task_labels(tmp_path):
    rows = [
        {
            "smiles": "CCO",
            "messages": [{"role": "user", "content": "Formula?"}, {"role": "assistant", "content": "C2H6O"}],
            "task": "facts",
        },
        {
            "smiles": "CCN",
            "messages": [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": "An amine."}],
        },
        {"smiles": "CCC", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
        {"smiles": 5, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x"}]},
        {"smiles": "CC", "messages": [{"role": "robot", "content": "Hi"}]},
    ]
    path = write(tmp_path / "chat.jsonl", "\n".join(json.dumps(r) for r in rows))
    dataset, skipped = load_source(DataSource.parse(path))
    assert len(dataset) == 2
    assert dataset[0] == {"smiles": ["CCO"], "messages": rows[0]["messages"], "task": "facts"}
    assert dataset[1]["task"] == "messages"
    assert skipped.counts == {"auto:chat.jsonl: empty answer": 1, "auto:chat.jsonl: wrong type": 2}
    assert skipped.examples["auto:chat.jsonl: empty answer"] == ["row 2"]
    assert skipped.examples["auto:chat.jsonl: wrong type"] == ["row 3: 'smiles' is int", "row 4: message role 'robot'"]


def test_chebi20_captions_with_doubled_backslashes_and_quotes(tmp_path):
    path = write(
        tmp_path / "validation.txt",
        'CID\tSMILES\tdescription\n1\tC/C=C\\\\C\tThe molecule is a "butene".\n2\tC1CC(\tThe molecule is broken.\n3\tCCO\t\n',
    )
    dataset, skipped = load_source(DataSource.parse(f"caption:{path}"))
    assert dataset["smiles"] == [["C/C=C\\C"], ["C1CC("]]  # backslashes undone; chemistry is checked when encoding
    assert dataset[0]["messages"][1]["content"] == 'The molecule is a "butene".'
    assert "Describe" in dataset[0]["messages"][0]["content"] or "molecule" in dataset[0]["messages"][0]["content"]
    assert skipped.counts == {"caption:validation.txt: empty answer": 1}
    assert undouble_backslashes("C/C=C\\\\C") == "C/C=C\\C" and undouble_backslashes("C/C=C\\C") == "C/C=C\\C"


def test_iupac_property_and_instruction_tables(tmp_path):
    iupac = write(tmp_path / "names.tsv", "cid\tSMILES\tdescription\n1\tCCO\tethanol\n2\tCC(=O)O\tacetic acid\n")
    dataset, _ = load_source(DataSource.parse(f"iupac:{iupac}"))
    assert [m[1]["content"] for m in dataset["messages"]] == ["ethanol", "acetic acid"]
    assert "IUPAC" in dataset[0]["messages"][0]["content"]

    qm9 = write(
        tmp_path / "qm9.csv", "Index,SMILES,HOMO_au,LUMO_au,HOMO_LUMO_gap_au\n1,C,-0.3877,0.1171,0.5048\n2,N,abc,0.0829,0.3399\n"
    )
    dataset, skipped = load_source(DataSource.parse(qm9))  # detected from the columns
    # row 2's bad HOMO is skipped on its own: its LUMO and gap are kept
    assert [m[1]["content"] for m in dataset["messages"]] == ["-0.3877", "0.1171", "0.5048", "0.0829", "0.3399"]
    assert ["HOMO energy" in dataset[0]["messages"][0]["content"], "HOMO-LUMO gap" in dataset[2]["messages"][0]["content"]] == [
        True,
        True,
    ]
    assert skipped.counts == {"auto:qm9.csv: non-numeric property": 1}
    assert skipped.examples["auto:qm9.csv: non-numeric property"] == ["row 1: homo='abc'"]

    instructions = write(tmp_path / "inst.csv", "smiles,instruction,input,output\nCCO,What is it?,,Ethanol.\nCCO,,,Nothing\n")
    dataset, skipped = load_source(DataSource.parse(instructions))
    assert dataset[0]["messages"] == [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "Ethanol."}]
    assert skipped.counts == {"auto:inst.csv: missing field": 1}


def test_parquet_files_load(tmp_path):
    import datasets

    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([{"smiles": "CCO", "instruction": "Name it.", "output": "ethanol"}]).to_parquet(str(path))
    dataset, _ = load_source(DataSource.parse(str(path)))
    assert dataset[0]["messages"][1]["content"] == "ethanol"


def test_mol_instructions_selfies_are_converted(tmp_path):
    reactants, product = selfies.encoder("CCO.CC(=O)O"), selfies.encoder("CC(=O)OCC")
    rows = [
        {"instruction": "Predict the product.", "input": reactants, "output": product, "metadata": {}},
        {"instruction": "Describe it.", "input": selfies.encoder("c1ccccc1"), "output": "Benzene is aromatic.", "metadata": {}},
        {"instruction": "Design a molecule.", "input": "A small alcohol.", "output": selfies.encoder("CCO"), "metadata": {}},
        {"instruction": "Describe it.", "input": "[C][Branch9]", "output": "x", "metadata": {}},
    ]
    path = write(tmp_path / "mol.json", json.dumps(rows))
    dataset, skipped = load_source(DataSource.parse(f"mol_instructions:{path}"))
    assert dataset[0]["smiles"] == [selfies.decoder(reactants)] and dataset[0]["messages"][1]["content"] == selfies.decoder(
        product
    )
    assert Chem.CanonSmiles(dataset[0]["messages"][1]["content"]) == Chem.CanonSmiles("CCOC(C)=O")
    assert Chem.CanonSmiles(dataset[1]["smiles"][0]) == "c1ccccc1"
    assert dataset[2]["smiles"] == [] and dataset[2]["messages"][0]["content"] == "Design a molecule. A small alcohol."
    assert dataset[2]["messages"][1]["content"] == "CCO"
    assert skipped.counts == {"mol_instructions:mol.json: invalid SELFIES": 1}
    assert skipped.examples["mol_instructions:mol.json: invalid SELFIES"][0].startswith("row 3: invalid SELFIES '[C][Branch9]'")


def test_unknown_columns_and_bad_specs_raise(tmp_path):
    path = write(tmp_path / "odd.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match="cannot tell the task format"):
        load_source(DataSource.parse(path))
    with pytest.raises(ValueError, match="weight after '@' must be a number"):
        DataSource.parse("x.jsonl@lots")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_source(DataSource.parse(write(tmp_path / "x.xml", "<a/>")))


def test_mixture_proportions(tmp_path):
    many = write(tmp_path / "many.tsv", "smiles\tiupac_name\n" + "".join(f"{'C' * (i % 9 + 1)}\tname{i}\n" for i in range(400)))
    few = write(tmp_path / "few.tsv", "smiles\tiupac_name\n" + "".join(f"{'N' * (i % 3 + 1)}\tother{i}\n" for i in range(100)))
    mixture, _ = load_mixture([DataSource.parse(f"{many}@0.5"), DataSource.parse(f"{few}@0.5")], seed=0)
    answers = [m[1]["content"] for m in mixture["messages"]]
    for start in (0, len(answers) // 2, len(answers) - 150):  # 50/50 at the start, the middle and the end
        share = sum(a.startswith("other") for a in answers[start : start + 150]) / 150
        assert 0.35 < share < 0.65, (start, share)
    assert {a for a in answers if a.startswith("name")} == {f"name{i}" for i in range(400)}  # the larger source: once
    assert len({a for a in answers if a.startswith("other")}) == 100  # the smaller one: all of it, repeated
    assert 700 < len(answers) < 900  # about 400 rows of each
    with pytest.raises(ValueError, match="positive weight"):
        load_mixture([DataSource.parse(f"{many}@0.5"), DataSource.parse(few)])
    concatenated, _ = load_mixture([DataSource.parse(many), DataSource.parse(few)])
    assert len(concatenated) == 500


def test_molecules_go_before_the_first_user_turn_or_into_the_placeholders():
    messages = [{"role": "user", "content": "Compare <graph> with <graph>."}, {"role": "assistant", "content": "Same."}]
    chat = conversation_with_molecules(["CCO", "OCC"], messages)
    assert chat[0]["content"] == [
        {"type": "text", "text": "Compare"}, {"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "with"},
        {"type": "molecule", "smiles": "OCC"}, {"type": "text", "text": "."},
    ]  # fmt: skip
    plain = conversation_with_molecules(["CCO"], [{"role": "user", "content": "Describe."}])
    assert plain[0]["content"][0] == {"type": "molecule", "smiles": "CCO"}
    with pytest.raises(ValueError, match="more <graph> placeholders"):
        conversation_with_molecules(["CCO"], messages)


def test_labels_cover_exactly_the_assistant_turns(processor):
    messages = [
        {"role": "user", "content": "How many rings?"}, {"role": "assistant", "content": "1"},
        {"role": "user", "content": "And aromatic ones?"}, {"role": "assistant", "content": "1 as well"},
    ]  # fmt: skip
    row = encode_conversation([MOLECULES["benzene"]], messages, processor, max_length=None)
    ids, labels = row["input_ids"], row["labels"]
    supervised = [i for i, label in enumerate(labels) if label != -100]
    assert all(labels[i] == ids[i] for i in supervised)
    assert processor.decode([ids[i] for i in supervised]) == " 1</s> 1 as well</s>"  # every answer, with its EOS
    slots = [i for i, token in enumerate(ids) if token == processor.graph_token_id]
    assert len(slots) == 28 and all(labels[i] == -100 for i in slots)
    assert row["num_molecules"] == 1 and len(row["graph_node_features"]) == 6


def test_encoding_skips_what_cannot_be_used_and_says_why(processor, tmp_path):
    import datasets

    conversations = datasets.Dataset.from_list(
        [
            {
                "smiles": ["CCO"],
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "task": "t",
            },
            {
                "smiles": ["C1CC("],
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "task": "t",
            },
            {
                "smiles": [".".join([MOLECULES["aspirin"]] * 4)],
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "task": "t",
            },
            {
                "smiles": ["CCN"],
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A " * 200}],
                "task": "t",
            },
        ]
    )
    encoded, skipped = encode_dataset(conversations, processor, max_length=100)
    assert len(encoded) == 2
    assert len(encoded[1]["input_ids"]) == 100  # the long answer is cut, the graph tokens are kept
    assert skipped.counts == {"invalid molecule or placeholders": 1, "graph tokens beyond max_length": 1}
    assert skipped.notes == {"answer cut at max_length": 1}  # kept, but reported
    assert "invalid SMILES 'C1CC('" in skipped.examples["invalid molecule or placeholders"][0]


def test_collator_pads_right_and_joins_the_molecules_like_the_processor(processor):
    conversations = [
        ([MOLECULES["aspirin"]], "Describe."), ([MOLECULES["methane"], MOLECULES["salt"]], "Compare <graph> and <graph>."),
        ([], "What is a ring?"),
    ]  # fmt: skip
    rows = [
        encode_conversation(
            smiles, [{"role": "user", "content": q}, {"role": "assistant", "content": "Answer."}], processor, None
        )
        for smiles, q in conversations
    ]
    batch = LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id)(rows)
    lengths = [len(row["input_ids"]) for row in rows]
    assert batch["input_ids"].shape == (3, max(lengths))
    for index, length in enumerate(lengths):
        assert batch["attention_mask"][index].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert (batch["labels"][index, length:] == -100).all()
        assert (batch["input_ids"][index, length:] == processor.tokenizer.pad_token_id).all()
    reference = processor(
        text=["<graph>", "<graph> <graph>"], smiles=[c[0] for c in conversations[:2]], return_tensors="pt", padding=True
    )
    for key in reference:
        if key.startswith("graph_"):
            assert torch.equal(batch[key], reference[key]), key


def test_split_by_molecule_is_deterministic_and_molecule_disjoint(processor):
    import datasets

    rows = [
        {"smiles": [s], "messages": [], "task": ""} for s in ["CCO", "OCC", "C(O)C"] * 3 + [f"C{'C' * i}N" for i in range(60)]
    ]
    train, held = split_by_molecule(datasets.Dataset.from_list(rows), 0.3)
    assert len(train) + len(held) == len(rows) and 0 < len(held) < len(rows)
    canonical = lambda ds: {s for (s,) in ds["smiles"] if s in ("CCO", "OCC", "C(O)C")}  # noqa: E731
    assert not (canonical(train) and canonical(held))  # one molecule, written three ways, stays on one side
    assert split_by_molecule(datasets.Dataset.from_list(rows), 0.3)[1]["smiles"] == held["smiles"]
    assert is_held_out(["CCO"], 1.0) and not is_held_out(["CCO"], 0.0)


def test_chat_layout_from_generated_rows_matches_the_processor(processor):
    row = encode_conversation(
        ["CCO"], [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "Ethanol."}], processor, None
    )
    expected = processor.apply_chat_template(
        [*user_turn("CCO", "Describe."), {"role": "assistant", "content": "Ethanol."}], tokenize=True
    )
    assert row["input_ids"] == expected[0]
