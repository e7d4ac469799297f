"""Build a new LLaMo around any causal language model: the one recipe behind `train_sft.py --llm`, the tiny CPU
model, the benchmarks' models and the converter's tokenizer.

    model, processor = build_llamo("Qwen/Qwen3-0.6B", projector_type="multilevel", chat_template="auto")

The LLM is loaded by its own causal-LM class (`AutoModelForCausalLM`), so transformers applies that family's
checkpoint conversions (GPT-NeoX `embed_out` -> `lm_head`, ...) and base-model prefix handling (GPT-2 checkpoints
saved without `transformer.`). Its base model and head then become LLaMo's `model.language_model` and `lm_head`
through a state dict: every key must land, and only the graph encoder and projector may start from scratch.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging

from configuration_llamo import LlamoConfig
from llamo.saving import make_inference_ready
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import DEFAULT_CHAT_TEMPLATE, LlamoProcessor


logger = logging.get_logger(__name__)

ChatTemplateChoice = Literal["auto", "llamo", "llm"]
CHAT_TEMPLATE_CHOICES = ("auto", "llamo", "llm")
GRAPH_TOKEN = "<graph>"
# LLaMo parts that a new model initializes; every other key must come from the LLM.
GRAPH_PARTS = ("model.graph_encoder.", "model.projector.")
# Linear layers as PEFT sees them: GPT-2 family models use transformers' Conv1D (a transposed Linear).
LINEAR_TYPES = (nn.Linear, Conv1D)


class FidelityError(ValueError):
    """The built LLaMo is not the LLM it was built around (weights missing or left over, or different logits)."""


def build_llamo(
    llm: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    projector_type: str = "multilevel",
    config_overrides: dict | None = None,
    dtype: str | torch.dtype = "auto",
    chat_template: ChatTemplateChoice = "auto",
    check_fidelity: bool = True,
    seed: int | None = None,
    attn_implementation: str | None = None,
    revision: str = "main",
    trust_remote_code: bool = False,
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """A new LLaMo whose language model and head are `llm`'s weights; the GIN and projector start from scratch.

    Args:
        llm: Hub id or folder of a decoder-only causal LM (encoder / encoder-decoder models are refused).
        tokenizer: the LLM's tokenizer (default: loaded from `llm`). It gets `<graph>` (and `<pad>` if it has none).
        projector_type, config_overrides: `LlamoConfig` fields of the graph side.
        dtype: weights dtype, as in `from_pretrained` (the GIN and the projector's LayerNorm stay fp32).
        chat_template: `"auto"` the LLM's own template made to mark assistant turns (`{% generation %}`), LLaMo's
            Llama-2 layout when the LLM has none or it cannot be marked; `"llm"` the LLM's own or an error;
            `"llamo"` LLaMo's Llama-2 layout (parity with the original).
        check_fidelity: compare the built model's text-only logits with the LLM's on a few token sequences.
        seed: seed of the graph side's initialization.
        attn_implementation: the language model's attention (`"sdpa"`, `"flash_attention_2"`, ...; default: transformers').
        revision, trust_remote_code: as in `from_pretrained`, for the LLM's config, weights and tokenizer.
    """
    hub = {"revision": revision, "trust_remote_code": trust_remote_code}
    if chat_template not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat_template must be one of {CHAT_TEMPLATE_CHOICES}, got {chat_template!r}")
    check_causal_lm_config(AutoConfig.from_pretrained(llm, **hub), llm)
    causal_lm, info = AutoModelForCausalLM.from_pretrained(
        llm, dtype=dtype, output_loading_info=True, attn_implementation=attn_implementation, **hub
    )
    problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        raise FidelityError(f"{llm}: its own causal-LM class does not load its checkpoint cleanly: {problems}")
    causal_lm.eval()
    # Under DeepSpeed ZeRO-3 (`zero.Init`) the parameters are partitioned across ranks: a forward outside the engine
    # cannot run, so the logit checks are left to a build without DeepSpeed; the key-by-key checks still run.
    partitioned = is_deepspeed_zero3_enabled()
    if partitioned:
        logger.warning("building under DeepSpeed ZeRO-3: the causal-attention and logit checks are skipped")
    else:
        check_attends_causally(causal_lm, llm)

    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(llm, **hub)
    add_llamo_tokens(tokenizer)
    config = LlamoConfig(
        text_config=causal_lm.config.to_dict(),
        graph_token_id=tokenizer.convert_tokens_to_ids(GRAPH_TOKEN),
        projector_type=projector_type,
        **(config_overrides or {}),
    )
    embedding_width = causal_lm.get_input_embeddings().embedding_dim
    if config.text_embedding_size != embedding_width:
        raise ValueError(
            f"{llm}: LlamoConfig.text_embedding_size is {config.text_embedding_size} but the LLM's input embeddings are "
            f"{embedding_width} wide; graph vectors must have the embeddings' width"
        )
    with gathered_parameters(causal_lm, partitioned):  # whole tensors while LLaMo loads them (and partitions again)
        model = wrap_language_model(causal_lm, config, seed)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)

    original_vocab = causal_lm.get_output_embeddings().out_features
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # grow only: a padded vocabulary (Qwen, Phi-3) already has rows for the new tokens
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    make_inference_ready(model)  # an LLM saved after training says `use_cache: false`; generation needs the cache
    if check_fidelity and not partitioned:
        check_text_logits(model, causal_lm, original_vocab, llm)
    del causal_lm

    template, source = choose_chat_template(tokenizer, chat_template)
    logger.info("LLaMo around %s: chat template %s", llm, source)
    processor = LlamoProcessor(tokenizer=tokenizer, chat_template=template, num_graph_tokens=config.num_graph_tokens)
    return model, processor


def build_llamo_from_config(
    text_config,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int | None = 0,
    chat_template: ChatTemplateChoice = "llamo",
    **overrides,
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """A randomly initialized LLaMo around a language model described by `text_config` (no weights to load: the
    tiny CPU model, the benchmarks' small model). `tokenizer` must already hold `<graph>`; `seed` fixes the weights."""
    add_llamo_tokens(tokenizer)
    config = LlamoConfig(text_config=text_config, graph_token_id=tokenizer.convert_tokens_to_ids(GRAPH_TOKEN), **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    # `_from_config`, not the constructor: under DeepSpeed ZeRO-3 it builds the whole model inside `zero.Init`.
    model = LlamoForConditionalGeneration._from_config(config)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    make_inference_ready(model)
    template, _ = choose_chat_template(tokenizer, chat_template)
    processor = LlamoProcessor(tokenizer=tokenizer, chat_template=template, num_graph_tokens=config.num_graph_tokens)
    return model, processor


def gathered_parameters(model: nn.Module, partitioned: bool):
    """DeepSpeed's gather of every parameter of `model` (ZeRO-3), or nothing to do."""
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def check_causal_lm_config(config, name: str) -> None:
    """Refuse encoder and encoder-decoder models (BERT, T5) with a clear message, before loading any weight."""
    if getattr(config, "is_encoder_decoder", False) or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(
            f"{name} is a {config.model_type!r} model, not a decoder-only causal LM: LLaMo puts graph tokens in front "
            "of a language model that predicts the next token (Llama, Qwen, Mistral, Gemma, OPT, GPT-2, ...)"
        )


@torch.no_grad()
def check_attends_causally(causal_lm: PreTrainedModel, name: str) -> None:
    """A causal LM's logits at a position do not depend on later tokens. BERT-style encoders have a causal-LM class
    too (`BertLMHeadModel`) but attend both ways unless configured as decoders: refuse them."""
    vocab = causal_lm.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, 6), generator=generator)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % vocab
    device = causal_lm.get_input_embeddings().weight.device
    first = causal_lm(input_ids=ids.to(device), use_cache=False).logits[0, :-1]
    second = causal_lm(input_ids=changed.to(device), use_cache=False).logits[0, :-1]
    # MoE experts batch tokens differently when one changes: allow rounding, not a different prediction
    if not torch.allclose(first.float(), second.float(), rtol=1e-3, atol=1e-4):
        raise ValueError(
            f"{name} ({type(causal_lm).__name__}) is not a causal LM: its predictions for earlier tokens change when a "
            "later token changes (a bidirectional encoder such as BERT). LLaMo needs a decoder-only language model."
        )


