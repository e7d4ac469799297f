"""CPU training throughput of the real LLaMo-SmolLM2 recipe step, setting by setting (what each one buys).

    python benchmarks/bench_cpu_training.py [--llm smollm2] [--steps 4] [--rounds 1] [--threads 2]

The step is the recipe's stage 2 (scripts/train_smollm2.py: GIN + projector trained, LoRA r 16 on every linear
layer of SmolLM2; `bench_training.llamo_for_stage`) on batches of 8 ChEBI-20 examples, data path included (collate
with the featurization cache cleared, forward, backward, AdamW). Each setting runs in its own process (the malloc
settings only act at process start): 2 warm-up steps (timed separately: they hold torch.compile's compilation), then
`--steps` timed steps; with `--rounds` > 1 the settings take turns again in reversed order and the table shows
medians. Tokens/s counts the batch's non-padding tokens (prompt with its graph slots, and answer).

Settings, each adding one thing to the one before:
  fp32                 the weights' precision, glibc's default malloc (the recipe's first version)
  bf16                 forward + backward in torch.autocast("cpu", bfloat16), weights fp32 (train_sft.py --bf16 true)
  bf16+malloc          MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ raised, as scripts/train_smollm2.py sets them:
                       freed activation memory is kept instead of being unmapped and faulted in again at every step
  bf16+malloc+compile  the language model compiled (`module.compile()`, inductor) on top of that
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from common import TRAINING_MALLOC, add_llm_argument, format_table, print_header, set_threads


SETTINGS = {  # name: (environment, worker flags)
    "fp32": ({}, []),
    "bf16": ({}, ["--bf16"]),
    "bf16+malloc": (TRAINING_MALLOC, ["--bf16"]),
    "bf16+malloc+compile": (TRAINING_MALLOC, ["--bf16", "--compile"]),
}


def worker(args: argparse.Namespace) -> None:
    """(Its own process.) Build the stage-2 model, run the steps, print one JSON line of timings."""
    from common import build_benchmark_llamo, data_step_fn, example_batches, llamo_for_stage, load_collate

    torch.manual_seed(0)
    llamo, processor, _ = build_benchmark_llamo(args.llm, seed=0)
    model = llamo_for_stage(llamo, 2)
    if args.compile:
        llamo.model.language_model.compile()
    batches, _ = example_batches(argparse.Namespace(batch_size=8, num_batches=4))
    collate = load_collate(None)
    tokens = [int(collate(examples, processor)["attention_mask"].sum()) for examples in batches]
    step = data_step_fn(model, collate, processor, lambda batch: batch, batches, args.bf16)
    start = time.perf_counter()
    for index in range(2):
        step(index)
    warm_up = time.perf_counter() - start
    seconds, counted = [], []
    for index in range(args.steps):
        start = time.perf_counter()
        step(index % len(batches))
        seconds.append(time.perf_counter() - start)
        counted.append(tokens[index % len(batches)])
    setting = {"bf16": args.bf16, "compiled": args.compile, "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}
    print(json.dumps({"warm_up_s": warm_up, "step_s": seconds, "tokens": counted, "setting": setting}), flush=True)


def run_setting(args: argparse.Namespace, name: str) -> dict:
    environment, flags = SETTINGS[name]
    command = [sys.executable, __file__, "--worker", "--llm", args.llm, "--steps", str(args.steps),
               "--threads", str(args.threads), *flags]  # fmt: skip
    inherited = {key: value for key, value in os.environ.items() if key not in TRAINING_MALLOC}  # only the setting decides
    result = subprocess.run(command, capture_output=True, text=True, env={**inherited, **environment})
    if result.returncode != 0:
        raise RuntimeError(f"setting {name!r} failed (exit status {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """Runs the settings; returns each one's worker results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting and round (after 2 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the recipe uses every core)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    add_llm_argument(parser)
    args = parser.parse_args(argv)
    args.llm = args.llm or "smollm2"
    set_threads(args.threads)
    if args.worker:
        worker(args)
        return {}
    print_header(
        "CPU training throughput: the LLaMo-SmolLM2 recipe step, setting by setting",
        "python benchmarks/bench_cpu_training.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    runs = {name: [] for name in args.settings}
    for turn in range(args.rounds):
        for name in args.settings if turn % 2 == 0 else reversed(args.settings):
            runs[name].append(run_setting(args, name))
            print(f"round {turn + 1}: {name} done", file=sys.stderr, flush=True)
    rows, first_rate = [], None
    for name, results in runs.items():
        step = statistics.median(s for run in results for s in run["step_s"])
        rate = statistics.median(t / s for run in results for t, s in zip(run["tokens"], run["step_s"]))
        first_rate = first_rate or rate
        warm_up = statistics.median(run["warm_up_s"] for run in results)
        rows.append([name, f"{warm_up:.1f}", f"{step:.2f}", f"{rate:.0f}", f"{rate / first_rate:.2f}x"])
    print(format_table(["setting", "2 warm-up steps (s)", "step (s)", "tokens/s", f"vs {args.settings[0]}"], rows))
    print(f"\nstage-2 step of the recipe around {args.llm}, 8 ChEBI-20 examples per step, data path included; "
          f"{args.steps} timed steps x {args.rounds} round(s) per setting; torch threads {args.threads}.")  # fmt: skip
    return runs


if __name__ == "__main__":
    main()
