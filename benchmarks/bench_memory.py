"""Memory: resident memory over many training steps and generate calls (a leak check).

    python benchmarks/bench_memory.py [--train_steps 500] [--generate_calls 1000]

The tiny LLaMo (llamo/tiny.py) trains with the stage-2 recipe of bench_training.py and then answers one molecule per
generate call (processor included), cycling through a fixed set of molecules. RSS is sampled (after gc.collect() and
glibc's malloc_trim) after every pass over the training batches and every 50 generate calls. The first 20% of each run is warm-up (optimizer state, allocator pools, the featurization
cache filling up); growth is measured from there to the end, and the slope is a least-squares fit over that span.
Peak RSS of a whole command: see benchmarks/peak_rss.py.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
from collections.abc import Callable

import psutil
import torch

from common import (
    Target,
    add_thread_argument,
    chat_batch,
    format_table,
    load_chebi20_examples,
    print_header,
    print_targets,
    set_threads,
)


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim, which hands freed heap pages back to the OS (a no-op elsewhere)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


_TRIM = _malloc_trim()


def rss_mib() -> float:
    """RSS after collecting garbage and trimming the allocator, so it follows live memory, not allocator caches."""
    gc.collect()
    _TRIM()
    return psutil.Process().memory_info().rss / 2**20


def sample_rss(step: Callable[[int], None], iterations: int, every: int) -> list[tuple[int, float]]:
    """Run `step(i)` for i < iterations, recording (i, RSS MiB) before the first and after every `every` calls."""
    samples = [(0, rss_mib())]
    for index in range(iterations):
        step(index)
        if (index + 1) % every == 0:
            samples.append((index + 1, rss_mib()))
    return samples


def growth(samples: list[tuple[int, float]], warmup_fraction: float = 0.2) -> tuple[float, float, float]:
    """(mean RSS of the first quarter after warm-up, growth from it to the mean of the last quarter in MiB,
    least-squares slope over the span after warm-up in KiB per iteration). Quarter means, not single samples:
    RSS of a training loop swings by tens of MiB from step to step (batches of different lengths, allocator pools)."""
    last = samples[-1][0]
    kept = [(index, rss) for index, rss in samples if index >= warmup_fraction * last]
    xs, ys = [index for index, _ in kept], [rss for _, rss in kept]
    quarter = max(len(ys) // 4, 1)
    first, final = sum(ys[:quarter]) / quarter, sum(ys[-quarter:]) / quarter
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs) or 1.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / denominator
    return first, final - first, slope * 1024


def main(argv: list[str] | None = None) -> list[Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_steps", type=int, default=500)
    parser.add_argument("--generate_calls", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_molecules", type=int, default=64, help="distinct molecules the loops cycle through")
    parser.add_argument("--max_growth_mib", type=float, default=5.0, help="allowed growth after warm-up")
    add_thread_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    from llamo.tiny import build_tiny_llamo

    from common import stage2_llamo, train_step_fn

    examples, source = load_chebi20_examples(args.num_molecules)
    model, processor = build_tiny_llamo(seed=0)
    batches = [
        chat_batch(processor, [ex["smiles"] for ex in chunk], "Describe this molecule.", [ex["answer"] for ex in chunk])
        for chunk in (examples[i : i + args.batch_size] for i in range(0, len(examples), args.batch_size))
    ]
    peft_model = stage2_llamo(model)
    train = train_step_fn(peft_model, batches)
    # sampled after every pass over the batches, i.e. always after the same batch: activation sizes vary by batch
    train_samples = sample_rss(lambda i: train([i % len(batches)]), args.train_steps, len(batches))

    generator = peft_model.merge_and_unload().eval()

    def generate(index: int) -> None:
        inputs = chat_batch(processor, [examples[index % len(examples)]["smiles"]])
        with torch.inference_mode():
            generator.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)

    generate_samples = sample_rss(generate, args.generate_calls, max(args.generate_calls // 20, 1))

    print_header(
        "Memory: RSS over training steps and generate calls",
        "python benchmarks/bench_memory.py " + " ".join(argv or sys.argv[1:]),
    )
    print(f"tiny LLaMo (llamo/tiny.py), {len(examples)} molecules from {source}, training batch {args.batch_size}\n")
    rows, targets = [], []
    for name, samples in (("training steps", train_samples), ("generate calls", generate_samples)):
        start, grown, slope = growth(samples)
        rows.append(
            [
                name,
                samples[-1][0],
                f"{samples[0][1]:.1f}",
                f"{start:.1f}",
                f"{samples[-1][1]:.1f}",
                f"{grown:+.2f}",
                f"{slope:+.2f}",
            ]
        )
        targets.append(Target(f"{name}: RSS growth after warm-up", grown, args.max_growth_mib, unit=" MiB"))
    print(
        format_table(
            [
                "loop",
                "iterations",
                "RSS at start MiB",
                "after warm-up MiB (quarter mean)",
                "at end MiB",
                "growth MiB (quarter means)",
                "slope KiB/iteration",
            ],
            rows,
        )
    )
    print()
    print("RSS samples (iteration: MiB):")
    for name, samples in (("training", train_samples), ("generate", generate_samples)):
        print(f"  {name}: " + ", ".join(f"{index}: {rss:.1f}" for index, rss in samples))
    print()
    print_targets(targets)
    return targets


if __name__ == "__main__":
    main()