def add_llamo_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """`<graph>` as a special token, and `<pad>` when the tokenizer has no padding token."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if GRAPH_TOKEN not in tokenizer.all_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": [GRAPH_TOKEN]}, replace_extra_special_tokens=False)


def wrap_language_model(
    causal_lm: PreTrainedModel, config: LlamoConfig, seed: int | None = None
) -> LlamoForConditionalGeneration:
    """LLaMo holding `causal_lm`'s base model as `model.language_model` and its head as `lm_head`, loaded through
    `from_pretrained` (meta init, no second random LLM); any key that does not land is a `FidelityError`."""
    state_dict = {f"model.language_model.{key}": value for key, value in causal_lm.base_model.state_dict().items()}
    state_dict.update({f"lm_head.{key}": value for key, value in causal_lm.get_output_embeddings().state_dict().items()})
    if seed is not None:
        torch.manual_seed(seed)
    # The graph side is expected to be missing: transformers' load report would list it as a warning.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, info = LlamoForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state_dict, dtype=causal_lm.dtype, output_loading_info=True
        )
    finally:
        logging.set_verbosity(verbosity)
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(GRAPH_PARTS))
    unexpected = sorted(info["unexpected_keys"])
    mismatched = sorted(str(item) for item in info.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        raise FidelityError(
            f"the LLM's weights do not fit LLaMo's language model: missing {missing}, unexpected {unexpected}, "
            f"mismatched {mismatched}"
        )
    model._name_or_path = causal_lm.name_or_path
    model.config.text_config._name_or_path = causal_lm.name_or_path
    return model.eval()


def fidelity_token_batch(
    vocab_size: int, num_sequences: int = 3, length: int = 12, graph_token_id: int | None = None
) -> torch.LongTensor:
    """A few fixed random token sequences of the LLM's own vocabulary, without the `<graph>` slot token (a slot
    without a molecule is refused by LLaMo; a tokenizer may already hold `<graph>` inside its vocabulary)."""
    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab_size, (num_sequences, length), generator=generator)
    if graph_token_id is not None:
        ids[ids == graph_token_id] = (graph_token_id + 1) % vocab_size
    return ids


@torch.no_grad()
def check_text_logits(model: LlamoForConditionalGeneration, causal_lm: PreTrainedModel, vocab_size: int, name: str) -> float:
    """Text-only logits of `model` (no molecule) must equal the LLM's over its own vocabulary; returns the largest
    difference. Catches a head transform the wrapper does not reproduce (a scale, a soft-cap, a bias)."""
    ids = fidelity_token_batch(vocab_size, graph_token_id=model.config.graph_token_id).to(
        causal_lm.get_input_embeddings().weight.device
    )
    expected = causal_lm(input_ids=ids, use_cache=False).logits.float()
    actual = model(input_ids=ids, use_cache=False).logits[..., :vocab_size].float()
    difference = (expected - actual).abs().max().item()
    tolerance = 1e-5 if expected.dtype == torch.float32 and model.dtype == torch.float32 else 1e-2
    if not torch.allclose(expected, actual, rtol=1e-5 if tolerance == 1e-5 else 1e-2, atol=tolerance):
        raise FidelityError(
            f"LLaMo's text-only logits differ from {name}'s ({type(causal_lm).__name__}) by up to {difference:.3g}: "
            "the wrapper does not reproduce this family's head (a logit scale or soft-cap LLaMo does not know?)"
        )
    return difference


def choose_chat_template(tokenizer: PreTrainedTokenizerBase, choice: ChatTemplateChoice = "auto") -> tuple[str, str]:
    """(template, where it came from). The LLM's own template needs `{% generation %}` marks on assistant turns for
    the assistant-only loss: kept when it has them, otherwise replaced by TRL's training version of that template
    (Llama-3, Qwen2.5/3, Gemma, Phi-3, Cohere, ... see `trl.chat_template_utils.get_training_chat_template`)."""
    if choice not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat_template must be one of {CHAT_TEMPLATE_CHOICES}, got {choice!r}")
    if choice == "llamo":
        return DEFAULT_CHAT_TEMPLATE, "LLaMo's Llama-2 layout (requested)"
    from trl.chat_template_utils import get_training_chat_template

    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if not own:
        if choice == "llm":
            raise ValueError("--chat_template llm: this LLM's tokenizer has no chat template")
        return DEFAULT_CHAT_TEMPLATE, "LLaMo's Llama-2 layout (the LLM has no chat template)"
    try:
        training = get_training_chat_template(tokenizer)
    except ValueError as error:
        chatml = chatml_training_template(tokenizer, own)
        if chatml is not None:
            return chatml, "the LLM's own (ChatML), LLaMo's training version with {% generation %} marks"
        if choice == "llm":
            raise ValueError(
                "--chat_template llm: the LLM's chat template does not mark assistant turns with {% generation %} and "
                f"TRL has no training version of it ({error}); add the marks to the tokenizer's template, or use "
                "--chat_template llamo"
            ) from error
        logger.warning(
            "The LLM's chat template cannot be marked for assistant-only loss (TRL knows no training version of it, "
            "e.g. Llama-2's [INST] template): using LLaMo's Llama-2 layout. Pass --chat_template llamo to silence this."
        )
        return DEFAULT_CHAT_TEMPLATE, "LLaMo's Llama-2 layout (the LLM's own cannot be marked for training)"
    if training is None:
        return own, "the LLM's own (already marks assistant turns)"
    return training, "the LLM's own, TRL's training version with {% generation %} marks"


# ChatML (SmolLM2, Qwen2 / Qwen2.5 without tools, and many fine-tunes) with `{% generation %}` around each assistant
# answer and its end marker; `DEFAULT_SYSTEM` is replaced by the block the LLM's own template writes when no system message is
# given (SmolLM2: "You are a helpful AI assistant named SmolLM, ..."), or nothing.
# Typed content (`[{"type": "text", ...}]`) is joined with spaces, as LLaMo's own layout does; molecule items are
# refused with a message naming the pipeline that featurizes them (the tokenizer alone cannot).
CHATML_TRAINING_TEMPLATE = (
    "{%- macro content_text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}{%- if not loop.first %} {% endif -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is not string and message['content'] | selectattr('type', 'equalto', 'molecule') | list -%}"
    "{{ raise_exception('LLaMo chat content must be text here: molecule items need LlamoProcessor.apply_chat_template, "
    "or pipeline(\\'molecule-text-to-text\\', model=..., trust_remote_code=True) instead of text-generation') }}"
    "{%- endif -%}"
    "{%- if loop.first and message['role'] != 'system' -%}{{ DEFAULT_SYSTEM }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ content_text(message['content']) + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content_text(message['content']) + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# Conversations on which a training version must render exactly what the LLM's own template renders.
TEMPLATE_PROBES = (
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
    [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2 <graph>"},
        {"role": "assistant", "content": "A2"},
    ],
    [{"role": "user", "content": "Q1"}],
)


def chatml_training_template(tokenizer: PreTrainedTokenizerBase, own: str) -> str | None:
    """LLaMo's training version of `own` when `own` is a plain ChatML template, else None.

    The LLM's default system block is read off its own rendering, and the marked version is accepted only if it renders
    every probe conversation (with and without a system message, multi-turn, with and without the generation prompt)
    exactly as `own` does, so the LLM sees the prompt format it was tuned on."""

    def render(template: str, messages: list[dict], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    probe = TEMPLATE_PROBES[0]
    turns = "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
    try:
        rendered = render(own, probe, False)
    except Exception:  # noqa: BLE001 (any template error means: not a template this function knows)
        return None
    if not rendered.endswith(turns):
        return None
    default_system = rendered[: -len(turns)]
    if default_system and not (default_system.startswith("<|im_start|>system\n") and default_system.endswith("<|im_end|>\n")):
        return None
    candidate = CHATML_TRAINING_TEMPLATE.replace("DEFAULT_SYSTEM", json.dumps(default_system))
    try:
        same = all(
            render(candidate, messages, prompt) == render(own, messages, prompt)
            for messages in TEMPLATE_PROBES
            for prompt in (False, True)
        )
    except Exception:  # noqa: BLE001
        return None
    return candidate if same else None


# ---------------------------------------------------------------------------------------------------------------
# LoRA targets


def linear_layer_names(language_model: nn.Module) -> list[str]:
    """Names (last component) of the language model's linear layers, GPT-2's Conv1D included."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in language_model.named_modules() if isinstance(module, LINEAR_TYPES)}
    )


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or a Conv1D."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


