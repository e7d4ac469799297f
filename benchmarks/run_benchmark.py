"""Quality benchmark on real data: tiny LLaMo models trained on the CPU against retrieval and text-only baselines.

    python benchmarks/run_benchmark.py --shared ../shared/data --output_dir outputs/benchmark [--readme docs/results.md]

1. data      deterministic train / dev splits of ChEBI-20 captions, PubChem IUPAC names and QM9 HOMO/LUMO/gap
             (`benchmarks/quality/data.py`), written under `--output_dir` (captions never enter the repository).
2. baselines `morgan_nn` (answer of the most similar training molecule) and `train_mean`, on the full train splits.
3. stage 0   one tiny Llama learns the training conversations as text (`run_tiny_pipeline.pretrain_base_llm`): the
             shared "base LLM", like Llama-2 for the paper.
4. ablation  for every seed and projector (`none`, `mlp_high`, `multilevel_no_motif`, `multilevel`): stage 1 on
             captions (graph projectors only) and multi-task stage 2 with `train_sft.py`, a fixed number of steps.
5. eval      every model answers every dev set (greedy), scored by `llamo.evaluation`.
6. report    `report/results.json`, `report/results.md`, `report/*.png` (`benchmarks/quality/report.py`), and with
             `--readme docs/results.md` the results page's generated block.

Each training stage is printed as the `train_sft.py` command that repeats it. Without the shared data the script
says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

import torch

from llamo.base_llm import pretrain_base_llm
from llamo.evaluation import evaluate, evaluate_baseline, load_examples
from projectors_llamo import PROJECTOR_SPECS

from quality.data import missing_sources, prepare_splits  # a sibling package: run as `python benchmarks/run_benchmark.py`
from quality.report import build_report, update_readme, write_report


ROOT = pathlib.Path(__file__).resolve().parent.parent


VARIANTS = ("none", "mlp_high", "multilevel_no_motif", "multilevel")
MAX_NEW_TOKENS = {"caption": 128, "iupac": 128, "property": 12}
MIX_WEIGHTS = {"caption": 0.4, "iupac": 0.3, "property": 0.3}


def log(message: str) -> None:
    print(f"\n[benchmark] {message}", flush=True)


def train_stage(argv: list[str]) -> dict:
    """One `train_sft.py` run, in its own process as printed; returns its summary (`training_summary.json`)."""
    print("$ python train_sft.py " + shlex.join(argv), flush=True)
    subprocess.run([sys.executable, str(ROOT / "train_sft.py"), *argv], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    output_dir = pathlib.Path(argv[argv.index("--output_dir") + 1])
    return json.loads((output_dir / "training_summary.json").read_text())


def common_training_arguments(args: argparse.Namespace, steps: int, seed: int) -> list[str]:
    return [
        "--max_steps", str(steps), "--max_train_samples", str(steps * args.batch_size),
        "--per_device_train_batch_size", str(args.batch_size), "--max_length", str(args.max_length),
        "--lr_scheduler_type", "cosine", "--warmup_steps", str(min(20, steps // 5)), "--logging_steps", "10",
        "--save_strategy", "no", "--seed", str(seed),
    ]  # fmt: skip


def train_variant(args, variant: str, seed: int, base_llm: pathlib.Path, splits, models: pathlib.Path) -> dict:
    """Stage 1 (graph projectors) and stage 2 of one projector type and seed; returns the runs' summaries."""
    from llamo.tiny import TINY_GRAPH_CONFIG

    mixture = [f"{splits[task].spec('train')}@{weight}" for task, weight in MIX_WEIGHTS.items()]
    lora = ["--lora_target_modules", "all-linear", "--lora_r", "16", "--lora_alpha", "32", "--learning_rate", str(args.stage2_lr)]
    runs, output = {}, models / f"{variant}-seed{seed}"
    if not PROJECTOR_SPECS[variant].uses_graph:  # text only: no stage 1
        start = ["--llm", str(base_llm), "--projector_type", variant]
    else:
        stage1 = models / f"{variant}-seed{seed}-stage1"
        graph = ",".join(f"{key}={value}" for key, value in TINY_GRAPH_CONFIG.items())
        runs["stage1"] = train_stage([
            "--stage", "1", "--llm", str(base_llm), "--projector_type", variant, "--config_overrides", graph,
            "--datasets", splits["caption"].spec("train"), "--learning_rate", str(args.stage1_lr), "--output_dir", str(stage1),
            *common_training_arguments(args, args.stage1_steps, seed),
        ])  # fmt: skip
        start = ["--init_from", str(stage1)]
    runs["stage2"] = train_stage([
        "--stage", "2", *start, "--datasets", *mixture, *lora, "--output_dir", str(output),
        *common_training_arguments(args, args.stage2_steps, seed),
    ])  # fmt: skip
    return runs


