"""Export a LLaMo folder for serving on a stock inference engine (vLLM) through prompt embeddings.

    llamo-export-vllm --model path/to/llamo --output_dir served/

writes
    served/language_model/   a plain causal LM of LLaMo's language model and head (`AutoModelForCausalLM`, no remote
                             code, LoRA merged), with the tokenizer and the processor's own chat template (it reads
                             OpenAI text parts as the processor reads text items): what `vllm.entrypoints.openai.api_server --model` loads
    served/frontend/         the processor, the graph encoder, the projector and the input-embedding table: what
                             `LlamoFrontEnd` (client, gateway) needs to turn molecules into prompt embeddings
    served/serving.json      names, dtype and sizes shared by both sides

The export is family agnostic: the language model is rebuilt with `AutoModelForCausalLM.from_config(text_config)` and
must give the same logits as LLaMo on a probe with a molecule (checked; a mismatch raises). Families whose forward
scales the input embeddings or transforms the logits beyond the head's matrix product are refused (the
`EMBEDDING_SCALING_FAMILIES`, and the fields of `configuration_llamo.TEXT_CONFIG_TRANSFORMS` not marked exportable,
when set), because vLLM does not apply such transforms to prompt embeddings, or because LLaMo's own head does not
apply them.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from configuration_llamo import TEXT_CONFIG_TRANSFORMS, LlamoConfig
from llamo.cli import load_model_and_processor
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor

from .frontend import LlamoFrontEnd


# Families whose model multiplies the input embeddings inside its forward (HF) or its embedding layer (vLLM): the
# graph vectors would be scaled in one engine and not the other.
EMBEDDING_SCALING_FAMILIES = {"gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text", "recurrent_gemma"}

PROBE_MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"}, {"type": "text", "text": "Describe it."}],
    }
]


def check_servable(config: LlamoConfig) -> None:
    """Refuse language models whose prompt embeddings or logits vLLM would not reproduce (see module docstring)."""
    text_config = config.text_config
    if not config.uses_graph:
        raise ValueError("projector_type='none' is a text-only model: serve its language model folder directly")
    if text_config.model_type in EMBEDDING_SCALING_FAMILIES:
        raise ValueError(
            f"cannot export a {text_config.model_type!r} language model for prompt-embedding serving: it scales its input "
            "embeddings inside the model, and vLLM does not apply that scale to prompt embeddings"
        )
    refused = {
        transform.field: value
        for transform in TEXT_CONFIG_TRANSFORMS
        if not transform.exportable and (value := getattr(text_config, transform.field, transform.neutral)) != transform.neutral
    }
    if refused:
        settings = ", ".join(f"{field}={value!r}" for field, value in refused.items())
        raise ValueError(
            f"cannot export this {text_config.model_type!r} language model: its config sets {settings}, transforms of the "
            "embeddings or logits that this export does not carry over to vLLM's prompt-embedding serving"
        )


def extract_language_model(model: LlamoForConditionalGeneration) -> PreTrainedModel:
    """`AutoModelForCausalLM` of the text config carrying LLaMo's language-model and head weights (a copy)."""
    text_config = model.config.text_config
    causal = AutoModelForCausalLM.from_config(text_config, dtype=model.get_input_embeddings().weight.dtype)
    base = causal.base_model
    missing, unexpected = base.load_state_dict(model.model.language_model.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{type(causal).__name__}'s base model does not match LLaMo's language model: missing {missing}, unexpected {unexpected}"
        )
    head = causal.get_output_embeddings()
    if tuple(head.weight.shape) != tuple(model.lm_head.weight.shape) or getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(causal).__name__}'s head differs from LLaMo's bias-free linear head")
    with torch.no_grad():
        if head.weight is causal.get_input_embeddings().weight:  # tied in this family: LLaMo's must be tied as well
            if not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight):
                raise ValueError("the exported family ties its head to the embeddings but LLaMo's head differs from them")
        else:
            head.weight.copy_(model.lm_head.weight)
    return causal.eval()


@torch.inference_mode()
def verify_export(model: LlamoForConditionalGeneration, frontend: LlamoFrontEnd, causal: PreTrainedModel) -> float:
    """Largest |logit difference| between LLaMo and front-end embeddings -> exported causal LM on a probe with a
    molecule. Raises if it exceeds what the dtype's rounding allows."""
    inputs = frontend.render(PROBE_MESSAGES)
    expected = model(**inputs).logits
    got = causal(inputs_embeds=frontend.embed_inputs(inputs), attention_mask=inputs["attention_mask"]).logits
    difference = (expected.float() - got.float()).abs().max().item()
    tolerance = 1e-4 if expected.dtype == torch.float32 else 5e-2
    if not difference <= tolerance:
        raise ValueError(
            f"the exported {type(causal).__name__} does not reproduce LLaMo's logits (max difference {difference:.3g} > {tolerance}): "
            "this language-model family's head or embeddings behave differently inside LLaMo"
        )
    return difference


def export_for_vllm(
    model: LlamoForConditionalGeneration,
    processor: LlamoProcessor,
    output_dir: str | pathlib.Path,
    served_model_name: str = "llamo",
) -> pathlib.Path:
    """Write `language_model/`, `frontend/` and `serving.json` under `output_dir` (see module docstring)."""
    output_dir = pathlib.Path(output_dir)
    model = model.eval()
    check_servable(model.config)
    frontend = LlamoFrontEnd.from_llamo(model, processor)
    causal = extract_language_model(model)
    difference = verify_export(model, frontend, causal)

    language_dir = output_dir / "language_model"
    causal.generation_config = GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
    )
    causal.save_pretrained(language_dir)
    # The engine's tokenizer gets the processor's own template (Llama-2-chat, ChatML, ...): one layout for both sides,
    # and it reads OpenAI text parts (typed content) as the processor reads its text items.
    tokenizer = processor.tokenizer
    own_template = tokenizer.chat_template
    tokenizer.chat_template = processor.chat_template
    try:
        tokenizer.save_pretrained(language_dir)
    finally:
        tokenizer.chat_template = own_template
    frontend.save_pretrained(output_dir / "frontend")
    text_config = model.config.text_config
    manifest = {
        "served_model_name": served_model_name,
        "dtype": str(frontend.dtype).removeprefix("torch."),
        "hidden_size": text_config.hidden_size,
        "architecture": type(causal).__name__,
        "head_dim": getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads,
        "graph_tokens_per_molecule": model.config.num_graph_tokens,
        "probe_max_logit_difference": difference,
    }
    (output_dir / "serving.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a LLaMo folder for vLLM: plain causal-LM folder + molecule front-end.")
    parser.add_argument("--model", required=True, help="LLaMo folder (or a PEFT adapter folder over one)")
    parser.add_argument("--output_dir", type=pathlib.Path, required=True)
    parser.add_argument("--served_model_name", default="llamo")
    args = parser.parse_args(argv)
    model, processor = load_model_and_processor(args.model, device="cpu")
    export_for_vllm(model, processor, args.output_dir, served_model_name=args.served_model_name)
    manifest = json.loads((args.output_dir / "serving.json").read_text())
    print(
        f"exported {manifest['architecture']} ({manifest['dtype']}, head_dim {manifest['head_dim']}) to {args.output_dir / 'language_model'}"
    )
    print(f"front-end (processor, graph encoder, projector, embeddings) in {args.output_dir / 'frontend'}")
    if manifest["head_dim"] < 32:
        print(
            f"warning: head_dim {manifest['head_dim']} is below 32, which vLLM's CPU attention rejects (GPU backends may accept it)"
        )


if __name__ == "__main__":
    main()
