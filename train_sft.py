"""Train LLaMo with TRL's SFTTrainer: stage 1 (graph-language alignment) and stage 2 (instruction tuning, LoRA).

    # stage 1: build LLaMo around a causal LM, train the GIN and the projector, the LLM frozen
    python train_sft.py --stage 1 --llm meta-llama/Llama-2-7b-chat-hf --datasets caption:chebi20/train.txt \\
        --output_dir llamo-stage1

    # stage 2: start from the stage-1 folder, freeze the GIN, train the projector and LoRA adapters
    python train_sft.py --stage 2 --init_from llamo-stage1 --datasets instructions.jsonl iupac:names.tsv@0.3 \\
        --output_dir llamo

Runs the same under `python`, `torchrun` and `accelerate launch`. Every SFTConfig / TrainingArguments option
works (`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`, `--bf16`, `--push_to_hub`,
`--hub_model_id`, `--resume_from_checkpoint`, ...). The output folder is a Hub model repository: weights (LoRA
merged unless `--keep_adapter`), config with `auto_map`, processor, tokenizer, chat template, code files, and
a model card written from the run.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import LoraConfig
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer, TrlParser

from configuration_llamo import PROJECTOR_SPECS, PROJECTOR_TYPES, LlamoConfig
from llamo.data import DataSource, LlamoDataCollator, SkipReport, encode_dataset, load_mixture, split_by_molecule
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor
from llamo.tiny import build_tiny_llamo


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
    train_input_embeddings: bool = field(
        default=False, metadata={"help": "Stage 1: also train the LLM's input embeddings (the released code does)."}
    )
    train_graph_encoder: bool = field(
        default=False, metadata={"help": "Stage 2: also train the GIN (frozen by default, as in LLaMo)."}
    )
    no_smiles_in_prompt: bool = field(
        default=False, metadata={"help": "Show molecules as graph tokens only, without their SMILES text (saved with the processor)."}
    )
    lora_r: int = field(default=8, metadata={"help": "Stage 2: LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "Stage 2: LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Stage 2: LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Stage 2: LLM linear layers to adapt, by name ('all-linear' for every one)."},
    )
    keep_adapter: bool = field(default=False, metadata={"help": "Stage 2: save a PEFT adapter instead of merged weights."})
    license: str = field(default="apache-2.0", metadata={"help": "License written in the model card."})


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
    """A new LLaMo whose language model (and lm_head) are the weights of `llm`; the GIN and projector start from
    scratch. The tokenizer gets a `<graph>` special token (and `<pad>` if it has none); embeddings are resized."""
    tokenizer = AutoTokenizer.from_pretrained(llm)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if "<graph>" not in tokenizer.all_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<graph>"]}, replace_extra_special_tokens=False)
    llm_config = AutoConfig.from_pretrained(llm)
    config = LlamoConfig(
        text_config=llm_config.to_dict(),
        graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"),
        projector_type=model_args.projector_type,
        **parse_config_overrides(model_args.config_overrides),
    )
    # Load the LLM's checkpoint straight into LLaMo: its backbone keys become `model.language_model.*`.
    prefix = AutoModelForCausalLM._model_mapping[type(llm_config)].base_model_prefix
    model = LlamoForConditionalGeneration.from_pretrained(
        llm, config=config, key_mapping={rf"^{prefix}\.": "model.language_model."}, dtype=model_args.dtype
    )
    # The checkpoint we write is in LLaMo's own layout: do not rename the keys back to the LLM's on save.
    model._weight_conversions = []
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    processor = LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=config.num_graph_tokens)
    return model, processor


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
    if model_args.init_from is not None:
        if model_args.stage == 1:
            raise ValueError("--init_from continues a stage-1 model in stage 2; stage 1 builds a new one (--llm)")
        model = LlamoForConditionalGeneration.from_pretrained(model_args.init_from, dtype=model_args.dtype)
        # the folder is a LLaMo repository (config.json with auto_map): its tokenizer loads through it
        return model, LlamoProcessor.from_pretrained(model_args.init_from, trust_remote_code=True)
    spec = PROJECTOR_SPECS.get(model_args.projector_type)
    if model_args.stage == 1 and spec is not None and not spec.uses_graph:
        raise ValueError("stage 1 trains the graph encoder and projector: a projector_type 'none' model goes to stage 2 directly")
    if model_args.llm is None:
        return build_tiny_llamo(projector_type=model_args.projector_type, **parse_config_overrides(model_args.config_overrides))
    return build_llamo_around_llm(model_args.llm, model_args)


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
    language_model = model.model.language_model
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in language_model.named_modules() if isinstance(module, nn.Linear)})
    targets = linear_names if model_args.lora_target_modules == ["all-linear"] else model_args.lora_target_modules
    unknown = sorted(set(targets) - set(linear_names))
    if unknown:
        raise ValueError(f"--lora_target_modules {unknown} are not linear layers of the language model; it has {linear_names}")
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=rf"^model\.language_model\..*\.({'|'.join(map(re.escape, targets))})$",
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


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A [LLaMo](https://arxiv.org/abs/2411.00871) model (molecular-graph assistant): a GIN encodes the molecule, a
{{ projector }} projector turns it into {{ graph_tokens }} graph tokens, and the language model `{{ language_model }}`
answers. Trained with `train_sft.py` of the LLaMo-on-transformers code (TRL `SFTTrainer`), stage {{ stage }}
({{ stage_name }}).

## Usage

```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{{ repo }}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{{ repo }}", trust_remote_code=True)
messages = [{"role": "user", "content": [
    {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
    {"type": "text", "text": "Describe this molecule."}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=128)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
{% if adapter %}
This folder holds a PEFT LoRA adapter (and the trained projector) on top of `{{ adapter_base }}`; load it with
`peft.AutoPeftModelForCausalLM.from_pretrained(path, trust_remote_code=True)`, or merge it.
{% endif %}
## Training

| | |
|---|---|
| stage | {{ stage }} ({{ stage_name }}) |
| trained | {{ trained }} |
| data | {{ data }} |
| examples | {{ train_examples }} train, {{ eval_examples }} held out |
| rows skipped | {{ skipped_total }}{% if skipped %}: {{ skipped }}{% endif %} |
| steps / epochs | {{ steps }} / {{ epochs }} |
| learning rate, batch | {{ learning_rate }}, {{ batch_size }} per device x {{ accumulation }} accumulation x {{ world_size }} processes |
| final training loss | {{ train_loss }} |
| time | {{ seconds }} s on {{ hardware }} |
{% if results %}
## Results

{{ results }}
{% endif %}
"""


