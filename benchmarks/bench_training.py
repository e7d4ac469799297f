"""Training: LLaMo's stage-2 step against the same language model + LoRA without graphs, and the data path.

    python benchmarks/bench_training.py [--repeats 10] [--batch_size 8] [--collate MODULE:FUNCTION]

Stage 2 (as train_sft.py): graph encoder frozen and in eval mode, projector trained, PEFT LoRA (r=8, alpha=32,
dropout 0.05) on the language model's q_proj / v_proj. The baseline is a `LlamaForCausalLM` with the same weights
and the same LoRA, stepping on the same token batches with every graph slot replaced by an ordinary token. Both use
AdamW; their steps are interleaved.

Data path: raw examples (SMILES, question, answer) -> model inputs, through a collate function: by default
`LlamoProcessor.apply_chat_template` (featurization, chat template, tokenization, tensors) with the featurization
cache off. `--collate module:function` plugs in another one with the same signature,
`collate(examples: list[dict], processor) -> dict[str, Tensor]`.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from common import (
    LORA,
    Target,
    add_thread_argument,
    bare_language_model,
    build_small_llamo,
    chat_batch,
    format_table,
    load_chebi20_examples,
    print_header,
    print_targets,
    set_threads,
    stage2_llamo,
    text_only_inputs,
    train_step_fn,
)


QUESTION = "Describe this molecule."


def processor_collate(examples: list[dict[str, Any]], processor) -> dict[str, torch.Tensor]:
    """The default data path: chat template -> featurized, tokenized, padded tensors with answer-only labels."""
    return chat_batch(processor, [ex["smiles"] for ex in examples], QUESTION, [ex["answer"] for ex in examples])


def load_collate(spec: str | None) -> Callable:
    if spec is None:
        return processor_collate
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def lora_bare(model):
    model.requires_grad_(False)
    peft_model = get_peft_model(model, LoraConfig(target_modules=r"^model\..*\.(q_proj|v_proj)$", **LORA))
    peft_model.train()
    return peft_model


def data_path_rate(collate: Callable, processor, examples: list[dict], batch_size: int, repeats: int) -> float:
    """Median samples per second that `collate` turns into model inputs (featurization cache cleared per repeat)."""
    from featurization_llamo import featurize_smiles

    rates = []
    for _ in range(repeats):
        featurize_smiles.cache_clear()
        start = time.perf_counter()
        for first in range(0, len(examples), batch_size):
            collate(examples[first : first + batch_size], processor)
        rates.append(len(examples) / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> list[Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_batches", type=int, default=4, help="distinct batches the steps cycle through")
    parser.add_argument("--data_examples", type=int, default=512, help="examples for the data-path rate")
    parser.add_argument("--collate", default=None, help="MODULE:FUNCTION, collate(examples, processor) -> dict of tensors")
    add_thread_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    llamo, processor = build_small_llamo(seed=0)
    bare = bare_language_model(llamo)
    filler = processor.tokenizer.convert_tokens_to_ids("C")
    examples, source = load_chebi20_examples(max(args.data_examples, args.batch_size * args.num_batches))
    collate = load_collate(args.collate)

    batches = [collate(examples[i * args.batch_size : (i + 1) * args.batch_size], processor) for i in range(args.num_batches)]
    bare_batches = []
    for batch in batches:
        text = text_only_inputs(batch, llamo.config.graph_token_id, filler)
        text["labels"][batch["input_ids"] == llamo.config.graph_token_id] = -100  # same supervised positions
        bare_batches.append(text)

    llamo_peft, bare_peft = stage2_llamo(llamo), lora_bare(bare)
    steps = {"llamo": train_step_fn(llamo_peft, batches), "bare": train_step_fn(bare_peft, bare_batches)}
    for step in steps.values():  # warm-up: AdamW state, allocator
        step([0, 1 % args.num_batches])
    order = [[index % args.num_batches] for index in range(args.repeats)]
    timings = {name: [] for name in steps}
    for turn, indices in enumerate(order):  # one step each per turn, the order alternating
        for name in list(steps) if turn % 2 == 0 else list(steps)[::-1]:
            start = time.perf_counter()
            steps[name](indices)
            timings[name].append(time.perf_counter() - start)

    print_header(
        "Training: stage-2 step vs the language model + LoRA alone",
        "python benchmarks/bench_training.py " + " ".join(argv or sys.argv[1:]),
    )
    lengths = [batch["input_ids"].shape[1] for batch in batches]
    trainable = {
        name: sum(p.numel() for p in model.parameters() if p.requires_grad)
        for name, model in (("llamo", llamo_peft), ("bare", bare_peft))
    }
    print(
        f"batch {args.batch_size}, padded lengths {lengths}, data {source}; fp32; {args.repeats} steps each after 2 warm-up, "
        f"alternating; trainable parameters {trainable}\n"
    )
    step_ratios = [llamo_time / bare_time for llamo_time, bare_time in zip(timings["llamo"], timings["bare"])]
    rows = [
        [name, f"{statistics.median(t) * 1e3:.0f}", f"{args.batch_size / statistics.median(t):.1f}"]
        for name, t in timings.items()
    ]
    print(format_table(["model", "ms per step (median)", "samples/s"], rows))
    print()

    data_rate = data_path_rate(collate, processor, examples[: args.data_examples], args.batch_size, repeats=3)
    train_rate = args.batch_size / statistics.median(timings["llamo"])
    name = args.collate or "LlamoProcessor.apply_chat_template (cache off)"
    print(
        format_table(
            ["data path", "samples/s", "training consumes samples/s"], [[name, f"{data_rate:,.0f}", f"{train_rate:.1f}"]]
        )
    )
    print()
    targets = [
        Target("stage-2 step time, LLaMo / bare LM + LoRA", statistics.median(step_ratios), 1.20),
        Target("data path samples/s / training samples/s", data_rate / train_rate, 5.0, at_least=True),
    ]
    print_targets(targets)
    return targets


if __name__ == "__main__":
    main()
