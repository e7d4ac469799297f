"""Model cards (the Hub's README.md) for folders written by `train_sft.py` and scored by `llamo-eval`.

A card says what the model is, how to run it (Auto classes and the `molecule-text-to-text` pipeline), how it was
trained, its evaluation results (YAML `model-index` for the Hub and a table), its intended use and limitations,
and how to cite LLaMo. `base_model` is set only to a Hub id (the Hub rejects local paths); adapter folders are
marked `library_name: peft`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llamo.data import DataSource


CITATION = """@inproceedings{park2024llamo,
  title     = {LLaMo: Large Language Model-based Molecular Graph Assistant},
  author    = {Park, Jinyoung and Bae, Minseong and Ko, Dohwan and Kim, Hyunwoo J.},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024},
  url       = {https://arxiv.org/abs/2411.00871}
}"""

# Below this many language-model parameters the card says plainly that the model is a toy.
TINY_MODEL_PARAMETERS = 50_000_000

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
from transformers import pipeline

pipe = pipeline("molecule-text-to-text", model="{{ repo }}", trust_remote_code=True)
messages = [{"role": "user", "content": [
    {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
    {"type": "text", "text": "Describe this molecule."}]}]
print(pipe(messages, max_new_tokens=128)[0]["generated_text"][-1]["content"])
```

or with the Auto classes:

```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{{ repo }}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{{ repo }}", trust_remote_code=True)
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=128)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

The plain `text-generation` pipeline cannot featurize molecules: LLaMo's chat template refuses molecule items there.
{% if adapter %}
This folder holds a PEFT LoRA adapter (and the trained projector) on top of `{{ adapter_base }}`{% if adapter_relative %}
(a local folder, `{{ adapter_relative }}` from here){% endif %}; load it with
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True), path)`, or merge it.
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

## Evaluation
{% if results %}
| data | metric | value |
|---|---|---:|
{% for result in results %}| {{ result.dataset_name }} | {{ result.metric_name }} | {{ "%.4g" | format(result.metric_value) }} |
{% endfor %}{% else %}
No held-out evaluation was run (`--eval_fraction` or `--eval_datasets`, then `llamo-eval`).
{% endif %}
## Intended use and limitations

LLaMo answers questions about molecules given as graphs (and SMILES text): descriptions, names, computed
properties. It is a research model. Its answers are generated text, not measurements or safety assessments: check
every chemical statement before relying on it, and do not use it for medical, toxicological or regulatory decisions.
It knows only what its training data taught it; molecules unlike those data (other elements, sizes, salts) get
less reliable answers.
{% if tiny %}
**This is a tiny model** ({{ language_model_parameters }} language-model parameters) trained for {{ steps }} steps on a
CPU. It exists to test the code end to end: its answers are mostly wrong and its scores only show that training and
evaluation run. Do not read them as LLaMo's quality.
{% endif %}
## Citation

```bibtex
{{ citation }}
```
"""


def eval_results_from_log(log_history: list[dict], dataset_name: str) -> list[EvalResult]:
    """The last held-out loss the trainer logged, as a Hub `EvalResult` (empty when there was no evaluation)."""
    losses = [entry["eval_loss"] for entry in log_history if "eval_loss" in entry]
    if not losses:
        return []
    return [EvalResult(task_type="text-generation", dataset_type=dataset_name, dataset_name=dataset_name,
                       metric_type="loss", metric_name="held-out loss", metric_value=float(losses[-1]))]  # fmt: skip


def eval_results_from_evaluation(results: dict, dataset_name: str) -> list[EvalResult]:
    """`llamo-eval`'s results (metrics per task) as Hub `EvalResult`s, numbers only."""
    entries = []
    for task, metrics in results["tasks"].items():
        for metric, value in metrics.items():
            if metric in ("n", "family") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            entries.append(EvalResult(task_type="text-generation", dataset_type=dataset_name, dataset_name=f"{dataset_name} ({task})",
                                      metric_type=metric, metric_name=f"{task}: {metric}", metric_value=float(value)))  # fmt: skip
    return entries


