"""The graph-input schema (`GRAPH_INPUTS`): one definition that the featurizer, the processor, the training data,
the collator and the model all follow."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import MOLECULES

from configuration_llamo import (
    ATOM_FEATURE_VOCAB_SIZES,
    BOND_FEATURE_VOCAB_SIZES,
    GRAPH_INPUT_NAMES,
    GRAPH_INPUTS,
    MOTIF_FEATURE_SIZE,
    MOTIF_INPUT_NAMES,
    LlamoConfig,
    num_molecules,
)
from featurization_llamo import collate_molecule_graphs, featurize_smiles, join_graph_inputs
from llamo.data import EMPTY_GRAPH_ROW, ENCODED_FEATURES
from modeling_llamo import LlamoForConditionalGeneration, LlamoModel, select_graph_molecules


def test_the_schema_names_are_the_public_graph_input_names():
    assert GRAPH_INPUT_NAMES == (
        "graph_node_features", "graph_edge_index", "graph_edge_features",
        "graph_node_batch", "graph_motif_features", "graph_motif_batch",
    )  # fmt: skip
    assert {spec.kind for spec in GRAPH_INPUTS} == {"features", "edge_index", "batch"}
    assert {spec.element for spec in GRAPH_INPUTS} == {"node", "edge", "motif"}


def test_widths_come_from_the_config_or_the_ogb_defaults():
    widths = {spec.name: spec.num_columns() for spec in GRAPH_INPUTS}
    assert widths == {
        "graph_node_features": len(ATOM_FEATURE_VOCAB_SIZES), "graph_edge_index": None,
        "graph_edge_features": len(BOND_FEATURE_VOCAB_SIZES), "graph_node_batch": None,
        "graph_motif_features": MOTIF_FEATURE_SIZE, "graph_motif_batch": None,
    }  # fmt: skip
    assert (len(ATOM_FEATURE_VOCAB_SIZES), len(BOND_FEATURE_VOCAB_SIZES), MOTIF_FEATURE_SIZE) == (9, 3, 73)
    config = LlamoConfig(motif_feature_size=11)
    shapes = {spec.name: spec.shape(config) for spec in GRAPH_INPUTS}
    assert shapes["graph_motif_features"] == (-1, 11) and shapes["graph_edge_index"] == (2, -1)
    assert shapes["graph_node_batch"] == (-1,) and shapes["graph_node_features"] == (-1, 9)


def test_every_input_but_the_motif_ones_is_required():
    assert tuple(spec.name for spec in GRAPH_INPUTS if not spec.required) == MOTIF_INPUT_NAMES
    assert MOTIF_INPUT_NAMES == ("graph_motif_features", "graph_motif_batch")


@pytest.mark.parametrize(
    "batch, count", [([], 0), ([0], 1), ([0, 0, 1, 2, 2], 3), (torch.tensor([0, 1, 1]), 2), (np.zeros(4, np.int64), 1)]
)
def test_num_molecules_reads_the_last_node(batch, count):
    assert num_molecules(batch) == count


def test_processor_output_follows_the_schema(tiny):
    _, processor = tiny
    config = tiny[0].config
    inputs = processor(text="<graph> and <graph>", smiles=[MOLECULES["aspirin"], MOLECULES["salt"]], return_tensors="pt")
    counts = {"node": 13 + 2, "edge": 2 * 13 + 0, "motif": int(inputs["graph_motif_batch"].numel())}
    for spec in GRAPH_INPUTS:
        tensor = inputs[spec.name]
        assert tensor.dtype == getattr(torch, spec.dtype), spec.name
        expected = tuple(counts[spec.element] if size == -1 else size for size in spec.shape(config))
        assert tuple(tensor.shape) == expected, spec.name


def test_an_empty_batch_keeps_every_shape():
    empty = join_graph_inputs([])
    assert {name: tuple(tensor.shape) for name, tensor in empty.items()} == {
        "graph_node_features": (0, 9), "graph_edge_index": (2, 0), "graph_edge_features": (0, 3),
        "graph_node_batch": (0,), "graph_motif_features": (0, 73), "graph_motif_batch": (0,),
    }  # fmt: skip
    assert collate_molecule_graphs([]).keys() == empty.keys()


def test_joining_parts_shifts_edges_by_nodes_and_ids_by_molecules():
    smiles = [MOLECULES["aspirin"], MOLECULES["methane"], MOLECULES["salt"], MOLECULES["caffeine"]]
    graphs = [featurize_smiles(s)[0] for s in smiles]
    whole = collate_molecule_graphs(graphs)
    # Two parts of two molecules each, stored as nested lists the way `datasets` gives them back.
    parts = [{name: tensor.tolist() for name, tensor in collate_molecule_graphs(graphs[i : i + 2]).items()} for i in (0, 2)]
    joined = join_graph_inputs(parts)
    for name in GRAPH_INPUT_NAMES:
        assert torch.equal(joined[name], whole[name]), name
    assert whole["graph_node_batch"].tolist() == [0] * 13 + [1] + [2, 2] + [3] * 14
    assert int(whole["graph_edge_index"].max()) == 13 + 1 + 2 + 14 - 1


def test_encoded_rows_store_every_graph_input():
    assert set(GRAPH_INPUT_NAMES) <= set(ENCODED_FEATURES) and set(EMPTY_GRAPH_ROW) == set(GRAPH_INPUT_NAMES)
    assert join_graph_inputs([EMPTY_GRAPH_ROW])["graph_edge_index"].shape == (2, 0)


def test_selection_returns_the_schema_and_drops_motifs_only_when_absent():
    graphs = [featurize_smiles(s)[0] for s in (MOLECULES["aspirin"], MOLECULES["benzene"])]
    inputs = collate_molecule_graphs(graphs)
    picked = select_graph_molecules(inputs, torch.tensor([1]))
    assert tuple(picked) == GRAPH_INPUT_NAMES
    without_motifs = {name: inputs[name] for name in GRAPH_INPUT_NAMES if "motif" not in name}
    assert tuple(select_graph_molecules(without_motifs, torch.tensor([1]))) == tuple(without_motifs)


@pytest.mark.parametrize("model_class", [LlamoModel, LlamoForConditionalGeneration])
def test_forward_signatures_take_exactly_the_schema(model_class):
    parameters = inspect.signature(model_class.forward).parameters
    assert [name for name in parameters if name.startswith("graph_")] == list(GRAPH_INPUT_NAMES)
