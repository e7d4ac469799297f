"""Does the graph matter? QM9 HOMO-LUMO gap as text, tiny LLaMo projector arms against SMILES-only, several seeds.

    python benchmarks/graph_benchmark.py [--output_dir outputs/graph_benchmark] [--seeds 0 1 2] [--arms none multilevel ...]

1. data      the shipped QM9 sample (`data/qm9_homo_lumo_gap.tsv`), gap questions only ("What is the HOMO-LUMO gap of
             this molecule in Hartree?" -> "0.2281"), split by molecule: `--dev_molecules` held out.
2. stage 0   one tiny Llama learns the training questions as text, the SMILES in the prompt (shared base LLM).
3. arms      for every seed and arm, one `train_sft.py` stage-2 run from that base LLM on the same questions, the
             SMILES always in the prompt: `none` (text only), `mlp_high`, `multilevel_no_motif`, `multilevel`, and the
             multilevel projector with `projector_attention=normed` (+ `graph_size_token`). The GIN is trained in stage 2
             (`--train_graph_encoder`, no caption stage: stage 1 sends almost no signal to the graph side here).
4. eval      each model answers the dev questions greedily (MAE, share of distinct answers) and, teacher-forced,
             gets its answer NLL with the true, shuffled and batch-mean graphs (`llamo.evaluation.graph_reliance`).
             A ridge probe on each graph model's tokens gives the ceiling of what those tokens hold about the gap.
5. baselines Morgan nearest-neighbour retrieval and the training mean.
6. report    `results.json` and `results.md` (mean +- sd over seeds, per arm) in `--output_dir`.

Finished runs are kept in `runs.json` and skipped when the command is repeated (so an interrupted benchmark resumes);
`--report_only` only redraws the report from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

import torch

from llamo.base_llm import pretrain_base_llm
from llamo.cli import load_model_and_processor
from llamo.evaluation import evaluate, evaluate_baseline, examples_from_conversations
from projectors_llamo import PROJECTOR_SPECS


ROOT = pathlib.Path(__file__).resolve().parent.parent


# arm -> (projector_type, LlamoConfig overrides beyond the tiny graph config)
ARMS = {
    "none": ("none", {}),
    "mlp_high": ("mlp_high", {}),
    "multilevel_no_motif": ("multilevel_no_motif", {}),
    "multilevel": ("multilevel", {}),
    "multilevel_normed": ("multilevel", {"projector_attention": "normed"}),
    "multilevel_normed_size": ("multilevel", {"projector_attention": "normed", "graph_size_token": True}),
}
QUESTION = "What is the HOMO-LUMO gap of this molecule in Hartree?"


def log(message: str) -> None:
    print(f"\n[graph-benchmark] {message}", flush=True)


def write_splits(source: pathlib.Path, data_dir: pathlib.Path, dev_molecules: int) -> dict[str, pathlib.Path]:
    """Gap-only TSVs (`smiles`, `gap`): the last `dev_molecules` molecules in a fixed hash order are the dev set."""
    import hashlib

    with source.open() as handle:
        rows = [(row["smiles"], row["gap"]) for row in csv.DictReader(handle, delimiter="\t")]
    rows.sort(key=lambda row: hashlib.sha256(row[0].encode()).hexdigest())
    parts = {"train": rows[:-dev_molecules], "dev": rows[-dev_molecules:]}
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        paths[name] = data_dir / f"qm9_gap_{name}.tsv"
        with paths[name].open("w") as handle:
            handle.write("smiles\tgap\n" + "".join(f"{smiles}\t{gap}\n" for smiles, gap in part))
    return paths


def load_split(path: pathlib.Path):
    from llamo.data import DataSource, load_source

    conversations, _ = load_source(DataSource(path=str(path), format="property"), seed=0)
    return examples_from_conversations(conversations)


def train_stage(argv: list[str]) -> dict:
    """One `train_sft.py` run, in its own process as printed; returns its summary (`training_summary.json`)."""
    print("$ python train_sft.py " + shlex.join(argv), flush=True)
    subprocess.run([sys.executable, str(ROOT / "train_sft.py"), *argv], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    output_dir = pathlib.Path(argv[argv.index("--output_dir") + 1])
    return json.loads((output_dir / "training_summary.json").read_text())


def train_arm(args, arm: str, seed: int, base_llm: pathlib.Path, train_spec: str, output: pathlib.Path) -> dict:
    from llamo.tiny import TINY_GRAPH_CONFIG

    projector_type, overrides = ARMS[arm]
    argv = [
        "--stage", "2", "--llm", str(base_llm), "--projector_type", projector_type, "--datasets", train_spec,
        "--output_dir", str(output), "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--max_train_samples", str(args.steps * args.batch_size), "--learning_rate", str(args.learning_rate),
        "--lr_scheduler_type", "cosine", "--warmup_steps", "20", "--logging_steps", "100", "--save_strategy", "no",
        "--lora_target_modules", "all-linear", "--lora_r", "16", "--lora_alpha", "32", "--max_length", "256",
        "--seed", str(seed),
    ]  # fmt: skip
    if PROJECTOR_SPECS[projector_type].uses_graph:
        fields = {**TINY_GRAPH_CONFIG, **overrides}
        argv += ["--config_overrides", ",".join(f"{key}={json.dumps(value)}" for key, value in fields.items())]
        argv += ["--train_graph_encoder"]
    return train_stage(argv)


@torch.no_grad()
def graph_token_features(model_dir: pathlib.Path, examples) -> torch.Tensor | None:
    """One feature vector per example from a model's graph tokens: all tokens concatenated (fixed count) or their
    mean and sum (one token per atom). None for a model without a graph."""
    model, processor = load_model_and_processor(model_dir, device="cpu")
    if model.model.projector is None:
        return None
    features = []
    for start in range(0, len(examples), 64):
        smiles = [example.smiles[0] for example in examples[start : start + 64]]
        inputs = processor(text=["<graph>"] * len(smiles), smiles=smiles, padding=True, return_tensors="pt")
        graph = {key: value for key, value in inputs.items() if key.startswith("graph_")}
        tokens = model.get_graph_features(**graph).graph_features
        if model.config.num_graph_tokens is not None:
            features.append(tokens.view(len(smiles), -1))
        else:
            counts = torch.bincount(graph["graph_node_batch"], minlength=len(smiles)).tolist()
            features.append(torch.stack([torch.cat([t.mean(0), t.sum(0)]) for t in tokens.split(counts)]))
    return torch.cat(features).double()


def ridge_probe(train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor, dev_y: torch.Tensor) -> dict:
    """Ridge regression on standardized features, its strength picked on the last 20% of the training rows."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    train_x, dev_x = (train_x - mean) / std, (dev_x - mean) / std
    y_mean = train_y.mean()

    def fit(x, y, alpha):
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        return torch.linalg.solve(x.T @ x + alpha * eye, x.T @ (y - y_mean))

    cut = int(0.8 * len(train_x))
    alphas = [10.0**power for power in range(-2, 5)]
    errors = [((train_x[cut:] @ fit(train_x[:cut], train_y[:cut], a) + y_mean) - train_y[cut:]).abs().mean() for a in alphas]
    alpha = alphas[int(torch.stack(errors).argmin())]
    prediction = dev_x @ fit(train_x, train_y, alpha) + y_mean
    residual = ((prediction - dev_y) ** 2).sum() / ((dev_y - dev_y.mean()) ** 2).sum()
    return {"probe_mae": float((prediction - dev_y).abs().mean()), "probe_r2": float(1 - residual), "probe_alpha": alpha}


