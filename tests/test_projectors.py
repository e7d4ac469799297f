"""Projectors behind one interface and one table (`projectors_llamo.PROJECTOR_SPECS`, which the configuration reads):
every projector makes the tokens, reads the inputs and returns the attention its spec says, and a new one is one
class and one table line."""

from __future__ import annotations

import pytest
import torch
from conftest import MOLECULES
from torch import nn
from torch_geometric.nn import global_mean_pool

import configuration_llamo
from configuration_llamo import LlamoConfig
from llamo.tiny import build_tiny_llamo
from projectors_llamo import (
    PROJECTOR_SPECS,
    PROJECTOR_TYPES,
    LlamoGraphOutput,
    LlamoGraphTokenHead,
    LlamoProjector,
    ProjectorSpec,
)


GRAPH_TYPES = [name for name, spec in PROJECTOR_SPECS.items() if spec.uses_graph]


def test_one_table_names_every_projector_type_and_its_module():
    assert configuration_llamo.PROJECTOR_SPECS is PROJECTOR_SPECS  # the configuration reads the same table
    assert tuple(PROJECTOR_SPECS) == PROJECTOR_TYPES
    assert PROJECTOR_TYPES[0] == "multilevel"
    assert set(GRAPH_TYPES) == set(PROJECTOR_TYPES) - {"none"} and PROJECTOR_SPECS["none"].projector is None
    assert all(issubclass(PROJECTOR_SPECS[name].projector, LlamoProjector) for name in GRAPH_TYPES)


@pytest.fixture(scope="module")
def molecules():
    return [MOLECULES["aspirin"], MOLECULES["methane"], MOLECULES["caffeine"]]


@pytest.mark.parametrize("projector_type", GRAPH_TYPES)
def test_each_projector_does_what_its_spec_says(projector_type, molecules):
    model, processor = build_tiny_llamo(seed=0, projector_type=projector_type)
    model.eval()
    config, spec = model.config, PROJECTOR_SPECS[projector_type]
    inputs = processor(text="<graph> <graph> <graph>", smiles=molecules, return_tensors="pt")
    graph_inputs = {name: value for name, value in inputs.items() if name.startswith("graph_")}
    with torch.no_grad():
        output = model.get_graph_features(**graph_inputs, output_attentions=True)
    atoms = torch.bincount(graph_inputs["graph_node_batch"]).tolist()
    per_molecule = [config.num_graph_tokens] * 3 if config.num_graph_tokens is not None else atoms
    assert output.graph_features.shape == (sum(per_molecule), config.text_config.hidden_size)
    assert output.graph_features.shape[0] == int((inputs["input_ids"] == config.graph_token_id).sum())
    assert (output.motif_attentions is not None) == spec.uses_motifs
    expected_levels = {"all": config.num_graph_levels, "last": 1, None: None}[spec.attention_levels]
    assert (output.level_attentions.shape[1] if output.level_attentions is not None else None) == expected_levels
    if spec.uses_motifs:
        without_motifs = {name: value for name, value in graph_inputs.items() if "motif" not in name}
        with pytest.raises(ValueError, match="functional-group motifs"):
            model.get_graph_features(**without_motifs)


@pytest.mark.parametrize("projector_type", ["multilevel", "resampler"])
def test_each_projector_initializes_its_own_queries(projector_type):
    model, _ = build_tiny_llamo(seed=0, projector_type=projector_type, query_init_std=3.0)
    queries = [param for name, param in model.model.projector.named_parameters(recurse=False)]
    assert queries and all(abs(float(param.detach().std()) - 3.0) < 0.6 for param in queries)


def test_a_new_projector_is_one_class_and_one_table_line(monkeypatch, molecules):
    """The extension path: a `LlamoProjector` subclass and its `ProjectorSpec` line; the configuration (token count),
    the processor (slots) and the model (build, init, forward) follow, nothing else changes."""

    class MeanPoolProjector(LlamoProjector):
        """Two tokens per molecule: the mean of the first and of the last GNN level."""

        def __init__(self, config: LlamoConfig):
            super().__init__(config)
            self.scale = nn.Parameter(torch.empty(1))
            self.head = LlamoGraphTokenHead(config.gnn_hidden_size, config)

        def init_projector_weights(self, config):
            nn.init.ones_(self.scale)

        def forward(self, levels, node_batch, num_molecules, motif_features=None, motif_batch=None, output_attentions=False):
            pooled = [global_mean_pool(level, node_batch, size=num_molecules) for level in (levels[0], levels[-1])]
            tokens = torch.stack(pooled, dim=1) * self.scale
            return LlamoGraphOutput(graph_features=self.head(tokens).flatten(0, 1), node_states=levels)

    monkeypatch.setitem(PROJECTOR_SPECS, "mean_pool", ProjectorSpec(MeanPoolProjector, "mean of two levels", lambda c: 2))
    model, processor = build_tiny_llamo(seed=0, projector_type="mean_pool")
    model.eval()
    assert isinstance(model.model.projector, MeanPoolProjector) and float(model.model.projector.scale.detach()) == 1.0
    inputs = processor(text="Compare <graph> with <graph> and <graph>.", smiles=molecules, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.graph_token_id).sum()) == 3 * 2
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
