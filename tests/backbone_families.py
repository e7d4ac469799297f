"""Tiny random causal LMs of many families, saved as checkpoint folders with a family-style tokenizer (no downloads).

Each folder looks like a Hub checkpoint of that family: its config (hidden 64, 2 layers), its weights as its own
class saves them (GPT-NeoX's `embed_out`, a GPT-2 base-model checkpoint without the `transformer.` prefix) and a
tokenizer built from the shipped tiny BPE with the family's special tokens and chat template (TRL ships the real
templates of Llama-3, Qwen, Gemma, Phi-3, Cohere; Llama-2 / Mistral get an [INST] template of ours).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_TOKENIZER = ROOT / "llamo" / "assets" / "tokenizer" / "tokenizer.json"
TRL_TEMPLATES = pathlib.Path(__import__("trl").__file__).parent / "chat_templates"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512)

# A Llama-2-chat / Mistral-instruct style template (no {% generation %} marks, unknown to TRL: LLaMo's layout is used).
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] "
    "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclass
class Family:
    name: str
    config_class: str
    config: dict
    special: dict  # bos / eos / pad / unk token strings (pad None: the tokenizer has none)
    template: str | None = None  # TRL template file name, "inst", or None
    extra_tokens: list[str] = field(default_factory=list)
    vocab_padding: int = 0  # unused embedding rows, as Qwen / Phi-3 pad their vocabularies
    save_base_model: bool = False  # a base-model checkpoint (keys without the causal-LM prefix)
    needed: str = ""  # what this family needed from LLaMo (the table of docs/training.md)
    expected_template: str = "llamo"  # "llamo" or "llm": which template `chat_template="auto"` picks


SENTENCE = dict(bos="<s>", eos="</s>", pad=None, unk="<unk>")
FAMILIES = [
    Family(
        "llama2",
        "LlamaConfig",
        dict(num_key_value_heads=4),
        SENTENCE,
        "inst",
        needed="reference layout; own [INST] template has no training marks: LLaMo's Llama-2 layout",
    ),
    Family(
        "llama3_tied",
        "LlamaConfig",
        dict(num_key_value_heads=2, tie_word_embeddings=True),
        dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None),
        "llama3",
        extra_tokens=["<|start_header_id|>", "<|end_header_id|>"],
        expected_template="llm",
        needed="tied head; own template via TRL's training version",
    ),
    Family(
        "qwen2",
        "Qwen2Config",
        dict(num_key_value_heads=2),
        dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None),
        "qwen2_5",
        extra_tokens=["<|im_start|>"],
        vocab_padding=30,
        expected_template="llm",
        needed="padded vocabulary (no resize); ChatML template",
    ),
    Family(
        "qwen3",
        "Qwen3Config",
        dict(num_key_value_heads=2, head_dim=16),
        dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None),
        "qwen3",
        extra_tokens=["<|im_start|>"],
        vocab_padding=30,
        expected_template="llm",
        needed="ChatML (thinking) template",
    ),
    Family(
        "opt",
        "OPTConfig",
        dict(ffn_dim=128, word_embed_proj_dim=64),
        dict(bos="</s>", eos="</s>", pad="<pad>", unk="<unk>"),
        needed="decoder.embed_tokens tie target",
    ),
    Family(
        "opt_350m",
        "OPTConfig",
        dict(ffn_dim=128, word_embed_proj_dim=32, do_layer_norm_before=False),
        dict(bos="</s>", eos="</s>", pad="<pad>", unk="<unk>"),
        needed="graph vectors and head at word_embed_proj_dim (32), not hidden_size (64)",
    ),
    Family(
        "gpt2",
        "GPT2Config",
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=512),
        dict(bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk=None),
        save_base_model=True,
        needed="base-model checkpoint without `transformer.`; Conv1D counted as linear; LoRA on c_attn",
    ),
    Family(
        "gpt_neox",
        "GPTNeoXConfig",
        dict(tie_word_embeddings=False),
        dict(bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk=None),
        needed="checkpoint `embed_out` -> lm_head (its class's conversion); LoRA on query_key_value",
    ),
    Family(
        "gemma",
        "GemmaConfig",
        dict(num_key_value_heads=1, head_dim=16),
        dict(bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>"),
        "gemma",
        extra_tokens=["<start_of_turn>", "<end_of_turn>"],
        expected_template="llm",
        needed="scaled embeddings; Gemma turns template",
    ),
    Family(
        "gemma2",
        "Gemma2Config",
        dict(num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0),
        dict(bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>"),
        "gemma",
        extra_tokens=["<start_of_turn>", "<end_of_turn>"],
        expected_template="llm",
        needed="final_logit_softcapping (2.0 here so it matters)",
    ),
    Family(
        "gemma3",
        "Gemma3TextConfig",
        dict(num_key_value_heads=2, head_dim=16, sliding_window=8),
        dict(bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>"),
        "gemma3",
        extra_tokens=["<start_of_turn>", "<end_of_turn>"],
        expected_template="llm",
        needed="sliding-window layers; Gemma-3 template",
    ),
    Family("mistral", "MistralConfig", dict(num_key_value_heads=2), SENTENCE, "inst", needed="[INST] template: LLaMo's layout"),
    Family(
        "phi3",
        "Phi3Config",
        dict(num_key_value_heads=4, pad_token_id=None),
        dict(bos="<s>", eos="<|end|>", pad=None, unk="<unk>"),
        "phi3",
        extra_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        vocab_padding=10,
        expected_template="llm",
        needed="fused qkv_proj for LoRA; Phi-3 template",
    ),
    Family(
        "phi2",
        "PhiConfig",
        dict(),
        dict(bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk=None),
        needed="lm_head bias; LoRA on q_proj/v_proj (dense output)",
    ),
    Family(
        "falcon",
        "FalconConfig",
        dict(),
        dict(bos=">>ABSTRACT<<", eos="<|endoftext|>", pad=None, unk=None),
        needed="fused query_key_value for LoRA",
    ),
    Family(
        "granite",
        "GraniteConfig",
        dict(num_key_value_heads=2, logits_scaling=4.0, embedding_multiplier=2.0),
        dict(bos="<|end_of_text|>", eos="<|end_of_text|>", pad="<|pad|>", unk=None),
        needed="logits divided by logits_scaling",
    ),
    Family(
        "cohere",
        "CohereConfig",
        dict(num_key_value_heads=2, logit_scale=0.25),
        dict(bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", pad="<PAD>", unk=None),
        needed="logits times logit_scale",
    ),
    Family(
        "mixtral",
        "MixtralConfig",
        dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02),
        SENTENCE,
        "inst",
        needed="MoE: router logits passed through, load-balancing loss counted",
    ),
    Family(
        "qwen3_moe",
        "Qwen3MoeConfig",
        dict(
            num_key_value_heads=2,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            router_aux_loss_coef=0.02,
        ),
        dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None),
        "qwen3",
        extra_tokens=["<|im_start|>"],
        vocab_padding=30,
        expected_template="llm",
        needed="MoE (`num_experts`); its own load-balancing loss function",
    ),
]
FAMILY_NAMES = [family.name for family in FAMILIES]


def family_config(family: Family, vocab_size: int, tokenizer) -> transformers.PreTrainedConfig:
    config_class = getattr(transformers, family.config_class)
    values = {**TINY, **family.config}
    if family.config_class in ("GPT2Config",):
        values = {key: value for key, value in values.items() if key not in TINY} | family.config
    if family.config_class == "FalconConfig":
        values.pop("intermediate_size")
        values["ffn_hidden_size"] = 128
    ids = {
        f"{kind}_token_id": tokenizer.convert_tokens_to_ids(token) if token else None
        for kind, token in (("bos", family.special["bos"]), ("eos", family.special["eos"]), ("pad", family.special["pad"]))
    }
    return config_class(vocab_size=vocab_size, **{**ids, **values})


def family_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """The shipped tiny BPE with this family's special tokens and chat template (no `<graph>`: the builder adds it)."""
    backend = Tokenizer.from_file(str(TINY_TOKENIZER))
    special = {f"{kind}_token": token for kind, token in family.special.items() if token}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    tokenizer.add_special_tokens({"additional_special_tokens": list(family.extra_tokens)}, replace_extra_special_tokens=False)
    if family.template == "inst":
        tokenizer.chat_template = INST_TEMPLATE
    elif family.template is not None:
        tokenizer.chat_template = (TRL_TEMPLATES / f"{family.template}.jinja").read_text(encoding="utf-8")
    return tokenizer


def save_family_checkpoint(family: Family, folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random tiny model of `family` and its tokenizer, saved as that family's checkpoint folder."""
    tokenizer = family_tokenizer(family)
    config = family_config(family, len(tokenizer) + family.vocab_padding, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random heads with larger weights than the 0.02 init, so head transforms (scales, soft-caps) change the logits.
    with torch.no_grad():
        for parameter in model.get_output_embeddings().parameters():
            parameter.normal_(0.0, 1.0)
    (model.base_model if family.save_base_model else model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
