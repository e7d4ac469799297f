"""Shared helpers of the benchmarks: data, machine description, interleaved timing, tables.

The machines these run on are shared and noisy, so every benchmark compares methods *side by side in one run*:
the work is cut into small chunks and the methods take turns on each chunk (in a rotating order), repeated;
the reported numbers are medians over the repeats, and ratios are taken within each repeat before the median.
"""

from __future__ import annotations

import csv
import os
import pathlib
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


ROOT = pathlib.Path(__file__).resolve().parent.parent  # the model files are importable: the project is installed (-e .)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ChEBI-20 validation split in the team's shared data folder (next to the repository), and the shipped extract that
# holds exactly its first 2,000 rows (data/SOURCE.md), used when the shared folder is absent (e.g. a user's clone).
SHARED_CHEBI20 = ROOT.parent / "shared" / "data" / "chebi20" / "validation.txt"
SHIPPED_CHEBI20 = ROOT / "data" / "chebi20_smiles.tsv"


def load_chebi20_examples(limit: int) -> tuple[list[dict[str, str]], str]:
    """`limit` ChEBI-20 examples `{"smiles", "answer"}` for training benchmarks: the shared folder's descriptions
    (cut at 300 characters) when present, otherwise a short synthetic answer (the repository ships no prose)."""
    if SHARED_CHEBI20.is_file():
        with SHARED_CHEBI20.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))[:limit]
        examples = [{"smiles": row["SMILES"].replace("\\\\", "\\"), "answer": row["description"][:300]} for row in rows]
        return examples, f"{SHARED_CHEBI20} (first {limit} rows, descriptions cut at 300 characters)"
    smiles, source = load_chebi20_smiles(limit)
    examples = [{"smiles": text, "answer": f"The molecule is written {text[:60]} in SMILES."} for text in smiles]
    return examples, f"{source}, synthetic answers"


def load_chebi20_smiles(limit: int = 2000) -> tuple[list[str], str]:
    """The first `limit` SMILES of ChEBI-20 validation and a description of where they came from."""
    if SHARED_CHEBI20.is_file():
        with SHARED_CHEBI20.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        # the ChEBI-20 files double every backslash of a SMILES
        return [row["SMILES"].replace("\\\\", "\\") for row in rows[:limit]], f"{SHARED_CHEBI20} (first {limit} rows)"
    with SHIPPED_CHEBI20.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [row["smiles"] for row in rows[:limit]], f"{SHIPPED_CHEBI20.relative_to(ROOT)} (shared folder absent)"


def machine_description() -> str:
    """CPU model, cores and library versions, for the header of every table."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average {load}"
    )


def interleaved_timings(
    methods: dict[str, Callable[[Sequence[Any]], Any]], items: Sequence[Any], chunk_size: int, repeats: int, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds each method takes over all `items`, once per repeat.

    Within a repeat the items are processed `chunk_size` at a time and the methods take turns on every chunk, in a
    fresh (seeded) random order each time, so a change of machine load falls on all of them alike and no method
    always runs right after the same other one.
    """
    names = list(methods)
    totals = {name: [0.0] * repeats for name in names}
    chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]
    order = random.Random(seed)
    for repeat in range(repeats):
        for chunk in chunks:
            for name in order.sample(names, len(names)):
                start = time.perf_counter()
                methods[name](chunk)
                totals[name][repeat] += time.perf_counter() - start
    return totals


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over repeats of the per-repeat ratio (ratios are taken side by side, then summarised)."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


