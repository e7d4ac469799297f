"""A tiny LLaMo that vLLM's CPU attention accepts: head_dim 32 (the default tiny model's 16 is rejected)."""

from __future__ import annotations

from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor

from ..builder import build_llamo_from_config
from ..tiny import TINY_GRAPH_CONFIG, load_tiny_tokenizer, tiny_llama_config


# vLLM's CPU attention supports head sizes 32, 64, 80, 96, ... : 2 heads of 32 at the tiny width of 64.
SERVABLE_TEXT_OVERRIDES = dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def build_servable_tiny_llamo(seed: int = 0, **overrides) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """`llamo.tiny.build_tiny_llamo` with a vLLM-compatible head size: randomly initialized (fp32, `seed` fixes the
    weights, eval mode); keyword arguments override graph / projector fields."""
    tokenizer = load_tiny_tokenizer()
    text_config = tiny_llama_config(tokenizer, **SERVABLE_TEXT_OVERRIDES)
    model, processor = build_llamo_from_config(text_config, tokenizer, seed=seed, **{**TINY_GRAPH_CONFIG, **overrides})
    return model.eval(), processor
