"""A tiny LLaMo for CPUs: the real architecture at toy sizes, with the tokenizer shipped in `assets/tokenizer`.

Used by the tests and the CPU training run. From Python:

    from llamo.tiny import build_tiny_llamo
    model, processor = build_tiny_llamo()          # random weights, ~0.5M parameters

or as a saved folder that loads with `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`:

    llamo-tiny --output_dir tiny-llamo [--projector_type multilevel]
"""

from __future__ import annotations

import argparse
import pathlib

from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

from configuration_llamo import PROJECTOR_TYPES, LlamoConfig
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor


TOKENIZER_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "tokenizer"

TINY_TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
TINY_GRAPH_CONFIG = dict(gnn_num_layers=5, gnn_hidden_size=32, projector_num_heads=4, projector_mlp_depth=2)


def load_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The 2,048-token byte-level BPE trained on SMILES, IUPAC names and chemistry words (scripts/train_tiny_tokenizer.py)."""
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_llama_config(tokenizer: PreTrainedTokenizerBase, **sizes) -> LlamaConfig:
    """A Llama config with `tokenizer`'s vocabulary and special tokens, sized `TINY_TEXT_CONFIG` unless `sizes` say
    otherwise (the benchmarks' and the GPU check's larger shapes)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_TEXT_CONFIG, **sizes},
    )


def tiny_llamo_config(tokenizer: PreTrainedTokenizerBase, **overrides) -> LlamoConfig:
    """Tiny LlamoConfig matching `tokenizer`; keyword arguments override graph / projector fields."""
    text_config = tiny_llama_config(tokenizer)
    fields = {**TINY_GRAPH_CONFIG, **overrides}
    return LlamoConfig(text_config=text_config, graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"), **fields)


def build_tiny_llamo(seed: int = 0, **overrides) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """Randomly initialized tiny model and its processor (same `seed` -> same weights)."""
    from llamo.builder import build_llamo_from_config

    tokenizer = load_tiny_tokenizer()
    config = tiny_llamo_config(tokenizer, **overrides)
    return build_llamo_from_config(config.text_config, tokenizer, seed=seed, **{**TINY_GRAPH_CONFIG, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser(description="Save a randomly initialized tiny LLaMo (model + processor) to a folder.")
    parser.add_argument("--output_dir", type=pathlib.Path, required=True)
    parser.add_argument("--projector_type", choices=PROJECTOR_TYPES, default="multilevel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, processor = build_tiny_llamo(seed=args.seed, projector_type=args.projector_type)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print(f"saved a tiny LLaMo ({model.num_parameters():,} parameters) to {args.output_dir}")


if __name__ == "__main__":
    main()