def evaluate_model(name: str, model: pathlib.Path, dev_sets: dict, out: pathlib.Path, batch_size: int) -> None:
    """One model on every dev set (greedy); results land in `out/<name>/<task>/`."""
    for task, examples in dev_sets.items():
        evaluate(str(model), examples, out / name / task, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS[task])


def evaluate_baselines(train_sets: dict, dev_sets: dict, out: pathlib.Path) -> None:
    """Every baseline, fitted on each task's whole train split; text is also scored with the tiny models' tokenizer."""
    from llamo.baselines import BASELINES
    from llamo.tiny import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    for name, baseline in BASELINES.items():
        for task, examples in dev_sets.items():
            evaluate_baseline(baseline(), train_sets[task], examples, out / name / task, tokenizer=tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "outputs" / "benchmark")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--stage0_steps", type=int, default=300, help="base LLM text pretraining (batch 16)")
    parser.add_argument("--stage1_steps", type=int, default=100)
    parser.add_argument("--stage2_steps", type=int, default=250)
    parser.add_argument("--batch_size", type=int, default=8, help="stages 1 and 2")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--stage1_lr", type=float, default=1e-3)
    parser.add_argument("--stage2_lr", type=float, default=2e-3)
    parser.add_argument("--dev_examples", type=int, default=200, help="dev questions per task (QM9: molecules / 3)")
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--qm9_train_fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--readme", type=pathlib.Path, default=None, help="also fill this results page (docs/results.md)")
    args = parser.parse_args(argv)

    missing = missing_sources(args.shared)
    if missing:
        print(f"The shared data is not there ({args.shared.resolve()}); missing: {', '.join(missing)}.\n"
              "Nothing was benchmarked. Pass its location with --shared.", file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(args.threads)
    out, started, timings = args.output_dir, time.time(), {}
    models, evaluations = out / "models", out / "eval"

    log(f"1/6 data: splits of {args.shared.resolve()}")
    splits = prepare_splits(args.shared, out / "data", args.qm9_train_fraction)
    dev_sets, train_sets = {}, {}
    for task, split in splits.items():
        limit = args.dev_examples * (3 if task == "property" else 1)  # QM9: three questions per molecule
        dev_sets[task] = load_examples([split.spec("dev")], max_examples=limit)[0]
        train_sets[task] = load_examples([split.spec("train")])[0]
        print(f"  {task}: {len(train_sets[task])} train questions, {len(dev_sets[task])} dev questions evaluated")

    log("2/6 baselines: Morgan nearest neighbour and training mean / most common answer")
    tick = time.time()
    evaluate_baselines(train_sets, dev_sets, evaluations)
    timings["baselines"] = time.time() - tick

    log(f"3/6 stage 0: the tiny base LLM learns the training conversations as text ({args.stage0_steps} steps)")
    tick = time.time()
    base_llm = models / "base-llm"
    pretrain_base_llm(base_llm, [f"{splits[task].spec('train')}@{w}" for task, w in MIX_WEIGHTS.items()], args.stage0_steps, 0)
    timings["stage0"] = time.time() - tick

    log(f"4/6 training: projectors {args.variants} x seeds {args.seeds}")
    training = {}
    tick = time.time()
    for seed in args.seeds:
        for variant in args.variants:
            summaries = train_variant(args, variant, seed, base_llm, splits, models)
            training[f"{variant}-seed{seed}"] = {
                stage: {key: summary[key] for key in ("steps", "seconds", "train_examples", "train_loss", "output_dir")}
                for stage, summary in summaries.items()
            }  # fmt: skip
    timings["training"] = time.time() - tick

    log("5/6 evaluation: every model on every dev set (greedy)")
    tick = time.time()
    for name in training:
        evaluate_model(name, models / name, dev_sets, evaluations, args.eval_batch_size)
    timings["evaluation"] = time.time() - tick
    timings["total"] = time.time() - started

    log("6/6 report")
    run = {
        "command": "python benchmarks/run_benchmark.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU",
        "settings": {key: str(value) if isinstance(value, pathlib.Path) else value for key, value in vars(args).items()},
        "max_new_tokens": MAX_NEW_TOKENS,
        "mixture_weights": MIX_WEIGHTS,
        "splits": json.loads((out / "data" / "splits.json").read_text()),
        "dev_questions": {task: len(examples) for task, examples in dev_sets.items()},
        "training": training,
        "seconds": {key: round(value, 1) for key, value in timings.items()},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2))
    report = build_report(out)
    markdown = write_report(report, out / "report")
    print("\n" + markdown)
    if args.readme is not None:
        update_readme(args.readme, markdown, out / "report")
        print(f"\nResults block updated: {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
