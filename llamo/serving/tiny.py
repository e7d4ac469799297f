"""A tiny LLaMo that vLLM's CPU attention accepts: head_dim 32 (the default tiny model's 16 is rejected)."""

from __future__ import annotations

from configuration_llamo import LlamoConfig
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor

from ..tiny import TINY_GRAPH_CONFIG, load_tiny_tokenizer, tiny_llama_config


# vLLM's CPU attention supports head sizes 32, 64, 80, 96, ... : 2 heads of 32 at the tiny width of 64.
SERVABLE_TEXT_OVERRIDES = dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def build_servable_tiny_llamo(seed: int = 0, **overrides) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """Randomly initialized tiny LLaMo (fp32, `seed` fixes the weights) with a vLLM-compatible head size."""
    import torch

    tokenizer = load_tiny_tokenizer()
    text_config = tiny_llama_config(tokenizer, **SERVABLE_TEXT_OVERRIDES)
    config = LlamoConfig(
        text_config=text_config, graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"), **{**TINY_GRAPH_CONFIG, **overrides}
    )
    torch.manual_seed(seed)
    model = LlamoForConditionalGeneration(config).eval()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    return model, LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=config.num_graph_tokens)