def summarize(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def fmt(summary: dict | None, digits: int = 4) -> str:
    if summary is None:
        return "n/a"
    sd = f" ± {summary['sd']:.{digits}f}" if summary["sd"] is not None else ""
    return f"{summary['mean']:.{digits}f}{sd}"


def report(results: dict, args) -> str:
    metrics = [("mae", 4), ("answer_nll", 3), ("graph_reliance_shuffled", 3), ("graph_reliance_mean", 3),
               ("distinct_answer_share", 2), ("probe_mae", 4)]  # fmt: skip
    lines = [
        f"QM9 HOMO-LUMO gap (Hartree), {results['train_questions']} training questions, {results['dev_questions']} "
        f"held-out molecules; {args.steps} steps x {args.batch_size} per arm; seeds {args.seeds}; mean ± sd over seeds.",
        "",
        "| arm | MAE | answer NLL | reliance (shuffled) | reliance (mean graph) | distinct answers | probe MAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, summary in results["arms"].items():
        runs = summary["mae"]["n"]
        lines.append(
            f"| {arm} ({runs} seed{'s' * (runs > 1)}) | "
            + " | ".join(fmt(summary.get(metric), digits) for metric, digits in metrics)
            + " |"
        )
    for name, baseline in results["baselines"].items():
        lines.append(f"| {name} (baseline) | {baseline['mae']:.4f} | | | | {baseline['distinct_answer_share']:.2f} | |")
    if results["missing_runs"]:
        lines += ["", f"Not run: {', '.join(results['missing_runs'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=ROOT / "data" / "qm9_homo_lumo_gap.tsv")
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "outputs" / "graph_benchmark")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--steps", type=int, default=300, help="stage-2 steps per arm and seed")
    parser.add_argument("--stage0_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--dev_molecules", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report_only", action="store_true", help="summarize the runs already in --output_dir, train nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out, started = args.output_dir, time.time()

    log("1/6 data: gap questions, split by molecule")
    paths = write_splits(args.data, out / "data", args.dev_molecules)
    train_examples, dev_examples = load_split(paths["train"]), load_split(paths["dev"])
    assert all(example.question == QUESTION for example in train_examples + dev_examples)

    log("2/6 stage 0: the shared base LLM learns the training questions as text")
    base_llm = out / "tiny-llm"
    if not (base_llm / "config.json").exists() and not args.report_only:
        pretrain_base_llm(base_llm, [f"property:{paths['train']}"], args.stage0_steps, seed=0)

    train_y = torch.tensor([float(e.reference) for e in train_examples], dtype=torch.float64)
    dev_y = torch.tensor([float(e.reference) for e in dev_examples], dtype=torch.float64)
    runs_file = out / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    for seed in args.seeds:
        for arm in args.arms:
            key = f"{arm}/seed{seed}"
            if key in runs or args.report_only:
                continue
            log(f"3-4/6 arm {arm}, seed {seed}")
            model_dir = out / "models" / f"{arm}-seed{seed}"
            tick = time.time()
            summary = train_arm(args, arm, seed, base_llm, f"property:{paths['train']}", model_dir)
            train_seconds = time.time() - tick
            result = evaluate(str(model_dir), dev_examples, out / "eval" / key, batch_size=32, max_new_tokens=10)
            entry = {k: v for k, v in result["tasks"]["property"].items() if isinstance(v, (int, float)) or v is None}
            entry.update(train_loss=summary["train_loss"], train_seconds=round(train_seconds, 1))
            features = graph_token_features(model_dir, train_examples + dev_examples)
            if features is not None:
                entry.update(ridge_probe(features[: len(train_examples)], train_y, features[len(train_examples) :], dev_y))
            runs[key] = entry
            runs_file.write_text(json.dumps(runs, indent=2))
            print(json.dumps({key: entry}, indent=2), flush=True)

    log("5/6 baselines: Morgan retrieval and the training mean")
    from llamo.baselines import MorganRetrieval, TrainMean

    baselines = {}
    for baseline in (MorganRetrieval(), TrainMean()):
        tasks = evaluate_baseline(baseline, train_examples, dev_examples, out / "eval" / baseline.name)["tasks"]
        baselines[baseline.name] = tasks["property"]

    log("6/6 report")
    arms = {}
    for arm in args.arms:
        entries = [runs[f"{arm}/seed{seed}"] for seed in args.seeds if f"{arm}/seed{seed}" in runs]
        if entries:
            keys = [k for k in entries[0] if all(isinstance(e.get(k), (int, float)) for e in entries)]
            arms[arm] = {k: summarize([e[k] for e in entries]) for k in keys}
    missing = [f"{arm}/seed{seed}" for arm in args.arms for seed in args.seeds if f"{arm}/seed{seed}" not in runs]
    results = {
        "missing_runs": missing,
        "command": "python benchmarks/graph_benchmark.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size,
        "train_questions": len(train_examples), "dev_questions": len(dev_examples),
        "arms": arms, "baselines": baselines, "runs": runs, "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    table = report(results, args)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    return results


if __name__ == "__main__":
    main()
