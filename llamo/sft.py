"""Train LLaMo with TRL's SFTTrainer: stage 1 (graph-language alignment) and stage 2 (instruction tuning, LoRA).

    # stage 1: build LLaMo around a causal LM, train the GIN and the projector, the LLM frozen
    python train_sft.py --stage 1 --llm meta-llama/Llama-2-7b-chat-hf --datasets caption:chebi20/train.txt \\
        --output_dir llamo-stage1

    # stage 2: start from the stage-1 folder, freeze the GIN, train the projector and LoRA adapters
    python train_sft.py --stage 2 --init_from llamo-stage1 --datasets instructions.jsonl iupac:names.tsv@0.3 \\
        --output_dir llamo

Runs the same under `python`, `torchrun` and `accelerate launch`. The shape of TRL's example scripts: parser
(LLaMo's options extend TRL's `ModelConfig`), build, data, trainer, save. SFTConfig / TrainingArguments options work
(`--learning_rate`, `--num_train_epochs`, `--bf16 true`, `--push_to_hub`, `--resume_from_checkpoint`, ...), and so
do ModelConfig's (`--model_name_or_path` alias `--llm`, `--dtype`, `--lora_r`, `--use_rslora`, `--use_dora`,
`--load_in_4bit`, ...). What cannot work is refused (`check_arguments`): `--packing`, `--padding_free` and
`--completion_only_loss false`, because LLaMo's examples are featurized and tokenized by `llamo.data` (graph tensors
per conversation, assistant-only labels always), a path TRL's dataset preparation would bypass. The output folder is
a Hub model repository: weights (LoRA merged unless `--keep_adapter`), config with `auto_map`, processor, tokenizer,
chat template, code files, and a model card written from the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

# First: importing `llamo` installs its filters for third-party messages that never apply to a LLaMo run (llamo.quiet);
# one of them is printed when PEFT imports bitsandbytes, which the transformers / TRL imports below do.
from llamo.quiet import quiet_progress_bars


# isort: split
import torch
from datasets import Dataset
from peft import LoraConfig
from torch import nn
from transformers import BitsAndBytesConfig, TrainerCallback
from transformers.pytorch_utils import Conv1D
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config, get_quantization_config

from llamo.builder import build_llamo, lora_target_regex
from llamo.checkpoints import (
    is_trainable_only,
    load_trainable_state,
    resolve_resume,
    trainable_only_checkpoints,
    trainable_state_dict,
    write_trainable_marker,
)
from llamo.cli import check_model_path
from llamo.collator import LlamoDataCollator
from llamo.data import DataSource, SkipReport, encode_dataset, load_mixture, split_by_molecule
from llamo.model_card import card_info, write_model_card
from llamo.saving import refuse_unsupported_engines, save_final_model
from llamo.timing import StepTimer
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor
from projectors_llamo import PROJECTOR_SPECS, PROJECTOR_TYPES


@dataclass
class LlamoModelConfig(ModelConfig):
    """TRL's `ModelConfig` (LLM, dtype, attention, LoRA, bitsandbytes flags, as in TRL's example scripts) with
    LLaMo's defaults, plus the two stages' own options."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Causal LM (Hub id or folder) to build a new LLaMo around. Default: the tiny CPU model.",
            "aliases": ["--llm"],
        },
    )
    dtype: str | None = field(
        default="auto",
        metadata={"help": "Weights dtype when loading.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    use_peft: bool | None = field(
        default=None, metadata={"help": "LoRA adapters: always in stage 2, never in stage 1 (the flag may only say so)."}
    )
    lora_r: int = field(default=8, metadata={"help": "Stage 2: LoRA rank."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "Stage 2: LLM linear layers to adapt, by name; 'auto' (default): the attention's query and value "
            "projections, or its fused qkv projection, found by module type; 'all-linear' for every one."
        },
    )
    stage: int = field(default=1, metadata={"help": "1: graph-language alignment; 2: instruction tuning with LoRA."})
    init_from: str | None = field(
        default=None, metadata={"help": "Stage 2: the stage-1 output folder (without it, a new model is built around --llm)."}
    )
    projector_type: str = field(default="multilevel", metadata={"help": f"New models: one of {PROJECTOR_TYPES}."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "New models: LlamoConfig fields as 'gnn_hidden_size=64,motif_tokens_first=false'."}
    )
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
    keep_adapter: bool = field(default=False, metadata={"help": "Stage 2: save a PEFT adapter instead of merged weights."})
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep the checkpoint-N folders after a successful run (deleted by default)."}
    )
    license: str = field(default="apache-2.0", metadata={"help": "License written in the model card."})

    def __post_init__(self):
        super().__post_init__()
        # ModelConfig turns a one-item list into a string; LLaMo resolves names against the LLM (llamo.builder)
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]


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


