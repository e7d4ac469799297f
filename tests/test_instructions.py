"""The instruction-data generator: RDKit facts, questions and answers, descriptions, the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import MOLECULES, ROOT

from featurization_llamo import parse_smiles
from llamo.instructions import QUESTIONS, ask, describe, generate_examples, molecule_facts


# Hand-checked: formula, heavy atoms, rings, aromatic rings, H-bond donors (N-H, O-H) and acceptors (N, O atoms:
# Lipinski), net charge, stereocentres, components.
EXPECTED = {
    "aspirin": dict(formula="C9H8O4", heavy_atoms=13, rings=1, aromatic_rings=1, hbond_donors=1, hbond_acceptors=4,
                    formal_charge=0, stereocentres=0, components=1),
    "caffeine": dict(formula="C8H10N4O2", heavy_atoms=14, rings=2, aromatic_rings=2, hbond_donors=0, hbond_acceptors=6,
                     formal_charge=0, stereocentres=0, components=1),
    "alanine_zwitterion": dict(formula="C3H7NO2", heavy_atoms=6, rings=0, aromatic_rings=0, formal_charge=0,
                               stereocentres=1, components=1),
    "salt": dict(formula="ClNa", heavy_atoms=2, rings=0, formal_charge=0, components=2),
    "benzene": dict(formula="C6H6", heavy_atoms=6, rings=1, aromatic_rings=1, hbond_donors=0, hbond_acceptors=0),
}  # fmt: skip


@pytest.mark.parametrize("name", EXPECTED)
def test_facts_of_hand_checked_molecules(name):
    facts = molecule_facts(parse_smiles(MOLECULES[name]))
    for field, value in EXPECTED[name].items():
        assert getattr(facts, field) == value, field


def test_masses_and_named_groups():
    aspirin = molecule_facts(parse_smiles(MOLECULES["aspirin"]))
    assert round(aspirin.molecular_weight, 2) == 180.16
    assert round(aspirin.exact_mass, 4) == 180.0423
    assert {"carboxylic acid", "ester", "benzene ring"} <= set(aspirin.groups)
    assert aspirin.motifs == 3  # ester, acid, ring (LLaMo's motif extractor)
    ethanol = molecule_facts(parse_smiles("CCO"))
    assert ethanol.groups == ("aliphatic hydroxyl group",)
    assert molecule_facts(parse_smiles("C")).groups == ()


def test_answers_are_the_computed_facts():
    facts = molecule_facts(parse_smiles(MOLECULES["caffeine"]))
    rng = random.Random(0)
    assert ask("formula", facts, rng)[1] == "C8H10N4O2"
    assert ask("aromatic_rings", facts, rng)[1] == "2"
    assert ask("is_aromatic", facts, rng)[1] == "Yes"
    assert ask("molecular_weight", facts, rng)[1] == "194.19 g/mol"
    assert ask("is_aromatic", molecule_facts(parse_smiles("CCO")), rng)[1] == "No"
    for _ in range(20):  # yes/no group questions: the answer matches the group named in the question
        question, answer = ask("has_group", facts, rng)
        named = next(group for group in facts.groups + ("ester", "thiol", "nitrile", "ketone") if group in question) if answer == "Yes" else None
        assert (answer == "Yes") == (named is not None and named in facts.groups)


def test_descriptions_state_the_facts():
    facts = molecule_facts(parse_smiles(MOLECULES["aspirin"]))
    for seed in range(5):
        text = describe(facts, random.Random(seed))
        assert "C9H8O4" in text and "180.16 g/mol" in text and "13 heavy atoms" in text
        assert "a carboxylic acid" in text and "1 hydrogen bond donor and 4 acceptors" in text


def test_generated_rows_are_deterministic_varied_and_skip_invalid_smiles():
    smiles = [MOLECULES["aspirin"], "C1CC(", MOLECULES["caffeine"], MOLECULES["methane"]]
    rows = list(generate_examples(smiles, questions_per_molecule=3, multi_turn_fraction=1.0, seed=1))
    assert rows == list(generate_examples(smiles, questions_per_molecule=3, multi_turn_fraction=1.0, seed=1))
    assert {row["smiles"] for row in rows} == {MOLECULES["aspirin"], MOLECULES["caffeine"], MOLECULES["methane"]}
    per_molecule = [row for row in rows if row["smiles"] == MOLECULES["aspirin"]]
    assert [row["task"] for row in per_molecule] == ["facts"] * 4 + ["description"]  # 3 single-turn, 1 multi-turn
    multi = next(row for row in per_molecule if row["fact"] == "multi_turn")
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant"] * 3
    assert len({row["messages"][0]["content"] for row in rows}) > 8  # varied wording
    assert all(message["content"] for row in rows for message in row["messages"])


def test_every_question_wording_is_answerable():
    facts = molecule_facts(parse_smiles(MOLECULES["aspirin"]))
    for fact, (wordings, answer) in QUESTIONS.items():
        assert wordings and isinstance(answer(facts), str) and answer(facts), fact


def test_cli_writes_json_lines_and_counts_invalid_smiles(tmp_path):
    source = tmp_path / "molecules.csv"
    source.write_text("name,SMILES\naspirin,CC(=O)Oc1ccccc1C(=O)O\nbroken,C1CC(\nethanol,CCO\n")
    output = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "llamo.instructions", "--input", str(source), "--output", str(output), "--questions_per_molecule", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "3 SMILES read, 1 skipped as invalid" in result.stdout
    assert "skipped row 1: invalid SMILES 'C1CC('" in result.stdout
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert {row["smiles"] for row in rows} == {"CC(=O)Oc1ccccc1C(=O)O", "CCO"}
