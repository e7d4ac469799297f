"""The instruction-data generator: RDKit facts, questions and answers, descriptions, the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import MOLECULES

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
        named = (
            next(group for group in facts.groups + ("ester", "thiol", "nitrile", "ketone") if group in question)
            if answer == "Yes"
            else None
        )
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


# Functional groups a chemist names, checked by hand (llamo.instructions.FUNCTIONAL_GROUP_SMARTS). RDKit's fragment
# counters, used before, called atenolol's amide NH2 "a primary amine", aspirin's ester O "an ether", fluoxetine's
# aryl CF3 "an alkyl halide", found no amine in nicotine, lidocaine or morphine and gave NaCl "a halogen atom".
HAND_CHECKED_GROUPS = {
    "CC(=O)Oc1ccccc1C(=O)O": {"carboxylic acid", "ester", "benzene ring"},  # aspirin
    "CC(C)NCC(O)COc1ccc(CC(N)=O)cc1": {"secondary amine", "aliphatic hydroxyl group", "ether", "amide", "benzene ring"},  # atenolol
    "CNCCC(Oc1ccc(cc1)C(F)(F)F)c1ccccc1": {"secondary amine", "ether", "trifluoromethyl group", "benzene ring"},  # fluoxetine
    "CN1CCC[C@H]1c1cccnc1": {"tertiary amine", "pyridine ring"},  # nicotine
    "CCN(CC)CC(=O)Nc1c(C)cccc1C": {"tertiary amine", "amide", "benzene ring"},  # lidocaine
    "CN1CC[C@]23c4c5ccc(O)c4O[C@H]2[C@@H](O)C=C[C@H]3[C@H]1C5":  # morphine
        {"tertiary amine", "phenol", "aliphatic hydroxyl group", "ether", "alkene", "benzene ring"},
    "[Na+].[Cl-]": {"halide ion"},  # sodium chloride
    "CC(=O)Nc1ccc(O)cc1": {"amide", "phenol", "benzene ring"},  # paracetamol
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O": {"carboxylic acid", "benzene ring"},  # ibuprofen
    "CCOC(=O)c1ccc(N)cc1": {"ester", "primary amine", "benzene ring"},  # benzocaine
    "Nc1ccc(cc1)S(N)(=O)=O": {"primary amine", "sulfonamide", "benzene ring"},  # sulfanilamide
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C": {"imidazole ring", "lactam", "urea group"},  # caffeine
    "CC1(C)S[C@@H]2[C@H](NC(=O)Cc3ccccc3)C(=O)N2[C@H]1C(=O)O":  # penicillin G
        {"amide", "lactam", "carboxylic acid", "thioether", "benzene ring"},
    "OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl": {"carboxylic acid", "secondary amine", "aryl halide", "benzene ring"},  # diclofenac
    "CN(C)C(=N)NC(N)=N": {"guanidine group"},  # metformin
    "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12": {"lactam", "imine", "aryl halide", "benzene ring"},  # diazepam
    "C[C@@H]([NH3+])C(=O)[O-]": {"primary amine", "carboxylate"},  # alanine zwitterion
    "CSCCC(N)C(=O)O": {"thioether", "primary amine", "carboxylic acid"},  # methionine
    "C[N+](C)(C)C": {"quaternary ammonium"},
    "CCO": {"aliphatic hydroxyl group"},
    "CC(C)=O": {"ketone"},
    "O=Cc1ccccc1": {"aldehyde", "benzene ring"},
    "CCOCC": {"ether"},
    "CCOC(C)=O": {"ester"},
    "O=C1CCCO1": {"lactone"},
    "O=C1CCCN1": {"lactam"},
    "NC(N)=O": {"urea group"},
    "Nc1ccccc1": {"primary amine", "benzene ring"},
    "CN(C)C": {"tertiary amine"},
    "CC#N": {"nitrile"},
    "O=[N+]([O-])c1ccccc1": {"nitro group", "benzene ring"},
    "CCCl": {"alkyl halide"},
    "Clc1ccccc1": {"aryl halide", "benzene ring"},
    "C1CO1": {"epoxide"},
    "CCS": {"thiol"},
    "C=Cc1ccccc1": {"alkene", "benzene ring"},
    "c1ccc(cc1)N=Nc1ccccc1": {"azo group", "benzene ring"},
    "c1ccsc1": {"thiophene ring"},
    "c1ccoc1": {"furan ring"},
    "c1cnc[nH]1": {"imidazole ring"},
    "C": set(),
}  # fmt: skip


@pytest.mark.parametrize("smiles", HAND_CHECKED_GROUPS)
def test_functional_groups_are_the_ones_a_chemist_names(smiles):
    assert set(molecule_facts(parse_smiles(smiles)).groups) == HAND_CHECKED_GROUPS[smiles]


def test_every_group_pattern_is_valid_smarts_and_used_by_a_hand_checked_molecule():
    from llamo.instructions import FUNCTIONAL_GROUP_PATTERNS

    assert all(pattern is not None for pattern in FUNCTIONAL_GROUP_PATTERNS.values())
    checked = set().union(*HAND_CHECKED_GROUPS.values())
    untested = set(FUNCTIONAL_GROUP_PATTERNS) - checked
    assert untested <= {"carbamate", "sulfone", "phosphate group", "alkyne"}, untested


def test_cli_shows_a_progress_bar_on_large_inputs(tmp_path, monkeypatch, capsys):
    import llamo.instructions as instructions

    source = tmp_path / "molecules.txt"
    source.write_text("CCO\nc1ccccc1\nCC(=O)O\n")
    monkeypatch.setattr(instructions, "PROGRESS_MIN_MOLECULES", 3)
    monkeypatch.setattr(sys, "argv", ["llamo-instructions", "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    instructions.main()
    assert "3/3" in capsys.readouterr().err  # tqdm's bar, on stderr
    monkeypatch.setattr(instructions, "PROGRESS_MIN_MOLECULES", 4)  # below the threshold: no bar
    instructions.main()
    assert "3/3" not in capsys.readouterr().err
