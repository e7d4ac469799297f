"""Training: LLaMo's stage-2 step against the same language model + LoRA without graphs, and the data path.

    python benchmarks/bench_training.py [--repeats 10] [--batch_size 8] [--collate MODULE:FUNCTION] [--bf16]
    python benchmarks/bench_training.py --llm smollm2 [--bf16] [--repeats 10] [--batch_size 8]

Stage 2 (as train_sft.py): graph encoder frozen and in eval mode, projector trained, PEFT LoRA (r=8, alpha=32,
dropout 0.05) on the language model's q_proj / v_proj. The baseline is a `LlamaForCausalLM` with the same weights
and the same LoRA, stepping on the same token batches with every graph slot replaced by an ordinary token. Both use
AdamW; their steps are interleaved.

Data path: raw examples (SMILES, question, answer) -> model inputs, through a collate function: by default
`LlamoProcessor.apply_chat_template` (featurization, chat template, tokenization, tensors) with the featurization
cache off. `--collate module:function` plugs in another one with the same signature,
`collate(examples: list[dict], processor) -> dict[str, Tensor]`.

`--llm smollm2` (or any causal-LM folder): LLaMo built around the real LLM (`common.build_benchmark_llamo`), and every
timed step includes its data path: raw examples -> collate (featurization cache cleared before each) -> forward ->
backward -> AdamW. Three sides take turns in a seeded random order on the same examples:
  stage 1   as train_sft.py stage 1 (its `set_trainable`): GIN + projector trained, the LLM frozen, no LoRA;
  stage 2   as scripts/train_smollm2.py stage 2 (train_sft.py's `set_trainable` + `lora_config` with
            --train_graph_encoder): projector + GIN trained (PEFT modules to save), LoRA r 16, alpha 32, dropout 0.05
            on every linear layer of the LLM;
  bare      the LLM's causal-LM class with the same weights and the same LoRA, on the same tokens (graph slots
            replaced by an ordinary token, `common.text_only_inputs`); its data path is the same collate through a
            processor that writes the same prompt without featurizing graphs (SMILES text only, as a text model's).
`--bf16` puts forward + backward in `torch.autocast("cpu", dtype=torch.bfloat16)` (weights fp32, as train_sft.py
--bf16 true on the CPU) for every side. First, each side runs `--rss_steps` steps alone in its own process, for its
peak RSS: the process's (benchmarks/peak_rss.py, build included) and that of the training steps alone (the kernel's
high-water mark, reset after the build).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import json
import os
import pathlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from common import (
    LLM_LORA,
    LORA,
    TRAINING_MALLOC,
    Target,
    add_llm_argument,
    add_thread_argument,
    bare_language_model,
    build_benchmark_llamo,
    build_small_llamo,
    data_step_fn,
    example_batches,
    filler_token_id,
    format_table,
    llamo_for_stage,
    llm_label,
    load_chebi20_examples,
    load_collate,
    print_header,
    print_targets,
    set_threads,
    stage2_llamo,
    stage_lora_config,
    text_only_inputs,
    train_step_fn,
)


if TYPE_CHECKING:
    pass  # imported where used: peft imports bitsandbytes, whose import-time notice the
    # llamo package filters (llamo/quiet.py) only once llamo is imported, which common.py's helpers do first


def lora_bare(model):
    model.requires_grad_(False)
    from peft import LoraConfig, get_peft_model

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


# ------------------------------------------------------------------------------------------- --llm: a real LLM

SIDES = ("stage1", "stage2", "bare")


def precision(bf16: bool) -> str:
    return "bf16 autocast, fp32 weights" if bf16 else "fp32"


def bare_with_lora(bare, llamo):
    """The bare LLM with stage 2's LoRA (same hyperparameters and layers; nothing else trained)."""
    config = stage_lora_config(llamo)
    prefix, bare_prefix = r"^model\.language_model\.", r"^model\."
    assert config.target_modules.startswith(prefix), config.target_modules
    config = dataclasses.replace(config, target_modules=bare_prefix + config.target_modules[len(prefix) :], modules_to_save=None)
    bare.requires_grad_(False)
    from peft import get_peft_model

    return get_peft_model(bare, config).train()