def write_model_card(output_dir: pathlib.Path, **info) -> None:
    data = ModelCardData(
        license=info["license"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["llamo", "chemistry", "molecules", "graph-neural-network", "trl", "sft"],
        datasets=info["dataset_ids"] or None,
        base_model=info["base_model"],
    )
    card = ModelCard.from_template(data, template_str=MODEL_CARD_TEMPLATE, **info)
    card.save(output_dir / "README.md")


def default_arguments(parser: TrlParser) -> None:
    """CPU-friendly defaults when there is no accelerator (SFTConfig defaults to bf16 and checkpointing)."""
    if not torch.cuda.is_available():
        # `use_cpu` is also what makes torchrun / accelerate launch use gloo DDP on CPUs. transformers >= 5.2x
        # renamed gradient checkpointing to activation checkpointing (the old name warns).
        checkpointing = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ else "gradient_checkpointing"
        parser.set_defaults(use_cpu=True, bf16=False, **{checkpointing: False})
    # Evaluation reports the loss; keeping every batch's logits for metrics is slow and unused here.
    parser.set_defaults(report_to="none", max_length=1024, save_total_limit=2, prediction_loss_only=True)


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Run one stage from command-line arguments; `callbacks` go to the trainer. Returns the run's summary."""
    parser = TrlParser((LlamoModelArguments, LlamoDataArguments, SFTConfig))
    default_arguments(parser)
    model_args, data_args, training_args = parser.parse_args_and_config(argv)
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
            eval_conversations, eval_skipped = load_mixture([DataSource.parse(s) for s in data_args.eval_datasets], seed=training_args.seed)
            skipped.update(eval_skipped)
        if data_args.max_train_samples is not None:
            conversations = conversations.select(range(min(data_args.max_train_samples, len(conversations))))
        train_dataset, encode_skipped = encode_dataset(conversations, processor, training_args.max_length, data_args.num_proc)
        skipped.update(encode_skipped)
        eval_dataset = None
        if eval_conversations is not None and len(eval_conversations) and training_args.eval_strategy != "no":
            eval_dataset, eval_skipped = encode_dataset(eval_conversations, processor, training_args.max_length, data_args.num_proc)
            skipped.update(eval_skipped)
    if len(train_dataset) == 0:
        raise ValueError(f"no usable training example; skipped rows: {skipped.lines()}")

    trainer = LlamoSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id),
        processing_class=processor,
        peft_config=lora_config(model, model_args) if model_args.stage == 2 else None,
        callbacks=callbacks,
    )
    trainable = trainable_parameters(trainer.model)
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "True", "true"):
        resume = get_last_checkpoint(training_args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume)

    final_model = trainer.model
    if model_args.stage == 2 and not model_args.keep_adapter:
        final_model = final_model.merge_and_unload()
    output_dir = pathlib.Path(training_args.output_dir)
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
    }
    trainer.card_info = card_info(model, model_args, data_args, training_args, summary, trainer)
    if trainer.is_world_process_zero():
        final_model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        trainer.create_model_card()
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary, skipped)
    if training_args.push_to_hub:
        trainer.model = trainer.model_wrapped = final_model  # upload the merged weights, not the adapter
        trainer.push_to_hub(commit_message=f"LLaMo stage {model_args.stage}")
    return summary


