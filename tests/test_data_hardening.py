"""Data hardening (issue 18 problems 1, 4, 5, 6, 10, 11): no bad value is trained, no row is lost uncounted."""

from __future__ import annotations

import json
import time

import datasets
import pytest
import selfies
from conftest import MOLECULES

from featurization_llamo import MAX_ATOMS
from llamo.data import (
    ANSWER_CUT,
    TEXT_TRIMMED,
    DataSource,
    character_budget,
    encode_conversation,
    encode_dataset,
    finite_number,
    is_held_out,
    load_source,
    split_by_molecule,
)
from llamo.evaluation import load_examples


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


def qa(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize(
    "value", [float("inf"), float("nan"), 1e400, "inf", "NaN", "-Infinity", " 1_000 ", "1e400", "0x10", True, None, ""]
)
def test_non_finite_or_odd_numbers_are_not_property_answers(value):
    with pytest.raises(ValueError):
        finite_number(value)


@pytest.mark.parametrize(
    "value, number", [("-0.3877", -0.3877), (" 0.25 ", 0.25), ("1e-3", 0.001), (2, 2.0), (".5", 0.5), ("+3.", 3.0)]
)
def test_plain_numbers_are_property_answers(value, number):
    assert finite_number(value) == number


def test_each_property_is_kept_or_skipped_on_its_own(tmp_path):
    path = tmp_path / "qm9.jsonl"
    rows = [
        {"smiles": "C", "homo": -0.3877, "lumo": "inf", "gap": "NaN"},
        {"smiles": "N", "homo": "1e400", "lumo": 0.0829, "gap": " 1_000 "},
        {"smiles": "O", "homo": -0.2, "lumo": 0.1, "gap": 0.3},
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    dataset, skipped = load_source(DataSource.parse(f"property:{path}"))
    assert [(s[0], m[1]["content"]) for s, m in zip(dataset["smiles"], dataset["messages"])] == [
        ("C", "-0.3877"), ("N", "0.0829"), ("O", "-0.2000"), ("O", "0.1000"), ("O", "0.3000"),
    ]  # fmt: skip
    assert skipped.counts == {"property:qm9.jsonl: non-numeric property": 4}
    assert len(dataset) + skipped.total == 3 * len(rows)  # one question per property in, used + skipped out


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return str(path)


BAD_SMILES = {
    "syntax": "C1CC(",
    "too many atoms": "C" * (MAX_ATOMS + 1),  # a SIGSEGV in the SMILES writer at ~19,000 before the limit
    "non-ASCII": "中O",
    "NUL": "CCO\x00",
    "unknown element": "[#119]",
}


def format_rows(fmt: str) -> tuple[list[dict], int]:
    """Rows of one format with good and bad values, and how many conversations they hold (the unit counted)."""
    good, bad = MOLECULES["aspirin"], list(BAD_SMILES.values())
    if fmt == "messages":
        rows = [{"smiles": s, "messages": qa("Q?", "A.")} for s in [good, *bad]] + [{"smiles": good, "messages": qa("Q?", " ")}]
    elif fmt == "instruction":
        rows = [{"smiles": s, "instruction": "Q?", "input": "", "output": "A."} for s in [good, *bad]]
        rows += [{"smiles": good, "instruction": "", "input": "", "output": "A."}]
    elif fmt in ("caption", "iupac"):
        column = "description" if fmt == "caption" else "iupac_name"
        rows = [{"smiles": s, column: "text"} for s in [good, *bad]] + [
            {"smiles": good, column: ""},
            {"smiles": None, column: "x"},
        ]
    elif fmt == "property":
        rows = [{"smiles": s, "homo": -0.2, "lumo": "inf", "gap": 0.3} for s in [good, *bad]]
        return rows, 3 * len(rows)
    else:  # mol_instructions
        encoded = selfies.encoder(good)
        rows = [
            {"instruction": "Describe.", "input": encoded, "output": "A."},
            {"instruction": "Describe.", "input": "[C][Branch1", "output": "A."},
        ]
        rows += [
            {"instruction": "Describe.", "input": "plain text", "output": "A."},
            {"instruction": "Q?", "input": "", "output": ""},
        ]
        rows += [{"instruction": "Q?", "input": selfies.encoder("CCO"), "output": "x" * 200_000}]
    return rows, len(rows)


@pytest.mark.parametrize("fmt", ["messages", "instruction", "caption", "iupac", "property", "mol_instructions"])
def test_every_conversation_in_is_used_or_skipped_with_a_reason(tmp_path, processor, fmt):
    rows, units = format_rows(fmt)
    dataset, read_skips = load_source(DataSource.parse(f"{fmt}:{write_rows(tmp_path / 'rows.jsonl', rows)}"))
    encoded, encode_skips = encode_dataset(dataset, processor, max_length=256)
    assert len(encoded) + read_skips.total + encode_skips.total == units
    assert read_skips.total + encode_skips.total > 0 and len(encoded) > 0
    reasons = set(read_skips.counts) | set(encode_skips.counts)
    assert all(reason for reason in reasons)
    if fmt != "mol_instructions":
        invalid = encode_skips.counts["invalid molecule or placeholders"]
        per_row = 2 if fmt == "property" else 1  # the property rows each lose their `inf` LUMO when read
        assert invalid == len(BAD_SMILES) * per_row
        examples = " ".join(encode_skips.examples["invalid molecule or placeholders"])
        assert "invalid SMILES 'C1CC('" in examples and "too large" in examples
    else:
        assert encode_skips.notes == {TEXT_TRIMMED: 1, ANSWER_CUT: 1}


def test_a_huge_answer_is_trimmed_before_tokenization_with_the_same_tokens(processor):
    smiles, answer = [MOLECULES["caffeine"]], "a long description " * 250_000  # 4.75 MB
    started = time.perf_counter()
    row = encode_conversation(smiles, qa("Describe.", answer), processor, max_length=160)
    assert time.perf_counter() - started < 3  # tokenizing the whole answer with offsets took tens of seconds
    assert row["skip_reason"] == "" and row["skip_detail"] == f"{TEXT_TRIMMED}; {ANSWER_CUT}"
    budget = character_budget(processor, 160)
    reference = encode_conversation(smiles, qa("Describe.", answer[: 3 * budget]), processor, max_length=160, char_budget=10**9)
    assert reference["skip_detail"] == ANSWER_CUT  # not trimmed, only cut after tokenization
    assert row["input_ids"] == reference["input_ids"] and row["labels"] == reference["labels"]


def test_a_placeholder_trimmed_away_is_a_counted_skip(processor):
    question = "x " * 100_000 + "and <graph>"
    row = encode_conversation(["CCO"], qa(question, "A."), processor, max_length=160)
    assert row["skip_reason"] == "graph tokens beyond max_length"


def test_evaluation_skips_and_counts_invalid_molecules_instead_of_aborting(tmp_path):
    rows = [{"smiles": s, "description": "text"} for s in ["CCO", "C1CC(", "CCN", "C" * 19_000, "中O"]]
    path = write_rows(tmp_path / "dev.jsonl", rows)
    examples, skipped = load_examples([f"caption:{path}"])
    assert [example.smiles for example in examples] == [["CCO"], ["CCN"]]
    assert skipped["by_reason"] == {"invalid molecule or placeholders": 3}


STEREOISOMERS = [
    ("C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O"), ("F/C=C/F", "F/C=C\\F"), ("[13CH4]", "C"), ("O[C@H]1CC[C@@H](O)CC1", "OC1CCC(O)CC1"),
    ("C[C@H](O)CC", "C[C@@H](O)CC"), ("Cl/C=C/Br", "Cl/C=C\\Br"), ("N[C@@H](CS)C(=O)O", "N[C@H](CS)C(=O)O"),
    ("[2H]O[2H]", "O"), ("C/C=C/C", "C/C=C\\C"), ("O[C@H](F)Cl", "O[C@@H](F)Cl"),
]  # fmt: skip


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_molecules_the_prompt_shows_alike_land_on_the_same_side(fraction):
    # problem 10: the isomeric SMILES was hashed, but the prompt shows the non-isomeric text cut at 128 characters
    for first, second in STEREOISOMERS:
        assert is_held_out([first], fraction) == is_held_out([second], fraction), (first, second)
    prefix = "C" * 130
    for tail in range(10):
        assert is_held_out([prefix + "O" * tail], fraction) == is_held_out([prefix], fraction)


def test_conversations_without_molecules_are_split_too():
    # problem 11: mol_instructions rows without a molecule all landed in training
    rows = [{"smiles": [], "messages": qa(f"Question number {i}?", "A."), "task": ""} for i in range(40)]
    train, held = split_by_molecule(datasets.Dataset.from_list(rows), 0.5)
    assert 0 < len(held) < 40 and len(train) + len(held) == 40
    again = split_by_molecule(datasets.Dataset.from_list(rows), 0.5)[1]
    assert again["messages"] == held["messages"]