def text_only_processor(processor):
    """A copy of `processor` that writes the same prompts (SMILES text and graph-token slots) but featurizes no graph:
    a text model's data path (parse, prompt SMILES, chat template, tokenization) on the same tokens."""
    from featurization_llamo import featurize_smiles

    text = copy.copy(processor)

    def featurize(smiles: str):
        _, shown = featurize_smiles(
            smiles,
            with_graph=False,
            isomeric=processor.isomeric_smiles,
            max_length=processor.smiles_max_length,
            max_smiles_length=processor.max_input_smiles_length,
            max_atoms=processor.max_atoms,
        )
        return None, shown

    text.featurize = featurize
    return text


def side_inputs(side: str, llamo, processor):
    """(processor, to_model_inputs) of a side's data path: LLaMo's as is; the bare model's without graph features,
    its slots made ordinary tokens (not supervised, as LLaMo never supervises them)."""
    if side != "bare":
        return processor, lambda batch: batch
    graph_token_id, filler = llamo.config.graph_token_id, filler_token_id(processor.tokenizer)

    def to_text(batch):
        text = text_only_inputs(batch, graph_token_id, filler)
        text["labels"][batch["input_ids"] == graph_token_id] = -100
        return text

    return text_only_processor(processor), to_text


def build_sides(args: argparse.Namespace, sides: tuple[str, ...]):
    """(models by side, processor, LLaMo, description): LLaMo around `--llm` for the stages and the bare LLM + LoRA
    with the same weights. Stage 2 trains a copy (PEFT wraps the model in place)."""
    torch.manual_seed(0)
    llamo, processor, description = build_benchmark_llamo(args.llm, seed=0)
    models = {}
    if "bare" in sides:
        models["bare"] = bare_with_lora(bare_language_model(llamo), llamo)
    if "stage2" in sides:
        models["stage2"] = llamo_for_stage(copy.deepcopy(llamo) if "stage1" in sides else llamo, 2)
    if "stage1" in sides:
        models["stage1"] = llamo_for_stage(llamo, 1)
    return models, processor, llamo, description


