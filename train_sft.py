"""Train LLaMo with TRL's SFTTrainer: stage 1 (graph-language alignment) and stage 2 (instruction tuning, LoRA).

    # stage 1: build LLaMo around a causal LM, train the GIN and the projector, the LLM frozen
    python train_sft.py --stage 1 --llm meta-llama/Llama-2-7b-chat-hf --datasets caption:chebi20/train.txt \\
        --output_dir llamo-stage1

    # stage 2: start from the stage-1 folder, freeze the GIN, train the projector and LoRA adapters
    python train_sft.py --stage 2 --init_from llamo-stage1 --datasets instructions.jsonl iupac:names.tsv@0.3 \\
        --output_dir llamo

Runs the same under `python`, `torchrun` and `accelerate launch`. SFTConfig / TrainingArguments options work
(`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`, `--bf16`, `--push_to_hub`,
`--hub_model_id`, `--resume_from_checkpoint`, ...), except `--packing` and `--padding_free`, which are refused:
LLaMo's examples are featurized and tokenized by `llamo.data` (graph tensors per conversation, assistant-only labels
always), a path TRL's packing would bypass. The output folder is a Hub model repository: weights (LoRA
merged unless `--keep_adapter`), config with `auto_map`, processor, tokenizer, chat template, code files, and
a model card written from the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig
from torch import nn
from transformers import BitsAndBytesConfig, TrainerCallback
from transformers.pytorch_utils import Conv1D
from trl import SFTConfig, SFTTrainer, TrlParser

from configuration_llamo import PROJECTOR_SPECS, PROJECTOR_TYPES
from llamo.builder import build_llamo, lora_target_regex
from llamo.checkpoints import resolve_resume
from llamo.cli import check_model_path
from llamo.data import DataSource, LlamoDataCollator, SkipReport, encode_dataset, load_mixture, split_by_molecule
from llamo.model_card import card_info, write_model_card
from llamo.saving import refuse_unsupported_engines, save_final_model
from llamo.timing import StepTimer
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor


@dataclass
class LlamoModelArguments:
    stage: int = field(default=1, metadata={"help": "1: graph-language alignment; 2: instruction tuning with LoRA."})
    llm: str | None = field(
        default=None,
        metadata={"help": "Causal LM (Hub id or folder) to build a new LLaMo around. Default: the tiny CPU model."},
    )
    init_from: str | None = field(
        default=None, metadata={"help": "Stage 2: the stage-1 output folder (without it, a new model is built around --llm)."}
    )
    projector_type: str = field(default="multilevel", metadata={"help": f"New models: one of {PROJECTOR_TYPES}."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "New models: LlamoConfig fields as 'gnn_hidden_size=64,motif_tokens_first=false'."}
    )
    dtype: str = field(default="auto", metadata={"help": "Weights dtype when loading: auto, float32, bfloat16, float16."})
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel of the language model: sdpa, flash_attention_2, eager (default: transformers' choice)."
        },
    )
    train_input_embeddings: bool = field(
        default=False, metadata={"help": "Stage 1: also train the LLM's input embeddings (the released code does)."}
    )
    train_graph_encoder: bool = field(
        default=False, metadata={"help": "Stage 2: also train the GIN (frozen by default, as in LLaMo)."}
    )
    no_smiles_in_prompt: bool = field(
        default=False,
        metadata={"help": "Show molecules as graph tokens only, without their SMILES text (saved with the processor)."},
    )
    lora_r: int = field(default=8, metadata={"help": "Stage 2: LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "Stage 2: LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Stage 2: LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "Stage 2: LLM linear layers to adapt, by name; 'auto' (default): the attention's query and value "
            "projections, or its fused qkv projection, found by module type; 'all-linear' for every one."
        },
    )
    keep_adapter: bool = field(default=False, metadata={"help": "Stage 2: save a PEFT adapter instead of merged weights."})
    # QLoRA, with TRL's ModelConfig flag names: only the language model is quantized (modeling_llamo declares the
    # GIN and projector as modules to keep unquantized).
    load_in_4bit: bool = field(
        default=False, metadata={"help": "Stage 2 (QLoRA): load the language model in 4-bit (bitsandbytes)."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Stage 2: load the language model in 8-bit (bitsandbytes)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit quantization type: nf4 or fp4."})
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "4-bit: also quantize the quantization constants."})
    license: str = field(default="apache-2.0", metadata={"help": "License written in the model card."})
    chat_template: str = field(
        default="auto",
        metadata={
            "help": "New models: 'auto' the LLM's own chat template (marked for assistant-only loss) when it has one "
            "TRL can mark, else LLaMo's Llama-2 layout; 'llm' the LLM's own or an error; 'llamo' LLaMo's layout."
        },
    )
    check_fidelity: bool = field(
        default=True, metadata={"help": "New models: check that text-only logits equal the LLM's before training."}
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep the checkpoint-N folders after a successful run (deleted by default)."}
    )


@dataclass
class LlamoDataArguments:
    datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "Training data: '[format:]path_or_hub_id[@weight]' ... (formats and columns: llamo/data.py)."},
    )
    eval_datasets: list[str] = field(default_factory=list, metadata={"help": "Evaluation data, same syntax."})
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Hold out this fraction of the training molecules for evaluation (by SMILES)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training conversations."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes for featurization and tokenization."})


def build_llamo_around_llm(llm: str, model_args: LlamoModelArguments) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """A new LLaMo whose language model (and lm_head) are the weights of `llm` (see `llamo.builder.build_llamo`)."""
    return build_llamo(
        llm,
        projector_type=model_args.projector_type,
        config_overrides=parse_config_overrides(model_args.config_overrides),
        dtype=model_args.dtype,
        chat_template=model_args.chat_template,
        check_fidelity=model_args.check_fidelity,
        attn_implementation=model_args.attn_implementation,
    )


def parse_config_overrides(text: str | None) -> dict:
    """'a=1,b=true,c=silu' -> {'a': 1, 'b': True, 'c': 'silu'} (JSON values where they parse)."""
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides expects key=value pairs, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def load_model(model_args: LlamoModelArguments) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """Stage 2 continues a stage-1 folder (`--init_from`); a new model is built around `--llm` otherwise (stage 1,
    or stage 2 without alignment, e.g. the text-only `projector_type none` baseline)."""
    if model_args.stage not in (1, 2):
        raise ValueError(f"--stage must be 1 or 2, got {model_args.stage}")
    # A mistyped local path fails here, clearly, instead of as a Hub connection or repo-id error.
    if model_args.init_from is not None:
        model_args.init_from = check_model_path(model_args.init_from, "--init_from")
    if model_args.llm is not None:
        model_args.llm = check_model_path(model_args.llm, "--llm")
    quantization = quantization_config(model_args)
    if model_args.init_from is not None:
        if model_args.stage == 1:
            raise ValueError("--init_from continues a stage-1 model in stage 2; stage 1 builds a new one (--llm)")
        model = LlamoForConditionalGeneration.from_pretrained(
            model_args.init_from,
            dtype=model_args.dtype,
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantization,
        )
        # the local class, not code shipped in that folder (no trust_remote_code: nothing there is executed)
        return model, LlamoProcessor.from_pretrained(model_args.init_from)
    spec = PROJECTOR_SPECS.get(model_args.projector_type)
    if model_args.stage == 1 and spec is not None and not spec.uses_graph:
        raise ValueError("stage 1 trains the graph encoder and projector: a projector_type 'none' model goes to stage 2 directly")
    if model_args.llm is None:
        return build_tiny_llamo(projector_type=model_args.projector_type, **parse_config_overrides(model_args.config_overrides))
    return build_llamo_around_llm(model_args.llm, model_args)


def quantization_config(model_args: LlamoModelArguments) -> BitsAndBytesConfig | None:
    """The bitsandbytes config of `--load_in_4bit` / `--load_in_8bit` (as TRL's `get_quantization_config`), or None.
    QLoRA trains LoRA adapters over the stage-1 folder, so it needs stage 2, `--init_from` and `--keep_adapter`
    (merging into 4/8-bit weights would round the result)."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ValueError("pass one of --load_in_4bit and --load_in_8bit")
    if model_args.stage != 2 or model_args.init_from is None or not model_args.keep_adapter:
        raise ValueError(
            "quantized training (QLoRA) is stage 2 over a stage-1 folder: pass --stage 2 --init_from FOLDER --keep_adapter"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--load_in_4bit / --load_in_8bit need bitsandbytes: pip install bitsandbytes")
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = torch.float32 if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
    )


def set_trainable(model: LlamoForConditionalGeneration, model_args: LlamoModelArguments) -> None:
    """Stage 1: GIN + projector (+ input embeddings if asked). Stage 2: the projector here, LoRA added by the trainer."""
    model.requires_grad_(False)
    if model.model.projector is not None:
        model.model.projector.requires_grad_(True)
    if model_args.stage == 1:
        if model.model.graph_encoder is not None:
            model.model.graph_encoder.requires_grad_(True)
        if model_args.train_input_embeddings:
            model.get_input_embeddings().weight.requires_grad_(True)
    elif model_args.train_graph_encoder and model.model.graph_encoder is not None:
        model.model.graph_encoder.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts by part (works on the PEFT-wrapped model too)."""
    counts = {"graph_encoder": 0, "projector": 0, "lora": 0, "language_model": 0}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = next((key for key in ("lora", "graph_encoder", "projector") if key in name), "language_model")
            counts[part] += parameter.numel()
    return counts


def lora_config(model: LlamoForConditionalGeneration, model_args: LlamoModelArguments) -> LoraConfig:
    """LoRA on the language model's linear layers only (never the GIN or the projector, which is trained fully
    and saved with the adapter as a module to save)."""
    target_regex, targets = lora_target_regex(model.model.language_model, model_args.lora_target_modules)
    print(f"LoRA targets ({' '.join(model_args.lora_target_modules)}): {', '.join(targets)}")
    # GPT-2-style Conv1D layers store the weight transposed; PEFT needs to be told (it warns and fixes it otherwise)
    conv1d = any(
        isinstance(module, Conv1D) and re.fullmatch(target_regex, f"model.language_model.{name}")
        for name, module in model.model.language_model.named_modules()
    )
    return LoraConfig(
        fan_in_fan_out=conv1d,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target_regex,
        modules_to_save=modules_to_save(model, model_args),
        bias="none",
        task_type="CAUSAL_LM",
    )


def modules_to_save(model: LlamoForConditionalGeneration, model_args: LlamoModelArguments) -> list[str] | None:
    """Graph-side modules trained fully next to LoRA: the projector, and the GIN with --train_graph_encoder."""
    if model.model.projector is None:
        return None
    return ["projector", "graph_encoder"] if model_args.train_graph_encoder else ["projector"]


class LlamoSFTTrainer(SFTTrainer):
    """SFTTrainer whose Hub model card is LLaMo's (written from the run) instead of TRL's generic one."""

    card_info: dict | None = None

    def create_model_card(self, *args, **kwargs) -> None:
        if self.card_info is not None and self.is_world_process_zero():
            write_model_card(pathlib.Path(self.args.output_dir), **self.card_info)


# A short usage line: argparse's own lists all ~150 flags; LLaMo's come first in the help, then SFTConfig's.
USAGE = (
    "train_sft.py [-h] --datasets SPEC [SPEC ...] --output_dir DIR [--stage {1,2}] [--llm LLM | --init_from FOLDER]\n"
    "                    [LLaMo options] [SFTConfig / TrainingArguments options]"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default."""


