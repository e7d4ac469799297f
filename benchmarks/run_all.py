"""Run every benchmark, one process each, and close with a summary of all targets.

    python benchmarks/run_all.py [--quick] [--threads N] [--llm smollm2|FOLDER]

`--quick` shrinks every benchmark (a smoke run of a few minutes; its numbers are too noisy to report). `--llm` also
runs the generation and training benchmarks around that real LLM (training in bf16 autocast with the recipe's malloc
settings, as scripts/train_smollm2.py trains).
Each benchmark prints its own table; see docs/performance.md for what they measure.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from common import SUMMARY_ENV, TRAINING_MALLOC, format_table, machine_description


HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS = {
    "bench_featurization.py": ([], ["--repeats", "1", "--num_molecules", "200"]),
    "bench_generation.py": ([], ["--repeats", "1", "--new_tokens", "8", "--batch_sizes", "1", "2"]),
    "bench_training.py": ([], ["--repeats", "2", "--num_batches", "2", "--data_examples", "32"]),
    "bench_memory.py": ([], ["--train_steps", "40", "--generate_calls", "40"]),
}
# With --llm: the same side-by-side measurements around the real LLM (its name is appended to these arguments).
LLM_BENCHMARKS = {
    "bench_generation.py": ([], ["--repeats", "1", "--new_tokens", "8", "--batch_sizes", "1"]),
    "bench_training.py": (
        ["--bf16"],
        ["--bf16", "--repeats", "1", "--batch_size", "2", "--num_batches", "2", "--rss_steps", "1"],
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that everything runs")
    parser.add_argument("--threads", type=int, default=None, help="passed to the model benchmarks (their default: 1)")
    parser.add_argument("--llm", default=None, help="also measure around this LLM: smollm2 or a causal-LM folder")
    args = parser.parse_args()
    runs = [(script, full, quick, {}) for script, (full, quick) in BENCHMARKS.items()]
    if args.llm is not None:
        for script, (full, quick) in LLM_BENCHMARKS.items():
            malloc = TRAINING_MALLOC if script == "bench_training.py" else {}
            runs.append((script, [*full, "--llm", args.llm], [*quick, "--llm", args.llm], malloc))

    print(f"# LLaMo benchmarks\n\nmachine: {machine_description()}")
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        summary = pathlib.Path(folder) / "targets.tsv"
        environment = {**os.environ, SUMMARY_ENV: str(summary), "HF_HUB_OFFLINE": "1"}
        for script, full, quick, extra_environment in runs:
            command = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
            if args.threads is not None and script != "bench_featurization.py":
                command += ["--threads", str(args.threads)]
            start = time.perf_counter()
            result = subprocess.run(command, env={**environment, **extra_environment})
            print(f"\n({script}: {time.perf_counter() - start:.0f} s, exit status {result.returncode})", flush=True)
            failures += result.returncode != 0
        rows = [line.split("\t") for line in summary.read_text(encoding="utf-8").splitlines()] if summary.exists() else []
    print("\n## Summary of all targets\n")
    print(format_table(["target", "measured", "goal", "status"], rows))
    targets = [row for row in rows if row[-1] != "info"]
    missed = sum(row[-1] != "met" for row in targets)
    print(
        f"\n{len(targets) - missed} of {len(targets)} targets met; {failures} benchmark(s) failed to run"
        + (" (quick run: sizes too small to report)" if args.quick else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