SEPARATE_QUERY_VALUE = re.compile(r"(q|v|query|value|wq|wv)(_proj)?")


def default_lora_targets(language_model: nn.Module) -> list[str]:
    """Module paths (layer numbers as `\\d+`) of the attention projections LoRA adapts by default, found by module
    type: in each attention module (class name ending in `Attention`), the query and value projections when they are
    separate (LLaMo's `q_proj`, `v_proj`), else the fused query-key-value projection (Phi-3 `qkv_proj`, Falcon and
    GPT-NeoX `query_key_value`, GPT-2 `c_attn`: the linear child wider out than in), else all its linear children."""
    patterns: list[str] = []
    for path, module in language_model.named_modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        children = {name: child for name, child in module.named_children() if isinstance(child, LINEAR_TYPES)}
        if not children:
            continue
        chosen = [name for name in children if SEPARATE_QUERY_VALUE.fullmatch(name)]
        if len(chosen) != 2:
            chosen = [name for name, child in children.items() if _shape(child)[1] > _shape(child)[0]]
        if not chosen:
            chosen = list(children)
        for name in chosen:
            pattern = re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(f"{path}.{name}" if path else name))
            if pattern not in patterns:
                patterns.append(pattern)
    if not patterns:
        raise ValueError(
            f"found no attention projection in {type(language_model).__name__}: pass --lora_target_modules by name "
            f"(its linear layers: {linear_layer_names(language_model)}) or all-linear"
        )
    return patterns


def lora_target_regex(language_model: nn.Module, requested: list[str]) -> tuple[str, list[str]]:
    """(PEFT `target_modules` regex under `model.language_model.`, a readable list of what it adapts).

    `requested`: `["auto"]` (or empty) for `default_lora_targets`, `["all-linear"]` for every linear layer, or layer
    names (last path component) that must exist in the language model."""
    names = linear_layer_names(language_model)
    if not requested or requested == ["auto"]:
        paths = default_lora_targets(language_model)
        return rf"^model\.language_model\.(?:{'|'.join(paths)})$", [path.replace("\\d+", "*").replace("\\", "") for path in paths]
    targets = names if requested == ["all-linear"] else requested
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise ValueError(f"--lora_target_modules {unknown} are not linear layers of the language model; it has {names}")
    return rf"^model\.language_model\..*\.({'|'.join(map(re.escape, targets))})$", list(targets)


__all__ = [
    "CHAT_TEMPLATE_CHOICES",
    "FidelityError",
    "add_llamo_tokens",
    "build_llamo",
    "build_llamo_from_config",
    "check_text_logits",
    "choose_chat_template",
    "default_lora_targets",
    "lora_target_regex",
]