@dataclass
class Target:
    """A measured ratio and its target: `ratio <= limit` (or `>=` when `at_least`); `limit=None` reports only."""

    name: str
    ratio: float
    limit: float | None
    at_least: bool = False
    unit: str = "x"

    @property
    def met(self) -> bool:
        if self.limit is None:
            return True
        return self.ratio >= self.limit if self.at_least else self.ratio <= self.limit

    def row(self) -> list[str]:
        if self.limit is None:
            return [self.name, f"{self.ratio:.2f}{self.unit}", "-", "info"]
        sign = ">=" if self.at_least else "<="
        return [self.name, f"{self.ratio:.2f}{self.unit}", f"{sign} {self.limit:.2f}{self.unit}", "met" if self.met else "MISSED"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal and pasteable into the docs)."""
    cells = [[str(cell) for cell in header]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


# run_all.py sets this to a file where every benchmark appends its target rows, for the closing summary.
SUMMARY_ENV = "LLAMO_BENCHMARK_SUMMARY"


def print_targets(targets: Sequence[Target]) -> None:
    rows = [target.row() for target in targets]
    print(format_table(["target", "measured", "goal", "status"], rows))
    summary = os.environ.get(SUMMARY_ENV)
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.writelines("\t".join(row) + "\n" for row in rows)


def print_header(title: str, command: str) -> None:
    print(f"\n## {title}\n")
    print(f"command: `{command}`")
    print(f"machine: {machine_description()}\n")


# The "small config" of the generation / training / memory benchmarks: a Llama of width 512 and 8 layers behind
# LLaMo's full-size graph side (5-layer GIN of width 300, 28 graph tokens, 6-layer projector MLP), so the graph
# overhead is measured against a language model far smaller than the real 7B one (a pessimistic ratio).
SMALL_TEXT_CONFIG = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=2048,
)


def build_small_llamo(seed: int = 0, **overrides):
    """(model, processor): a randomly initialized LLaMo with `SMALL_TEXT_CONFIG` and the shipped tiny tokenizer."""
    from llamo.builder import build_llamo_from_config
    from llamo.tiny import load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    text_config = tiny_llama_config(tokenizer, **SMALL_TEXT_CONFIG)
    return build_llamo_from_config(text_config, tokenizer, seed=seed, **overrides)


def bare_language_model(llamo):
    """A plain `LlamaForCausalLM` holding the same weights as LLaMo's language model and lm_head."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llamo.config.text_config)
    model.model.load_state_dict(llamo.model.language_model.state_dict())
    model.lm_head.load_state_dict(llamo.lm_head.state_dict())
    model.generation_config = llamo.generation_config
    return model.to(llamo.dtype)


def text_only_inputs(inputs: dict, graph_token_id: int, filler_token_id: int) -> dict:
    """The same token batch without molecules: every graph-token slot becomes an ordinary token (same lengths)."""
    from configuration_llamo import GRAPH_INPUT_NAMES

    text = {name: value for name, value in inputs.items() if name not in GRAPH_INPUT_NAMES}
    input_ids = text["input_ids"].clone()
    input_ids[input_ids == graph_token_id] = filler_token_id
    text["input_ids"] = input_ids
    if "labels" in text:
        text["labels"] = text["labels"].clone()
    return text


def chat_batch(processor, smiles: Sequence[str], question: str = "Describe this molecule.", answers: Sequence[str] | None = None):
    """Chat-template inputs, one molecule per conversation. Without `answers`: generation prompts, left padded.
    With `answers`: training examples, right padded, with `labels` on the answer tokens only (-100 elsewhere)."""
    import torch

    conversations = []
    for index, molecule in enumerate(smiles):
        messages = [{"role": "user", "content": [{"type": "molecule", "smiles": molecule}, {"type": "text", "text": question}]}]
        if answers is not None:
            messages.append({"role": "assistant", "content": answers[index]})
        conversations.append(messages)
    if answers is None:
        return dict(
            processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left"},
            )
        )
    # Token ids as lists, then tensors here: transformers realigns the assistant masks token by token, and over
    # tensors (return_tensors="pt") that loop took ~60% of this data path (pyinstrument), over lists a few percent.
    encoded = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        processor_kwargs={"padding": True, "padding_side": "right"},
    )
    inputs = {name: value for name, value in encoded.items() if isinstance(value, torch.Tensor)}  # graph inputs
    inputs["input_ids"] = torch.tensor(encoded["input_ids"])
    inputs["attention_mask"] = torch.tensor(encoded["attention_mask"])
    inputs["labels"] = torch.where(torch.tensor(encoded["assistant_masks"], dtype=torch.bool), inputs["input_ids"], -100)
    return inputs


def add_thread_argument(parser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine, two OpenMP threads collapse under outside "
        "load, which would time the scheduler instead of the models; use the core count on an idle machine)",
    )


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# Stage-2 training as the training benchmark measures it (also run by the memory benchmark).
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")


def stage2_llamo(model):
    """Stage-2 trainables: projector fully (saved with the adapter), LoRA on the language model's q_proj / v_proj."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(target_modules=r"^model\.language_model\..*\.(q_proj|v_proj)$", modules_to_save=["projector"], **LORA)
    peft_model = get_peft_model(model, config)
    peft_model.train()
    assert not model.model.graph_encoder.training and not any(p.requires_grad for p in model.model.graph_encoder.parameters())
    return peft_model


def train_step_fn(model, batches: list[dict], learning_rate: float = 1e-4):
    """A step function over the batch with the given index: forward with labels, backward, AdamW step."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)

    def step(indices):
        for index in indices:
            optimizer.zero_grad(set_to_none=True)
            loss = model(**batches[index]).loss
            loss.backward()
            optimizer.step()

    return step
