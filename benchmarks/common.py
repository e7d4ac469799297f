"""Shared helpers of the benchmarks: data, machine description, interleaved timing, tables.

The machines these run on are shared and noisy, so every benchmark compares methods *side by side in one run*:
the work is cut into small chunks and the methods take turns on each chunk (in a rotating order), repeated;
the reported numbers are medians over the repeats, and ratios are taken within each repeat before the median.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import os
import pathlib
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:  # torch and peft are imported where used (peft after llamo: see bench_training.py)
    import torch
    from peft import LoraConfig

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
    methods: dict[str, Callable[[Sequence[Any]], Any]],
    items: Sequence[Any],
    chunk_size: int,
    repeats: int,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds each method takes over all `items`, once per repeat (`clock`: wall time, or `time.process_time` for
    this process's CPU time).

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
                start = clock()
                methods[name](chunk)
                totals[name][repeat] += clock() - start
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
    """The benchmark's title, command and machine; progress bars off in a log (`llamo.quiet`)."""
    from llamo.quiet import quiet_progress_bars

    quiet_progress_bars()
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


# `--llm`: the same measurements around a real language model, by default SmolLM2-135M-Instruct (Llama, width 576,
# 30 layers, vocabulary 49,152) as `llamo.smollm2` converts it; the graph side is LLaMo-SmolLM2's (multilevel
# projector, normed attention), randomly initialized (its values do not change the work).
LLM_GRAPH_SIDE = dict(projector_type="multilevel", config_overrides={"projector_attention": "normed"})


def add_llm_argument(parser) -> None:
    parser.add_argument(
        "--llm",
        default=None,
        help="measure around a real language model instead of the small random one: 'smollm2' (SmolLM2-135M-Instruct, "
        "converted once by llamo.smollm2) or a causal-LM folder / Hub id; fp32 weights, LLaMo-SmolLM2's graph side",
    )


def resolve_llm(llm: str) -> str:
    """The folder (or Hub id) that `--llm` names: `smollm2` is the converted SmolLM2-135M-Instruct folder."""
    if llm.lower() == "smollm2":
        from llamo.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    return llm


def llm_label(llm: str | None) -> str:
    """The prefix of target names and titles for `--llm` runs (`"SmolLM2-135M-Instruct: "`), empty for the small model."""
    return "" if llm is None else f"{pathlib.PurePath(resolve_llm(llm)).name}: "


def build_benchmark_llamo(llm: str | None, seed: int = 0):
    """(model, processor, description): the small random LLaMo (`llm=None`), or one built around the `--llm` language
    model by `llamo.builder.build_llamo` (its own chat template, fp32, graph side `LLM_GRAPH_SIDE`)."""
    import torch

    if llm is None:
        model, processor = build_small_llamo(seed=seed)
        return model, processor, "small random Llama (SMALL_TEXT_CONFIG)"
    from llamo.builder import build_llamo

    folder = resolve_llm(llm)
    model, processor = build_llamo(folder, dtype=torch.float32, seed=seed, **LLM_GRAPH_SIDE)
    # The LLM's weights come memory-mapped from its safetensors file (at the file's offsets: not 64-byte aligned);
    # the bare model's (`bare_language_model`) are copies in process memory. A SmolLM2 decoding step took ~3% longer
    # over the mapped weights than over copies of them (batch 1, this CPU), so LLaMo gets copies too: the ratio then
    # compares the models, not where their weights live. Tied weights stay tied (one Parameter, copied once).
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.data = tensor.data.clone()
    return model, processor, f"{folder} ({type(model.model.language_model).__name__}), graph side {LLM_GRAPH_SIDE}"


def filler_token_id(tokenizer) -> int:
    """An ordinary token that stands in for the graph slots in the bare model's inputs: "C" (one token in the tiny
    and SmolLM2 vocabularies), else the first token "C" encodes to."""
    token_id = tokenizer.convert_tokens_to_ids("C")
    if token_id is None or token_id == tokenizer.unk_token_id:
        token_id = tokenizer("C", add_special_tokens=False)["input_ids"][0]
    return token_id


def bare_language_model(llamo):
    """The language model's own causal-LM class (`LlamaForCausalLM` for Llama / SmolLM2) holding the same weights as
    LLaMo's language model and lm_head, with the same attention implementation."""
    import copy

    from transformers import AutoModelForCausalLM

    text_config = copy.deepcopy(llamo.config.text_config)
    model = AutoModelForCausalLM.from_config(text_config, attn_implementation=text_config._attn_implementation)
    model.base_model.load_state_dict(llamo.model.language_model.state_dict())
    model.get_output_embeddings().load_state_dict(llamo.lm_head.state_dict())
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


