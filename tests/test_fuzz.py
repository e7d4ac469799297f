"""Property-based fuzzing: whatever string arrives as a SMILES, the processor succeeds or raises ValueError."""

from __future__ import annotations

import pytest
from conftest import read_data_smiles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurization_llamo import parse_smiles


SMILES_ALPHABET = "CNOSPFIBrcnosp()[]=#@+-/\\.%0123456789HlaeKgi*:~ "
REAL_SMILES = read_data_smiles("chebi20_smiles.tsv")[:300] + read_data_smiles("moleculenet_smiles.tsv")[:100]


@st.composite
def mutated_smiles(draw) -> str:
    """A real SMILES with a few characters deleted, inserted or swapped: mostly invalid, sometimes valid."""
    text = list(draw(st.sampled_from(REAL_SMILES)))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(("delete", "insert", "replace")))
        character = draw(st.sampled_from(SMILES_ALPHABET))
        if action == "insert" or not text:
            text.insert(position, character)
        elif action == "delete":
            del text[min(position, len(text) - 1)]
        else:
            text[min(position, len(text) - 1)] = character
    return "".join(text)


def process_or_value_error(processor, smiles) -> None:
    try:
        inputs = processor(text="<graph> Describe this molecule.", smiles=[smiles], return_tensors="pt")
    except ValueError:
        return
    # success: the inputs are consistent with one valid molecule
    assert (inputs["input_ids"] == processor.graph_token_id).sum() == processor.num_graph_tokens
    assert inputs["graph_node_batch"].numel() == parse_smiles(smiles).GetNumAtoms()


FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ_SETTINGS
@given(smiles=st.text(max_size=60))
def test_random_unicode_strings(tiny, smiles):
    process_or_value_error(tiny[1], smiles)


@FUZZ_SETTINGS
@given(smiles=st.text(alphabet=SMILES_ALPHABET, max_size=80))
def test_random_smiles_alphabet_strings(tiny, smiles):
    process_or_value_error(tiny[1], smiles)


@FUZZ_SETTINGS
@given(smiles=mutated_smiles())
def test_mutated_real_smiles(tiny, smiles):
    process_or_value_error(tiny[1], smiles)


@pytest.mark.parametrize("smiles", [None, 3.5, b"CCO", [1, 2], {"smiles": "CCO"}])
def test_non_string_molecules(tiny, smiles):
    with pytest.raises(ValueError):
        tiny[1](text="<graph>", smiles=[smiles])
