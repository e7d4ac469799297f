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


# ---------------------------------------------------------------------------------------------------------------
# The classes of issue 18, fuzzed in a child process: a crash (SIGSEGV in RDKit) is a failed test naming the input,
# not a dead test runner. Each input is written to a log before it is tried, so the parent can name the killer.

HARNESS = r"""
import json, sys, time
from hypothesis import HealthCheck, given, settings, strategies as st
from llamo.tiny import build_tiny_llamo

_, processor = build_tiny_llamo(seed=0)
log = open(sys.argv[1], "w", buffering=1)
stats = {"calls": 0, "accepted": 0, "refused": 0, "slowest_s": 0.0, "longest_message": 0}

def check(smiles):
    log.write(ascii(smiles[:200]) + f" ({len(smiles)} characters)\n")
    started = time.perf_counter()
    try:
        inputs = processor(text="<graph> What is it?", smiles=[smiles])
        assert inputs["input_ids"][0].count(processor.graph_token_id) == processor.num_graph_tokens
        stats["accepted"] += 1
    except ValueError as error:
        stats["refused"] += 1
        stats["longest_message"] = max(stats["longest_message"], len(str(error)))
    stats["calls"] += 1
    stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - started)

def run(strategy, examples):
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(smiles):
        check(smiles)
    fuzz()

any_character = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None)  # surrogates and controls too
real = st.sampled_from(["CCO", "O", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "[Na+].[Cl-]", "N.N.Cl[Pt]Cl"])
run(st.text(any_character, max_size=40), 150)  # garbage, non-ASCII, NUL, lone surrogates
run(st.tuples(st.text(any_character, min_size=1, max_size=3), real, st.text(any_character, max_size=3)).map("".join), 80)
run(st.integers(0, 1000).map(lambda n: f"[#{n}]"), 40)  # atomic numbers RDKit has no element for
run(st.integers(1, 30_000).map(lambda n: "C" * n), 25)  # chains: MolToSmiles overflowed at ~19,000 atoms
run(st.integers(1, 30_000).map(lambda n: "C(" * n + "C" + ")" * n), 25)  # nested branches
run(st.integers(20_000, 2_000_000).map(lambda n: "C" * n), 10)  # megabytes: refused before RDKit
print(json.dumps(stats))
"""


def test_processor_survives_the_issue_18_input_classes_in_a_child_process(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    log = tmp_path / "inputs.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", HARNESS, str(log)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    last = log.read_text().splitlines()[-1:] if log.exists() else []
    assert result.returncode == 0, f"child died with {result.returncode} on input {last}: {result.stderr[-1500:]}"
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["calls"] >= 300 and stats["accepted"] > 0 and stats["refused"] > 0
    assert stats["longest_message"] < 400  # no input echoed whole
    assert stats["slowest_s"] < 10, stats  # nothing freezes (a 1 MB SMILES took 12-24 s of CPU before)