def write_model_card(output_dir: pathlib.Path, **info: Any) -> None:
    """Render the card from `card_info`'s fields (plus `results`, a list of `EvalResult`) into output_dir/README.md."""
    results = info.get("results") or []
    data = ModelCardData(
        license=info["license"],
        library_name="peft" if info.get("adapter") else "transformers",
        pipeline_tag="text-generation",
        tags=["llamo", "chemistry", "molecules", "graph-neural-network", "trl", "sft"]
        + (["lora", "qlora"] if info.get("adapter") else []),
        datasets=info["dataset_ids"] or None,
        base_model=info["base_model"],
        model_name=info["title"] if results else None,
        eval_results=results or None,
    )
    card = ModelCard.from_template(data, template_str=MODEL_CARD_TEMPLATE, citation=CITATION, **{**info, "results": results})
    card.save(output_dir / "README.md")


def add_evaluation_to_card(folder: pathlib.Path, results: dict, dataset_name: str) -> None:
    """Append `llamo-eval`'s results to a model folder's card: `model-index` metadata and an evaluation table."""
    path = folder / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\n---\n")
    entries = eval_results_from_evaluation(results, dataset_name)
    card.data.eval_results = (card.data.eval_results or []) + entries
    card.data.model_name = card.data.model_name or folder.name
    rows = "\n".join(f"| {entry.dataset_name} | {entry.metric_type} | {entry.metric_value:.4g} |" for entry in entries)
    card.text += f"\n## Evaluation with llamo-eval ({dataset_name}, {results['examples']} examples)\n\n| data | metric | value |\n|---|---|---:|\n{rows}\n"
    card.save(path)


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not pathlib.Path(name).exists() and name.count("/") <= 1


def card_info(model, model_args, data_args, training_args, summary, trainer) -> dict:
    """The card's fields, from the run: model, arguments, data, summary, the trainer's log (held-out loss)."""
    config = model.config
    language_model = config.text_config._name_or_path or "tiny Llama (llamo/tiny.py)"
    stage2 = ("GIN + " if getattr(model_args, "train_graph_encoder", False) else "") + "projector + LoRA"
    trained = {1: "GIN + projector" + (" + LLM input embeddings" if model_args.train_input_embeddings else ""), 2: stage2}
    if getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False):
        trained[2] = stage2 + " over a " + ("4-bit" if model_args.load_in_4bit else "8-bit") + " language model (QLoRA)"
    sources = [DataSource.parse(spec) for spec in data_args.datasets]
    adapter = model_args.stage == 2 and model_args.keep_adapter
    init_from = model_args.init_from
    language_model_parameters = sum(
        p.numel() for n, p in model.named_parameters() if ".language_model." in n or n.startswith("lm_head")
    )
    base_model = language_model if _is_hub_id(config.text_config._name_or_path) else None
    if adapter and _is_hub_id(init_from):
        base_model = init_from
    data_name = ", ".join(s.name for s in sources)
    return {
        "title": pathlib.Path(training_args.output_dir).name,
        "repo": training_args.hub_model_id or str(training_args.output_dir),
        "license": model_args.license,
        "language_model": language_model,
        "base_model": base_model,
        "dataset_ids": [s.path for s in sources if not pathlib.Path(s.path).exists()],
        "projector": config.projector_type,
        "graph_tokens": config.num_graph_tokens if config.num_graph_tokens is not None else "one-per-atom",
        "stage": model_args.stage,
        "stage_name": "graph-language alignment" if model_args.stage == 1 else "instruction tuning",
        "trained": trained[model_args.stage]
        + f" (LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha})" * (model_args.stage == 2),
        "adapter": adapter,
        "adapter_base": init_from,
        "adapter_relative": os.path.relpath(init_from, training_args.output_dir)
        if adapter and init_from and pathlib.Path(init_from).exists()
        else None,
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
        "results": eval_results_from_log(summary.get("log_history", []), f"held out from {data_name}"),
        "tiny": language_model_parameters < TINY_MODEL_PARAMETERS,
        "language_model_parameters": f"{language_model_parameters:,}",
    }


__all__ = ["CITATION", "MODEL_CARD_TEMPLATE", "add_evaluation_to_card", "card_info", "write_model_card"]
