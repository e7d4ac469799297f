"""Inconsistent model inputs raise a ValueError that says what is wrong (issue 18 problem 9, issue 16 item 3)."""

from __future__ import annotations

import pytest
import torch
from conftest import MOLECULES

from modeling_llamo import check_graph_inputs


def two_molecule_inputs(processor):
    return processor(text="<graph> and <graph>", smiles=[MOLECULES["aspirin"], MOLECULES["caffeine"]], return_tensors="pt")


def graph_only(inputs) -> dict[str, torch.Tensor]:
    return {name: value for name, value in inputs.items() if name.startswith("graph_")}


def test_valid_inputs_pass_and_give_finite_logits(tiny):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    check_graph_inputs(model.config, inputs["input_ids"], graph_only(inputs))
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_slots_without_graph_inputs_say_how_to_build_inputs(tiny):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    text_only = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    for call in (lambda: model(**text_only), lambda: model.generate(**text_only, max_new_tokens=2)):
        with pytest.raises(ValueError, match=r"56 graph-token slots .* but no graph inputs were given.*LlamoProcessor"):
            call()


def test_graph_inputs_without_slots_are_refused(tiny):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    plain = processor(text="no molecule here", return_tensors="pt")
    with pytest.raises(ValueError, match="0 graph-token slots .* 56 graph vectors"):
        model(input_ids=plain["input_ids"], **graph_only(inputs))


def test_generation_after_prefill_is_not_mistaken_for_missing_graph_inputs(tiny):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def corrupt(inputs, name, value):
    graph = graph_only(inputs)
    graph[name] = value(graph[name].clone())
    return graph


CORRUPTIONS = {
    "interleaved molecule index": ("graph_node_batch", lambda t: t.flip(0), "must number the molecules 0, 1, 2"),
    "index not starting at 0": ("graph_node_batch", lambda t: t + 1, "must number the molecules 0, 1, 2"),
    "NaN motif features": ("graph_motif_features", lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN or infinite"),
    "int32 edge_index": (
        "graph_edge_index",
        lambda t: t.int(),
        r"graph_edge_index must be torch.long \(int64\), got torch.int32",
    ),
    "edge beyond the atoms": (
        "graph_edge_index",
        lambda t: t.index_fill(1, torch.tensor([0]), 10_000),
        "must index the 27 atoms",
    ),
    "negative edge": ("graph_edge_index", lambda t: t.index_fill(1, torch.tensor([0]), -1), "must index the 27 atoms"),
    "atom feature out of vocabulary": (
        "graph_node_features",
        lambda t: t.index_fill(1, torch.tensor([0]), 119),
        r"graph_node_features\[:, 0\] .* 0..118",
    ),
    "bond feature out of vocabulary": (
        "graph_edge_features",
        lambda t: t.index_fill(1, torch.tensor([2]), 7),
        r"graph_edge_features\[:, 2\] .* 0..1",
    ),
    "wrong feature width": ("graph_node_features", lambda t: t[:, :8], r"shape \(27, 8\), expected \(num_atoms, 9\)"),
    "motif of a missing molecule": ("graph_motif_batch", lambda t: t + 5, "sorted molecule indices below 2"),
    "float node features": ("graph_node_features", lambda t: t.float(), "must be torch.long"),
    "integer motif features": ("graph_motif_features", lambda t: t.long(), "graph_motif_features must be a float tensor"),
    "edge_index with 3 rows": (
        "graph_edge_index",
        lambda t: t[[0, 1, 0]],
        r"graph_edge_index has shape \(3, 56\), expected \(2, num_edges\)",
    ),
    "bond features of an edge too few": (
        "graph_edge_features",
        lambda t: t[1:],
        r"shape \(55, 3\), expected \(num_edges, 3\) = \(56, 3\)",
    ),
    "molecule index of an atom too few": (
        "graph_node_batch",
        lambda t: t[1:],
        r"shape \(26,\), expected \(num_atoms,\) = \(27,\)",
    ),
    "molecule index of a motif too many": (
        "graph_motif_batch",
        lambda t: t.repeat(2),
        r"graph_motif_batch has shape .*expected \(num_motifs,\)",
    ),
    "0-d node features": (
        "graph_node_features",
        lambda t: t[0, 0],
        r"graph_node_features has shape \(\), expected \(num_atoms, 9\)",
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupted_graph_inputs_raise_a_clear_value_error(tiny, case):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    name, change, message = CORRUPTIONS[case]
    with pytest.raises(ValueError, match=message):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **corrupt(inputs, name, change))


def test_zero_atoms_and_missing_tensors_are_value_errors(tiny):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    empty = {
        "graph_node_features": torch.zeros((0, 9), dtype=torch.long), "graph_edge_index": torch.zeros((2, 0), dtype=torch.long),
        "graph_edge_features": torch.zeros((0, 3), dtype=torch.long), "graph_node_batch": torch.zeros(0, dtype=torch.long),
    }  # fmt: skip
    with pytest.raises(ValueError, match="zero atoms"):
        model(input_ids=inputs["input_ids"], **empty)
    partial = graph_only(inputs)
    del partial["graph_edge_index"]
    with pytest.raises(ValueError, match="incomplete graph inputs: graph_edge_index missing"):
        model(input_ids=inputs["input_ids"], **partial)


def test_value_checks_are_skipped_while_compiling(tiny, monkeypatch):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    graph = corrupt(inputs, "graph_node_batch", lambda t: t.flip(0))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_graph_inputs(model.config, inputs["input_ids"], graph)  # no host sync: no value check
    graph["graph_edge_index"] = graph["graph_edge_index"].int()
    with pytest.raises(ValueError, match="torch.long"):  # dtype checks cost nothing and still run
        check_graph_inputs(model.config, inputs["input_ids"], graph)


def test_motif_inputs_are_optional_but_a_motif_reading_model_needs_their_molecule_index(tiny):
    model, processor = tiny
    inputs = two_molecule_inputs(processor)
    graph = graph_only(inputs)
    lone_features = {name: value for name, value in graph.items() if name != "graph_motif_batch"}
    assert model.config.uses_motifs
    with pytest.raises(ValueError, match="incomplete graph inputs: graph_motif_batch missing"):
        check_graph_inputs(model.config, inputs["input_ids"], lone_features)
    # A projector without motif queries ignores motif inputs: none, or features without their index (once a KeyError).
    no_motifs = type(model.config).from_dict({**model.config.to_dict(), "projector_type": "multilevel_no_motif"})
    assert not no_motifs.uses_motifs
    check_graph_inputs(no_motifs, inputs["input_ids"], lone_features)
    check_graph_inputs(no_motifs, inputs["input_ids"], {name: value for name, value in graph.items() if "motif" not in name})
    # ... and does not check the width of motif features, which only the motif projectors read.
    check_graph_inputs(no_motifs, inputs["input_ids"], {**graph, "graph_motif_features": graph["graph_motif_features"][:, :5]})