def card_info(model, model_args, data_args, training_args, summary, trainer) -> dict:
    config = model.config
    language_model = config.text_config._name_or_path or "tiny Llama (llamo/tiny.py)"
    is_hub_id = bool(config.text_config._name_or_path) and not pathlib.Path(language_model).exists()
    trained = {
        1: "GIN + projector" + (" + LLM input embeddings" if model_args.train_input_embeddings else ""),
        2: ("GIN + " if model_args.train_graph_encoder else "") + "projector + LoRA",
    }
    sources = [DataSource.parse(spec) for spec in data_args.datasets]
    return {
        "title": pathlib.Path(training_args.output_dir).name,
        "repo": training_args.hub_model_id or str(training_args.output_dir),
        "license": model_args.license,
        "language_model": language_model,
        "base_model": language_model if is_hub_id else None,
        "dataset_ids": [s.path for s in sources if not pathlib.Path(s.path).exists()],
        "projector": config.projector_type,
        "graph_tokens": config.num_graph_tokens if config.num_graph_tokens is not None else "one-per-atom",
        "stage": model_args.stage,
        "stage_name": "graph-language alignment" if model_args.stage == 1 else "instruction tuning",
        "trained": trained[model_args.stage] + f" (LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha})" * (model_args.stage == 2),
        "adapter": model_args.stage == 2 and model_args.keep_adapter,
        "adapter_base": model_args.init_from,
        "data": ", ".join(s.name + (f" @{s.weight}" if s.weight else "") for s in sources),
        "train_examples": summary["train_examples"],
        "eval_examples": summary["eval_examples"],
        "skipped_total": summary["skipped"]["total"],
        "skipped": ", ".join(f"{n} {reason}" for reason, n in summary["skipped"]["by_reason"].items()),
        "steps": summary["steps"],
        "epochs": round(trainer.state.epoch or 0, 2),
        "learning_rate": training_args.learning_rate,
        "batch_size": training_args.per_device_train_batch_size,
        "accumulation": training_args.gradient_accumulation_steps,
        "world_size": training_args.world_size,
        "train_loss": f"{summary['train_loss']:.4f}",
        "seconds": summary["seconds"],
        "hardware": "CPU" if training_args.use_cpu or not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "results": None,
    }


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