def default_arguments(parser: TrlParser) -> None:
    """CPU-friendly defaults when there is no accelerator (SFTConfig defaults to bf16 and checkpointing)."""
    if not torch.cuda.is_available():
        # `use_cpu` is also what makes torchrun / accelerate launch use gloo DDP on CPUs. transformers >= 5.2x
        # renamed gradient checkpointing to activation checkpointing (the old name warns).
        checkpointing = (
            "activation_checkpointing"
            if "activation_checkpointing" in SFTConfig.__dataclass_fields__
            else "gradient_checkpointing"
        )
        parser.set_defaults(use_cpu=True, bf16=False, **{checkpointing: False})
    # Evaluation reports the loss; keeping every batch's logits for metrics is slow and unused here.
    parser.set_defaults(report_to="none", max_length=1024, save_total_limit=2, prediction_loss_only=True)


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Run one stage from command-line arguments; `callbacks` go to the trainer. Returns the run's summary."""
    parser = TrlParser(
        (LlamoModelArguments, LlamoDataArguments, SFTConfig), usage=USAGE, description=__doc__, formatter_class=HelpFormatter
    )
    default_arguments(parser)
    model_args, data_args, training_args = parser.parse_args_and_config(argv)
    refuse_unsupported_engines(training_args)
    refuse_unsupported_sft_options(training_args)
    # We featurize and tokenize ourselves (llamo.data), and our collator needs the graph columns.
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    if not data_args.datasets:
        raise ValueError("pass training data with --datasets (see llamo/data.py for the formats)")
    if model_args.keep_adapter and (model_args.stage != 2 or model_args.init_from is None):
        raise ValueError("--keep_adapter saves a LoRA adapter over the stage-1 folder: it needs --stage 2 --init_from")
    started = time.time()

    model, processor = load_model(model_args)
    set_trainable(model, model_args)
    if model_args.no_smiles_in_prompt:
        if model.config.projector_type == "none":
            raise ValueError("--no_smiles_in_prompt leaves a projector_type 'none' model nothing to read the molecule from")
        processor.smiles_in_prompt = False

    with training_args.main_process_first(desc="reading and encoding the data"):
        conversations, skipped = load_mixture([DataSource.parse(spec) for spec in data_args.datasets], seed=training_args.seed)
        eval_conversations = None
        if data_args.eval_fraction > 0:
            conversations, eval_conversations = split_by_molecule(conversations, data_args.eval_fraction)
        if data_args.eval_datasets:
            eval_conversations, eval_skipped = load_mixture(
                [DataSource.parse(s) for s in data_args.eval_datasets], seed=training_args.seed
            )
            skipped.update(eval_skipped)
        if data_args.max_train_samples is not None:
            conversations = conversations.select(range(min(data_args.max_train_samples, len(conversations))))
        train_dataset, encode_skipped = encode_dataset(conversations, processor, training_args.max_length, data_args.num_proc)
        skipped.update(encode_skipped)
        eval_dataset = None
        if eval_conversations is not None and len(eval_conversations) and training_args.eval_strategy != "no":
            eval_dataset, eval_skipped = encode_dataset(
                eval_conversations, processor, training_args.max_length, data_args.num_proc
            )
            skipped.update(eval_skipped)
    if len(train_dataset) == 0:
        raise ValueError(f"no usable training example; skipped rows: {skipped.lines()}")

    timer = StepTimer()  # step time, tokens/s, peak GPU memory -> training_summary.json
    trainer = LlamoSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id),
        processing_class=processor,
        peft_config=lora_config(model, model_args) if model_args.stage == 2 else None,
        callbacks=[timer, *(callbacks or [])],
    )
    trainable = trainable_parameters(trainer.model)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)  # newest complete one
    result = trainer.train(resume_from_checkpoint=resume)
    if eval_dataset is not None:  # the held-out loss of the final weights, for the summary and the model card
        trainer.evaluate()

    output_dir = pathlib.Path(training_args.output_dir)
    # Gathered on every rank (ZeRO-3 / FSDP shards), written by rank 0 atomically and verified (llamo/saving.py).
    final_model = save_final_model(
        trainer.accelerator.unwrap_model(trainer.model),
        output_dir,
        merge=model_args.stage == 2 and not model_args.keep_adapter,
        processor=processor,
    )
    summary = {
        "output_dir": str(output_dir),
        "stage": model_args.stage,
        "train_examples": len(train_dataset),
        "eval_examples": len(eval_conversations) if eval_conversations is not None else 0,
        "skipped": skipped.to_dict(),
        "trainable_parameters": trainable,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.time() - started, 1),
        "model_arguments": asdict(model_args),
        "datasets": data_args.datasets,
        "log_history": trainer.state.log_history,
        "timing": timer.report(),
    }
    trainer.card_info = card_info(model, model_args, data_args, training_args, summary, trainer)
    if trainer.is_world_process_zero():
        trainer.create_model_card()
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        if not model_args.keep_checkpoints:  # the finished folder is the Hub repository: no optimizer states in it
            for checkpoint in output_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
        print_summary(summary, skipped)
    if training_args.push_to_hub:
        if final_model is not None:  # rank 0: upload the saved (merged, whole) weights, not the adapter or shards
            trainer.model = trainer.model_wrapped = final_model
        trainer.push_to_hub(commit_message=f"LLaMo stage {model_args.stage}")
    return summary


def refuse_unsupported_sft_options(training_args: SFTConfig) -> None:
    """SFTConfig options that TRL applies in its own dataset preparation, which LLaMo replaces (`llamo.data`
    featurizes and tokenizes, `skip_prepare_dataset`): refused instead of silently ignored."""
    for name in ("packing", "padding_free"):
        if getattr(training_args, name, False):
            raise ValueError(
                f"--{name} is not supported by train_sft.py: LLaMo's examples carry per-conversation graph tensors and are "
                f"prepared by llamo.data, which TRL's {name} path would bypass (leave it off)"
            )


def print_summary(summary: dict, skipped: SkipReport) -> None:
    print(f"\nLLaMo stage {summary['stage']} done in {summary['seconds']} s -> {summary['output_dir']}")
    print(f"  examples: {summary['train_examples']} train, {summary['eval_examples']} eval; steps: {summary['steps']}")
    print(f"  trainable parameters: {summary['trainable_parameters']}")
    print(f"  rows skipped: {skipped.total}")
    for line in skipped.lines():
        print(f"    {line}")


def cli() -> None:
    """Console entry point `llamo-train` (the same as `python train_sft.py`)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
