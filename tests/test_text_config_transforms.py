"""The language model's embedding and logit transforms (`TEXT_CONFIG_TRANSFORMS`): one table that says what LLaMo's
head applies (`apply_head_semantics`) and what the vLLM export refuses (`check_servable`)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import LlamaConfig

from configuration_llamo import TEXT_CONFIG_TRANSFORMS, LlamoConfig, set_text_config_transforms
from llamo.serving.export import check_servable
from modeling_llamo import apply_head_semantics


LOGITS = torch.linspace(-8, 8, 34).reshape(1, 2, 17)


def text_config(model_type: str = "llama", **fields) -> LlamaConfig:
    config = LlamaConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=17)
    for name, value in fields.items():
        setattr(config, name, value)
    config.model_type = model_type
    return config


def test_the_table_names_each_field_once_with_a_known_effect():
    fields = [transform.field for transform in TEXT_CONFIG_TRANSFORMS]
    assert len(fields) == len(set(fields))
    assert {transform.effect for transform in TEXT_CONFIG_TRANSFORMS} <= {"scale", "inverse_scale", "softcap", "embeddings", None}


@pytest.mark.parametrize(
    "fields, model_type, expected",
    [
        ({"logit_scale": 0.25}, "cohere", LOGITS * 0.25),
        ({"output_multiplier": 0.5}, "llama", LOGITS * 0.5),
        ({"lm_head_multiplier": 3.0}, "falcon_h1", LOGITS * 3.0),
        ({"logits_scaling": 4.0}, "granite", LOGITS * (1 / 4.0)),
        ({"logits_scaling": 4.0}, "hyperclovax", LOGITS * 4.0),
        ({"final_logit_softcapping": 2.0}, "gemma2", torch.tanh(LOGITS / 2.0) * 2.0),
        # the first scale set in table order wins, as TRL reads it; the soft-cap comes after the scale
        ({"logits_scaling": 4.0, "logit_scale": 0.5, "final_logit_softcapping": 2.0}, "llama", torch.tanh(LOGITS * 0.5 / 2.0) * 2.0),
        ({"output_multiplier": 1.0, "logits_scaling": 4.0}, "llama", LOGITS),  # a neutral first scale is still the first
        # embedding multipliers act inside the language model; Phi-3-small's width multiplier is not reproduced
        ({"embedding_multiplier": 2.0, "scale_emb": 3.0, "mup_width_multiplier": 5.0}, "llama", LOGITS),
    ],
)  # fmt: skip
def test_the_head_applies_the_tables_logit_transforms(fields, model_type, expected):
    for config in (text_config(model_type, **fields), types.SimpleNamespace(model_type=model_type, **fields)):
        torch.testing.assert_close(apply_head_semantics(LOGITS, config), expected, rtol=0, atol=0)


def test_a_config_without_transforms_leaves_the_logits_untouched_and_is_read_afresh_each_call():
    config = text_config(logits_scaling=1.0)
    assert apply_head_semantics(LOGITS, config) is LOGITS  # no tensor work
    config.logit_scale = 0.5  # edited after a first call (a later decoding step sees it)
    torch.testing.assert_close(apply_head_semantics(LOGITS, config), LOGITS * 0.5, rtol=0, atol=0)


class AliasedConfig(LlamaConfig):
    """A config that holds a transform under another name (`attribute_map`) and computes one (a property)."""

    attribute_map = {"logit_scale": "my_logit_scale"}

    @property
    def final_logit_softcapping(self) -> float:
        return 3.0


def test_the_fast_read_gives_what_getattr_gives():
    aliased = AliasedConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=17)
    aliased.my_logit_scale = 0.5
    for config in (text_config(), text_config(logits_scaling=4.0, embedding_multiplier=None, scale_emb=2.0), aliased):
        expected = {t: getattr(config, t.field) for t in TEXT_CONFIG_TRANSFORMS if getattr(config, t.field, None) is not None}
        assert set_text_config_transforms(config) == expected
    assert {t.field for t in set_text_config_transforms(aliased)} == {"logit_scale", "final_logit_softcapping"}


@pytest.mark.parametrize("transform", TEXT_CONFIG_TRANSFORMS, ids=lambda transform: transform.field)
def test_the_export_refuses_exactly_the_transforms_the_table_does_not_mark_exportable(transform):
    base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 64}  # fmt: skip
    settings = {"gnn_num_layers": 1, "gnn_hidden_size": 8, "projector_num_heads": 2, "graph_token_id": 1}
    check_servable(LlamoConfig(text_config={**base, transform.field: transform.neutral}, **settings))
    config = LlamoConfig(text_config={**base, transform.field: 0.5}, **settings)
    if transform.exportable:
        check_servable(config)
    else:
        with pytest.raises(ValueError, match=f"sets {transform.field}=0.5"):
            check_servable(config)


def test_the_export_names_every_refused_transform():
    config = LlamoConfig(
        text_config={"model_type": "granite", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64, "logits_scaling": 8.0, "embedding_multiplier": 12.0},
        gnn_num_layers=1, gnn_hidden_size=8, projector_num_heads=2, graph_token_id=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="sets logits_scaling=8.0, embedding_multiplier=12.0"):
        check_servable(config)