# ---------------------------------------------------------------------------------------------------------- parser

# A short usage line: argparse's own lists all ~150 flags; LLaMo's come first in the help, then SFTConfig's.
USAGE = (
    "train_sft.py [-h] --datasets SPEC [SPEC ...] --output_dir DIR [--stage {1,2}] [--llm LLM | --init_from FOLDER]\n"
    "                    [LLaMo and ModelConfig options] [SFTConfig / TrainingArguments options]"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default."""


def make_parser() -> TrlParser:
    """The command line: LLaMo's model and data options, then SFTConfig's, with LLaMo's defaults."""
    parser = TrlParser(
        (LlamoModelConfig, LlamoDataArguments, SFTConfig), usage=USAGE, description=__doc__, formatter_class=HelpFormatter
    )
    default_arguments(parser)
    return parser


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


def check_arguments(model_args: LlamoModelConfig, data_args: LlamoDataArguments, training_args: SFTConfig) -> None:
    """Refuse, before any work, what this script cannot do, instead of ignoring it."""
    if model_args.stage not in (1, 2):
        raise ValueError(f"--stage must be 1 or 2, got {model_args.stage}")
    if not data_args.datasets:
        raise ValueError("pass training data with --datasets (see llamo/data.py for the formats)")
    if model_args.init_from is not None and model_args.stage == 1:
        raise ValueError("--init_from continues a stage-1 model in stage 2; stage 1 builds a new one (--llm)")
    if model_args.keep_adapter and (model_args.stage != 2 or model_args.init_from is None):
        raise ValueError("--keep_adapter saves a LoRA adapter over the stage-1 folder: it needs --stage 2 --init_from")
    if model_args.use_peft is not None and model_args.use_peft != (model_args.stage == 2):
        raise ValueError(f"--use_peft {model_args.use_peft}: LLaMo trains LoRA adapters in stage 2 and only there")
    if model_args.lora_task_type != "CAUSAL_LM":
        raise ValueError(f"--lora_task_type {model_args.lora_task_type}: LLaMo is a causal LM (CAUSAL_LM)")
    spec = PROJECTOR_SPECS.get(model_args.projector_type)
    if model_args.stage == 1 and model_args.init_from is None and spec is not None and not spec.uses_graph:
        raise ValueError("stage 1 trains the graph encoder and projector: a projector_type 'none' model goes to stage 2 directly")
    refuse_unsupported_engines(training_args)
    # TRL applies these in its own dataset preparation, which LLaMo replaces: `llamo.data` featurizes and tokenizes
    # (graph tensors per conversation, assistant-only labels always), so they would be silently ignored.
    for name in ("packing", "padding_free"):
        if getattr(training_args, name, False):
            raise ValueError(
                f"--{name} is not supported by train_sft.py: LLaMo's examples carry per-conversation graph tensors and are "
                f"prepared by llamo.data, which TRL's {name} path would bypass (leave it off)"
            )
    if training_args.completion_only_loss is False:
        raise ValueError("--completion_only_loss false: LLaMo's labels are always the assistant turns only")
    if training_args.model_init_kwargs:
        raise ValueError("--model_init_kwargs: train_sft.py loads the model itself; use --dtype / --attn_implementation")


# ----------------------------------------------------------------------------------------------------------- build


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


def load_model(
    model_args: LlamoModelConfig, trust_remote_code: bool = False
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """Stage 2 continues a stage-1 folder (`--init_from`); a new model is built around `--llm` otherwise (stage 1,
    or stage 2 without alignment, e.g. the text-only `projector_type none` baseline) by the one builder,
    `llamo.builder.build_llamo`; without `--llm`, the tiny CPU model."""
    # A mistyped local path fails here, clearly, instead of as a Hub connection or repo-id error.
    if model_args.init_from is not None:
        model_args.init_from = check_model_path(model_args.init_from, "--init_from")
        model = LlamoForConditionalGeneration.from_pretrained(
            model_args.init_from,
            revision=model_args.model_revision,
            dtype=model_args.dtype,
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantization_config(model_args),
        )
        # the local class, not code shipped in that folder (no trust_remote_code: nothing there is executed); the
        # model's config goes to AutoTokenizer, which would otherwise read config.json as a plain config (it cannot
        # load a `llamo` one without remote code) and warn that the model types differ
        return model, LlamoProcessor.from_pretrained(
            model_args.init_from, revision=model_args.model_revision, trust_remote_code=False, config=model.config
        )
    quantization_config(model_args)  # refuses 4/8-bit here: QLoRA goes over a stage-1 folder
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.model_name_or_path is None:
        return build_tiny_llamo(projector_type=model_args.projector_type, **overrides)
    model_args.model_name_or_path = check_model_path(model_args.model_name_or_path, "--llm")
    return build_llamo(
        model_args.model_name_or_path,
        projector_type=model_args.projector_type,
        config_overrides=overrides,
        dtype=model_args.dtype,
        chat_template=model_args.chat_template,
        check_fidelity=model_args.check_fidelity,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
    )


def quantization_config(model_args: LlamoModelConfig) -> BitsAndBytesConfig | None:
    """TRL's `get_quantization_config` for `--load_in_4bit` / `--load_in_8bit` (compute dtype fp32 for `--dtype
    auto`), or None. QLoRA trains LoRA adapters over the stage-1 folder, so it needs stage 2, `--init_from` and
    `--keep_adapter` (merging into 4/8-bit weights would round the result)."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    if model_args.stage != 2 or model_args.init_from is None or not model_args.keep_adapter:
        raise ValueError(
            "quantized training (QLoRA) is stage 2 over a stage-1 folder: pass --stage 2 --init_from FOLDER --keep_adapter"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--load_in_4bit / --load_in_8bit need bitsandbytes: pip install bitsandbytes")
    compute_dtype = "float32" if model_args.dtype == "auto" else model_args.dtype
    return get_quantization_config(dataclasses.replace(model_args, dtype=compute_dtype))


def set_trainable(model: LlamoForConditionalGeneration, model_args: LlamoModelConfig) -> None:
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


def lora_config(model: LlamoForConditionalGeneration, model_args: LlamoModelConfig) -> LoraConfig:
    """TRL's `get_peft_config` with LoRA on the language model's linear layers only (never the GIN or the
    projector: they are trained fully and saved with the adapter as modules to save)."""
    target_regex, targets = lora_target_regex(model.model.language_model, model_args.lora_target_modules)
    print(f"LoRA targets ({' '.join(model_args.lora_target_modules)}): {', '.join(targets)}")
    graph_modules = [] if model.model.projector is None else ["projector"]
    if graph_modules and model_args.train_graph_encoder:
        graph_modules.append("graph_encoder")
    to_save = [*graph_modules, *(model_args.lora_modules_to_save or [])] or None
    peft_config = get_peft_config(dataclasses.replace(model_args, use_peft=True, lora_modules_to_save=to_save))
    peft_config.target_modules = target_regex  # a string: PEFT matches it as a regex (a list would be names)
    # GPT-2-style Conv1D layers store the weight transposed; PEFT needs to be told (it warns and fixes it otherwise)
    peft_config.fan_in_fan_out = any(
        isinstance(module, Conv1D) and re.fullmatch(target_regex, f"model.language_model.{name}")
        for name, module in model.model.language_model.named_modules()
    )
    return peft_config


def build_model(
    model_args: LlamoModelConfig, training_args: SFTConfig
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor, LoraConfig | None]:
    """The model with this stage's trainable parts, its processor, and the LoRA config of stage 2."""
    model, processor = load_model(model_args, trust_remote_code=training_args.trust_remote_code)
    set_trainable(model, model_args)
    if model_args.no_smiles_in_prompt:
        if not model.config.uses_graph:
            raise ValueError("--no_smiles_in_prompt leaves a projector_type 'none' model nothing to read the molecule from")
        processor.smiles_in_prompt = False
    return model, processor, lora_config(model, model_args) if model_args.stage == 2 else None


# ------------------------------------------------------------------------------------------------------------ data


@dataclass
class LlamoDatasets:
    """Encoded training (and evaluation) examples, and every row that was skipped, with its reason."""

    train: Dataset
    eval: Dataset | None
    eval_examples: int  # held-out conversations (encoded or not: eval may be off)
    skipped: SkipReport


def load_datasets(data_args: LlamoDataArguments, training_args: SFTConfig, processor: LlamoProcessor) -> LlamoDatasets:
    """Read the mixture, hold out molecules if asked, featurize and tokenize (`llamo.data`; once, on the main
    process first)."""
    with training_args.main_process_first(desc="reading and encoding the data"):
        conversations, skipped = load_mixture([DataSource.parse(spec) for spec in data_args.datasets], seed=training_args.seed)
        eval_conversations = None
        if data_args.eval_fraction > 0:
            conversations, eval_conversations = split_by_molecule(conversations, data_args.eval_fraction)
        if data_args.eval_datasets:
            eval_conversations, eval_skipped = load_mixture(
                [DataSource.parse(spec) for spec in data_args.eval_datasets], seed=training_args.seed
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
    return LlamoDatasets(train_dataset, eval_dataset, len(eval_conversations or []), skipped)


# --------------------------------------------------------------------------------------------------------- trainer


class LlamoSFTTrainer(SFTTrainer):
    """SFTTrainer whose Hub model card is LLaMo's (written from the run) instead of TRL's generic one, and whose
    stage-1 checkpoints hold only what trains (`llamo.checkpoints.trainable_state_dict`: the graph side, not the
    frozen LLM; stage 2's PEFT checkpoints already hold only the adapter and the modules it saves)."""

    card_info: dict | None = None
    _saving_checkpoint = False

    def create_model_card(self, *args, **kwargs) -> None:
        if self.card_info is not None and self.is_world_process_zero():
            write_model_card(pathlib.Path(self.args.output_dir), **self.card_info)

    def _save_checkpoint(self, model, trial) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if self._saving_checkpoint and state_dict is None and trainable_only_checkpoints(model):
            state_dict = trainable_state_dict(model)
            keys = sorted(state_dict)  # save_pretrained empties the dict it is given while it writes
            super()._save(output_dir, state_dict)
            if self.args.should_save:
                write_trainable_marker(pathlib.Path(output_dir or self.args.output_dir), keys)
            return
        super()._save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        if is_trainable_only(resume_from_checkpoint):
            load_trainable_state(self.accelerator.unwrap_model(target), resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def make_trainer(
    model: LlamoForConditionalGeneration,
    processor: LlamoProcessor,
    peft_config: LoraConfig | None,
    datasets: LlamoDatasets,
    training_args: SFTConfig,
    callbacks: list[TrainerCallback],
) -> LlamoSFTTrainer:
    # The examples are already featurized and tokenized (llamo.data), and the collator needs the graph columns.
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    return LlamoSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.train,
        eval_dataset=datasets.eval,
        data_collator=LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts by part (works on the PEFT-wrapped model too)."""
    counts = {"graph_encoder": 0, "projector": 0, "lora": 0, "language_model": 0}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = next((key for key in ("lora", "graph_encoder", "projector") if key in name), "language_model")
            counts[part] += parameter.numel()
    return counts


# ------------------------------------------------------------------------------------------------------------ save


def save(
    trainer: LlamoSFTTrainer,
    model: LlamoForConditionalGeneration,
    processor: LlamoProcessor,
    model_args: LlamoModelConfig,
    data_args: LlamoDataArguments,
    summary: dict,
) -> None:
    """The output folder as a Hub repository: whole weights (gathered from ZeRO-3 / FSDP shards on every rank,
    written by rank 0 atomically and verified, `llamo/saving.py`), processor, code, model card, run summary; no
    optimizer checkpoints unless `--keep_checkpoints`. Then `--push_to_hub` uploads it."""
    training_args, output_dir = trainer.args, pathlib.Path(trainer.args.output_dir)
    final_model = save_final_model(
        trainer.accelerator.unwrap_model(trainer.model),
        output_dir,
        merge=model_args.stage == 2 and not model_args.keep_adapter,
        processor=processor,
    )
    trainer.card_info = card_info(model, model_args, data_args, training_args, summary, trainer)
    if trainer.is_world_process_zero():
        trainer.create_model_card()
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        if not model_args.keep_checkpoints:
            for checkpoint in output_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
    if training_args.push_to_hub:
        if final_model is not None:  # rank 0: upload the saved (merged, whole) weights, not the adapter or shards
            trainer.model = trainer.model_wrapped = final_model
        trainer.push_to_hub(commit_message=f"LLaMo stage {model_args.stage}")


def print_summary(summary: dict, skipped: SkipReport) -> None:
    print(f"\nLLaMo stage {summary['stage']} done in {summary['seconds']} s -> {summary['output_dir']}")
    print(f"  examples: {summary['train_examples']} train, {summary['eval_examples']} eval; steps: {summary['steps']}")
    print(f"  trainable parameters: {summary['trainable_parameters']}")
    print(f"  rows skipped: {skipped.total}")
    for line in skipped.lines():
        print(f"    {line}")


# ------------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Run one stage from command-line arguments; `callbacks` go to the trainer. Returns the run's summary."""
    model_args, data_args, training_args = make_parser().parse_args_and_config(argv)
    check_arguments(model_args, data_args, training_args)
    quiet_progress_bars()  # datasets' bars, in a log file (the summary counts the examples)
    started = time.time()

    model, processor, peft_config = build_model(model_args, training_args)
    datasets = load_datasets(data_args, training_args, processor)
    timer = StepTimer()  # step time, tokens/s, peak GPU memory -> training_summary.json
    trainer = make_trainer(model, processor, peft_config, datasets, training_args, [timer, *(callbacks or [])])
    trainable = trainable_parameters(trainer.model)

    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)  # newest complete one
    result = trainer.train(resume_from_checkpoint=resume)
    if datasets.eval is not None:  # the held-out loss of the final weights, for the summary and the model card
        trainer.evaluate()

    summary = {
        "output_dir": training_args.output_dir,
        "stage": model_args.stage,
        "train_examples": len(datasets.train),
        "eval_examples": datasets.eval_examples,
        "skipped": datasets.skipped.to_dict(),
        "trainable_parameters": trainable,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.time() - started, 1),
        "model_arguments": asdict(model_args),
        "datasets": data_args.datasets,
        "log_history": trainer.state.log_history,
        "timing": timer.report(),
    }
    save(trainer, model, processor, model_args, data_args, summary)
    if trainer.is_world_process_zero():
        print_summary(summary, datasets.skipped)
    # No `trainer.end()` (TRL's scripts call it): destroying the process group made a DeepSpeed ZeRO-2 CPU run's second
    # rank abort at exit in one of five runs here ("terminate called without an active exception").
    return summary


def cli() -> None:
    """Console entry point `llamo-train` (the same as `python train_sft.py`)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