def read_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", pathlib.Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_side_alone(args: argparse.Namespace) -> None:
    """(Run as its own process by `side_peak_rss`.) Build one side, run `--rss_steps` steps, write its RSS after the
    build and the peak of the steps alone to `--rss_json`. Quiet: stdout is dropped, stderr goes next to the JSON."""
    json_path = pathlib.Path(args.rss_json)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(json_path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    models, processor, llamo, _ = build_sides(args, (args.rss_side,))
    model = models[args.rss_side]
    collate_processor, to_inputs = side_inputs(args.rss_side, llamo, processor)
    del models, llamo  # the bare side keeps only its own copy of the weights
    batches, _ = example_batches(args)
    step = data_step_fn(model, load_collate(args.collate), collate_processor, to_inputs, batches, args.bf16)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed build memory back, so it is not counted as the side's
    reset = reset_peak_rss()
    after_build = read_status_mib("VmRSS")
    for index in range(args.rss_steps):
        step(index % args.num_batches)
    peak = read_status_mib("VmHWM") if reset else None
    json_path.write_text(json.dumps({"side": args.rss_side, "after_build_mib": after_build, "training_peak_mib": peak}))


def side_peak_rss(args: argparse.Namespace, side: str, folder: pathlib.Path) -> dict:
    """`measure_side_alone` in a new process, under benchmarks/peak_rss.py (the process's peak, build included).

    peak_rss.py runs as a process of its own, a small one: a child's `ru_maxrss` starts at the RSS of the process
    that spawned it (Linux carries the spawning memory's high-water mark into the new program), so spawned from
    this one, which holds three models, every side read the same ~4 GB."""
    json_path, rss_path = folder / f"{side}.json", folder / f"{side}.rss.json"
    here = pathlib.Path(__file__).resolve().parent
    command = [
        sys.executable, str(here / "peak_rss.py"), "--json", str(rss_path), "--",
        sys.executable, str(here / "bench_training.py"), "--llm", args.llm, "--batch_size", str(args.batch_size),
        "--num_batches", str(args.num_batches), "--threads", str(args.threads), "--rss_side", side,
        "--rss_steps", str(args.rss_steps), "--rss_json", str(json_path),
        *(["--bf16"] if args.bf16 else []), *(["--collate", args.collate] if args.collate else []),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not json_path.is_file():
        log = json_path.with_suffix(".log")
        tail = (log.read_text(errors="replace") if log.is_file() else "") + result.stderr
        raise RuntimeError(f"the peak-RSS run of side {side} failed (exit status {result.returncode}):\n{tail[-3000:]}")
    process = json.loads(rss_path.read_text())
    return {**json.loads(json_path.read_text()), "process_peak_mib": process["peak_rss_mib"], "wall_s": process["wall_seconds"]}


def llm_benchmark(args: argparse.Namespace, command: str) -> list[Target]:
    """Stage 1, stage 2 and the bare LLM + LoRA around a real LLM, data path included, interleaved; and peak RSS."""
    memory = {}
    if args.rss_steps > 0:  # first, while this process holds no model (the machine's memory goes to one side at a time)
        with tempfile.TemporaryDirectory() as folder:
            memory = {side: side_peak_rss(args, side, pathlib.Path(folder)) for side in SIDES}
    models, processor, llamo, description = build_sides(args, SIDES)
    collate = load_collate(args.collate)
    batches, source = example_batches(args)
    data_paths = {side: side_inputs(side, llamo, processor) for side in SIDES}
    # the same tokens on every side: the bare model's data path gives LLaMo's batch with the slots made ordinary
    lengths = []
    for examples in batches:
        llamo_batch = collate(examples, processor)
        bare_processor, to_text = data_paths["bare"]
        bare_batch, expected = to_text(collate(examples, bare_processor)), to_text(llamo_batch)
        assert all(torch.equal(bare_batch[name], expected[name]) for name in ("input_ids", "attention_mask", "labels"))
        lengths.append(llamo_batch["input_ids"].shape[1])
    steps = {side: data_step_fn(models[side], collate, *data_paths[side], batches, args.bf16) for side in SIDES}
    for step in steps.values():  # warm-up: AdamW state, allocator, tokenizer
        step(0)
        step(1 % args.num_batches)
    totals, data = {side: [] for side in SIDES}, {side: [] for side in SIDES}
    order = random.Random(0)
    for turn in range(args.repeats):  # one step each per turn, on the same batch, in a fresh random order
        for side in order.sample(SIDES, len(SIDES)):
            start = time.perf_counter()
            data[side].append(steps[side](turn % args.num_batches))
            totals[side].append(time.perf_counter() - start)
    model_only = {side: [total - part for total, part in zip(totals[side], data[side])] for side in SIDES}

    label = llm_label(args.llm)
    print_header(f"{label}Training: stage-1 and stage-2 steps vs the language model + LoRA alone", command)
    malloc = ", ".join(f"{name}={os.environ[name]}" for name in TRAINING_MALLOC if name in os.environ) or "glibc defaults"
    trainable = {side: sum(p.numel() for p in models[side].parameters() if p.requires_grad) for side in SIDES}
    print(
        f"models: {description}; stage 2 and bare: LoRA {LLM_LORA} on every linear layer of the LLM\n"
        f"batch {args.batch_size}, padded lengths {lengths}, data {source}; {precision(args.bf16)}; malloc: {malloc}; "
        f"every step = collate (featurization cache cleared) + forward + backward + AdamW; {args.repeats} steps each "
        f"after 2 warm-up, in a seeded random order per turn; trainable parameters {trainable}\n"
    )
    rows = [
        [
            side,
            f"{statistics.median(totals[side]) * 1e3:.0f}",
            f"{statistics.median(data[side]) * 1e3:.0f}",
            f"{statistics.median(model_only[side]) * 1e3:.0f}",
            f"{args.batch_size / statistics.median(totals[side]):.2f}",
        ]
        for side in SIDES
    ]
    print(format_table(["side", "ms per step (median)", "of which data path ms", "model ms", "samples/s"], rows))
    print()

    def ratio(times: dict[str, list[float]], side: str) -> float:
        return statistics.median(mine / bare for mine, bare in zip(times[side], times["bare"]))

    targets = []
    for stage in (1, 2):
        side = f"stage{stage}"
        targets += [
            Target(f"{label}stage-{stage} step incl. data path, LLaMo / bare LM + LoRA", ratio(totals, side), 1.10),
            Target(f"{label}stage-{stage} step, model only (no data path), LLaMo / bare", ratio(model_only, side), None),
        ]
    if memory:

        def mib(value: float | None) -> str:
            return "n/a" if value is None else f"{value:,.0f}"

        print(f"Peak RSS: each side alone in its own process, {args.rss_steps} steps after its build\n")
        print(
            format_table(
                ["side", "RSS after build MiB", "peak RSS of the steps MiB", "process peak MiB (peak_rss.py)"],
                [
                    [side, mib(m["after_build_mib"]), mib(m["training_peak_mib"]), mib(m["process_peak_mib"])]
                    for side, m in memory.items()
                ],
            )
        )
        print()
        key = "training_peak_mib" if all(m["training_peak_mib"] for m in memory.values()) else "process_peak_mib"
        for stage in (1, 2):
            targets.append(
                Target(
                    f"{label}peak RSS of the steps, stage {stage} / bare",
                    memory[f"stage{stage}"][key] / memory["bare"][key],
                    None,
                )
            )
    print_targets(targets)
    return targets


def main(argv: list[str] | None = None) -> list[Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_batches", type=int, default=4, help="distinct batches the steps cycle through")
    parser.add_argument("--data_examples", type=int, default=512, help="examples for the data-path rate (small model)")
    parser.add_argument("--collate", default=None, help="MODULE:FUNCTION, collate(examples, processor) -> dict of tensors")
    parser.add_argument("--bf16", action="store_true", help="forward + backward in bf16 autocast on the CPU (weights fp32)")
    parser.add_argument(
        "--rss_steps", type=int, default=3, help="--llm: steps each side runs alone in its own process for its peak RSS (0: skip)"
    )
    parser.add_argument("--rss_side", choices=SIDES, default=None, help=argparse.SUPPRESS)  # that process (internal)
    parser.add_argument("--rss_json", default=None, help=argparse.SUPPRESS)
    add_llm_argument(parser)
    add_thread_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    command = "python benchmarks/bench_training.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.rss_side is not None:
        measure_side_alone(args)
        return []
    if args.llm is not None:
        return llm_benchmark(args, command)
    return small_benchmark(args, command)


def small_benchmark(args: argparse.Namespace, command: str) -> list[Target]:
    """The small random model: LLaMo's stage-2 step vs the bare LM + LoRA on pre-collated batches, and the data path."""
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
    steps = {
        "llamo": train_step_fn(llamo_peft, batches, bf16=args.bf16),
        "bare": train_step_fn(bare_peft, bare_batches, bf16=args.bf16),
    }
    for step in steps.values():  # warm-up: AdamW state, allocator
        step([0, 1 % args.num_batches])
    order = [[index % args.num_batches] for index in range(args.repeats)]
    timings = {name: [] for name in steps}
    for turn, indices in enumerate(order):  # one step each per turn, the order alternating
        for name in list(steps) if turn % 2 == 0 else list(steps)[::-1]:
            start = time.perf_counter()
            steps[name](indices)
            timings[name].append(time.perf_counter() - start)

    print_header("Training: stage-2 step vs the language model + LoRA alone", command)
    lengths = [batch["input_ids"].shape[1] for batch in batches]
    trainable = {
        name: sum(p.numel() for p in model.parameters() if p.requires_grad)
        for name, model in (("llamo", llamo_peft), ("bare", bare_peft))
    }
    print(
        f"batch {args.batch_size}, padded lengths {lengths}, data {source}; {precision(args.bf16)}; {args.repeats} steps each "
        "after 2 warm-up, "
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
