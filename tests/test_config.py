"""LlamoConfig: the released defaults, derived token counts, validation, any causal LM inside."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, OPTConfig, Qwen2Config

from configuration_llamo import PROJECTOR_TYPES, LlamoConfig
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration


def test_defaults_are_the_released_llamo():
    config = LlamoConfig()
    assert (config.gnn_num_layers, config.gnn_hidden_size, config.gnn_dropout) == (5, 300, 0.0)
    assert config.atom_feature_vocab_sizes == [119, 5, 12, 12, 10, 6, 6, 2, 2]
    assert config.bond_feature_vocab_sizes == [5, 6, 2]
    assert (config.num_query_tokens_per_level, config.num_motif_query_tokens, config.projector_num_heads) == (4, 4, 4)
    assert (config.motif_feature_size, config.projector_mlp_depth, config.projector_hidden_act) == (73, 6, "silu")
    assert config.projector_type == "multilevel" and config.motif_tokens_first and config.share_level_cross_attention
    assert config.num_graph_levels == 6 and config.num_graph_tokens == 28
    assert isinstance(config.text_config, LlamaConfig)


@pytest.mark.parametrize(
    "projector_type, tokens",
    [
        ("multilevel", 28),
        ("multilevel_no_motif", 24),
        ("resampler", 28),
        ("mlp_low", None),
        ("mlp_high", None),
        ("mlp_concat", None),
        ("none", 0),
    ],
)
def test_graph_tokens_per_projector_type(projector_type, tokens):
    assert LlamoConfig(projector_type=projector_type).num_graph_tokens == tokens


def test_token_count_follows_the_sizes():
    assert LlamoConfig(gnn_num_layers=3, num_query_tokens_per_level=2, num_motif_query_tokens=5).num_graph_tokens == 4 * 2 + 5


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"projector_type": "qformer"}, "projector_type must be one of"),
        ({"gnn_hidden_size": 30, "projector_num_heads": 4}, "divisible by projector_num_heads"),
        ({"gnn_num_layers": 0}, "must be positive"),
        ({"projector_mlp_depth": 0}, "at least 1"),
        ({"atom_feature_vocab_sizes": [119, 5]}, "9 atom and 3 bond"),
    ],
)
def test_invalid_values_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        LlamoConfig(**fields)


def test_round_trip_through_json(tmp_path):
    config = LlamoConfig(
        text_config={
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        },
        projector_type="resampler",
        gnn_hidden_size=64,
        motif_tokens_first=False,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert loaded.text_config.hidden_size == 64 and loaded.get_text_config() is loaded.text_config


@pytest.mark.parametrize(
    "text_config",
    [
        OPTConfig(vocab_size=300, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32),
        Qwen2Config(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    ],
    ids=["opt", "qwen2"],
)
def test_any_causal_language_model_can_be_the_text_model(text_config):
    config = LlamoConfig(text_config=text_config, gnn_hidden_size=16, projector_mlp_depth=2, graph_token_id=299)
    model = LlamoForConditionalGeneration(config)
    ids = torch.tensor([[5, 6] + [299] * 28 + [7]])
    graph = dict(
        graph_node_features=torch.zeros(2, 9, dtype=torch.long),
        graph_edge_index=torch.tensor([[0, 1], [1, 0]]),
        graph_edge_features=torch.zeros(2, 3, dtype=torch.long),
        graph_node_batch=torch.zeros(2, dtype=torch.long),
        graph_motif_features=torch.zeros(0, 73),
        graph_motif_batch=torch.zeros(0, dtype=torch.long),
    )
    out = model(input_ids=ids, labels=ids, **graph)
    assert out.logits.shape == (1, 31, 300) and torch.isfinite(out.loss)


def test_tiny_model_is_the_same_code_at_a_small_size():
    model, processor = build_tiny_llamo()
    assert model.num_parameters() < 1_000_000
    assert processor.num_graph_tokens == model.config.num_graph_tokens == 28
    assert set(PROJECTOR_TYPES) == {"multilevel", "multilevel_no_motif", "mlp_low", "mlp_high", "mlp_concat", "resampler", "none"}