def autocast_context(bf16: bool):
    """bf16 autocast on the CPU (as `train_sft.py --bf16 true` trains there; the GIN computes in fp32 by itself), or
    nothing."""
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_step_fn(model, batches: list[dict], learning_rate: float = 1e-4, bf16: bool = False):
    """A step function over the batch with the given index: forward with labels, backward (in bf16 autocast with
    `bf16`), AdamW step."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)

    def step(indices):
        for index in indices:
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(bf16):
                loss = model(**batches[index]).loss
                loss.backward()
            optimizer.step()

    return step


# ---------------------------------------------------------------------- the training step of the real-LLM benchmarks
# (bench_training.py --llm and bench_cpu_training.py)

QUESTION = "Describe this molecule."


def processor_collate(examples: list[dict[str, Any]], processor) -> dict[str, torch.Tensor]:
    """The default data path: chat template -> featurized, tokenized, padded tensors with answer-only labels."""
    return chat_batch(processor, [ex["smiles"] for ex in examples], QUESTION, [ex["answer"] for ex in examples])


def load_collate(spec: str | None) -> Callable:
    if spec is None:
        return processor_collate
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# scripts/train_smollm2.py trains with these: glibc keeps freed activation memory instead of unmapping it and
# page-faulting it in anew at every step (they act only at a process's start: set them in a child's environment)
TRAINING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}

# scripts/train_smollm2.py's LoRA: r 16 on every linear layer of the LLM
LLM_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")


# The two stages as train_sft.py trains them, written out here rather than imported from `llamo.sft`;
# tests/test_benchmarks.py checks that these two give what its `set_trainable` and `lora_config` give for
# `--lora_r 16 --lora_alpha 32 --lora_dropout 0.05 --lora_target_modules all-linear --train_graph_encoder`, as
# scripts/train_smollm2.py runs stage 2.
def stage_lora_config(llamo) -> LoraConfig:
    """Stage 2's LoRA: every linear layer of the language model; the projector and the GIN trained fully (saved)."""
    from peft import LoraConfig

    from llamo.builder import lora_target_regex

    target_regex, _ = lora_target_regex(llamo.model.language_model, ["all-linear"])
    return LoraConfig(target_modules=target_regex, modules_to_save=["projector", "graph_encoder"], **LLM_LORA)


def llamo_for_stage(llamo, stage: int):
    """`llamo` with a stage's trainable parts, training: stage 1 the GIN and the projector (the LLM frozen), stage 2
    those and LoRA."""
    llamo.requires_grad_(False)
    llamo.model.projector.requires_grad_(True)
    llamo.model.graph_encoder.requires_grad_(True)
    from peft import get_peft_model

    model = get_peft_model(llamo, stage_lora_config(llamo)) if stage == 2 else llamo
    return model.train()


def data_step_fn(model, collate, processor, to_inputs, example_batches: list[list[dict]], bf16: bool, learning_rate=1e-4):
    """A training step on the examples of batch `index`, data path included: collate (featurization cache cleared
    first: every step featurizes, as a collator over raw rows does), forward + backward (bf16 autocast with `bf16`),
    AdamW. Returns the seconds spent in the data path."""
    import torch

    from featurization_llamo import featurize_smiles

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)

    def step(index: int) -> float:
        featurize_smiles.cache_clear()
        start = time.perf_counter()
        batch = to_inputs(collate(example_batches[index], processor))
        data_seconds = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(bf16):
            loss = model(**batch).loss
            loss.backward()
        optimizer.step()
        return data_seconds

    return step


def example_batches(args) -> tuple[list[list[dict]], str]:
    examples, source = load_chebi20_examples(args.batch_size * args.num_batches)
    return [examples[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.num_batches)], source


# Molecules and questions of the serving test and benchmark: small drugs, salts, charges, a single atom.
SERVING_SMILES = (
    "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CC(=O)Nc1ccc(O)cc1",
    "C", "c1ccccc1", "[Na+].[Cl-]", "C[C@@H]([NH3+])C(=O)[O-]", "OCC(O)CO", "CCN(CC)CC", "O=C=O", "CC#N",
    "c1ccc2ccccc2c1", "C1CCCCC1", "CC(C)(C)O", "NC(=O)N", "OC(=O)CCC(=O)O", "CCOC(=O)C", "c1ccncc1", "C=CC=C",
    "CS(C)=O", "ClC(Cl)Cl", "OC1=CC=CC=C1", "CC(=O)C", "N#Cc1ccccc1", "O=S(=O)(O)O", "CCCCCCCC", "c1ccsc1",
    "CN(C)C=O", "OC(=O)c1ccccc1O", "C1=CC=C(C=C1)N", "N.N.Cl[Pt]Cl",
)  # fmt: skip
SERVING_QUESTIONS = (
    "Describe this molecule.", "What is the IUPAC name of this molecule?", "Is this molecule soluble in water?",
    "List its functional groups.", "Which of these molecules is larger?", "Compare these two molecules.",
)  # fmt: skip


def serving_conversations(count: int) -> list[list[dict]]:
    """`count` distinct conversations with one or two molecules each; every fifth is multi-turn (a molecule in
    each user turn, an assistant answer between them)."""
    conversations = []
    for index in range(count):
        first = SERVING_SMILES[index % len(SERVING_SMILES)]
        second = SERVING_SMILES[(7 * index + 3) % len(SERVING_SMILES)]
        question = SERVING_QUESTIONS[index % len(SERVING_QUESTIONS)]
        if index % 5 == 4:
            conversations.append(
                [
                    {"role": "user", "content": [{"type": "molecule", "smiles": first}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": "It is a small organic molecule."},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "And this one?"}, {"type": "molecule", "smiles": second}],
                    },
                ]
            )
        elif index % 2:
            content = [
                {"type": "molecule", "smiles": first},
                {"type": "molecule", "smiles": second},
                {"type": "text", "text": question},
            ]
            conversations.append([{"role": "user", "content": content}])
        else:
            conversations.append(
                [{"role": "user", "content": [{"type": "molecule", "smiles": first}, {"type": "text", "text": question}]}]
            )
    return conversations
