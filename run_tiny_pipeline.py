"""The main job: a tiny LLaMo trained end to end on the CPU from this repository's own data, in a few minutes.

    python run_tiny_pipeline.py [--output_dir outputs]

1. data      instruction data generated from the shipped SMILES (`llamo/instructions.py`) and the QM9 HOMO-LUMO
             gaps (a graph-dependent task); 10% of the molecules are held out of every stage (same split everywhere).
2. stage 0   a tiny Llama (the "base LLM") learns the text of the training conversations, SMILES included.
3. stage 1   LLaMo is built around it; the GIN and projector learn from descriptions, the LLM frozen.
4. stage 2   instruction tuning: projector + LoRA, and the GIN (`--train_graph_encoder`)  -> `outputs/llamo-tiny`.
5. baseline  the same base LLM through the same stage 2 with `projector_type none` (SMILES text, no graph).
6. eval      both answer the held-out questions (greedy): exact match on computed facts, gap MAE, and the graph
             model's reliance on its graph (answer NLL with true vs shuffled / batch-mean graphs); next to
             two baselines fitted on the training questions: Morgan nearest-neighbour retrieval and the most
             common training answer (training mean for properties) of the same kind of question.

Every training step is a printed `train_sft.py` command, runnable on its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import random
import subprocess
import sys
import time

from featurization_llamo import parse_smiles
from llamo.base_llm import HELD_OUT, pretrain_base_llm
from llamo.baselines import MorganRetrieval, TrainMean
from llamo.data import DataSource, is_held_out, load_source, split_by_molecule
from llamo.evaluation import evaluate, evaluate_baseline, examples_from_conversations
from llamo.instructions import generate_examples, read_smiles_column
from llamo.quiet import quiet_progress_bars
from llamo.tiny import TINY_GRAPH_CONFIG


ROOT = pathlib.Path(__file__).resolve().parent
# facts whose answers are short and exact (counts, yes/no, formula): scored by exact match
EXACT_FACTS = (
    "formula", "heavy_atoms", "rings", "aromatic_rings", "is_aromatic", "hbond_donors", "hbond_acceptors",
    "rotatable_bonds", "formal_charge", "stereocentres", "components", "motifs", "has_group",
)  # fmt: skip


def log(message: str) -> None:
    print(f"\n[pipeline] {message}", flush=True)


def make_data(data_dir: pathlib.Path, molecules: int, seed: int) -> dict[str, str]:
    """Generated questions (stage 2) and descriptions (stage 1) for the shipped molecules, as JSON Lines, and the QM9
    HOMO-LUMO gaps (`smiles`, `gap`: one property, so the steps it gets are enough for the graph to show)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    smiles = shipped_molecules(molecules)
    files = {"questions": data_dir / "questions.jsonl", "descriptions": data_dir / "descriptions.jsonl"}
    with files["questions"].open("w") as questions, files["descriptions"].open("w") as descriptions:
        for row in generate_examples(smiles, questions_per_molecule=4, multi_turn_fraction=0.2, descriptions=True, seed=seed):
            (descriptions if row["task"] == "description" else questions).write(json.dumps(row) + "\n")
    files["gap"] = qm9_gap_file(data_dir)
    return {name: str(path) for name, path in files.items()}


def qm9_gap_file(data_dir: pathlib.Path) -> pathlib.Path:
    """The shipped QM9 sample's `smiles` and `gap` columns (the `property` format asks one question per column)."""
    path = data_dir / "qm9_gap.tsv"
    with open(ROOT / "data" / "qm9_homo_lumo_gap.tsv") as source, path.open("w") as target:
        target.write(
            "smiles\tgap\n" + "".join(f"{row['smiles']}\t{row['gap']}\n" for row in csv.DictReader(source, delimiter="\t"))
        )
    return path


def shipped_molecules(count: int, max_heavy_atoms: int = 20) -> list[str]:
    """Small molecules from the shipped ChEBI-20, PubChem and QM9 SMILES: short prompts, so a CPU step is cheap."""
    smiles = []
    for name in ("chebi20_smiles.tsv", "pubchem_iupac_train.tsv", "qm9_homo_lumo_gap.tsv"):
        smiles += [s for s in read_smiles_column(ROOT / "data" / name) if parse_smiles(s).GetNumHeavyAtoms() <= max_heavy_atoms]
    return random.Random(0).sample(smiles, min(count, len(smiles)))


def stage2_sources(files: dict[str, str]) -> list[str]:
    """Computed-fact questions and QM9 HOMO-LUMO gaps, a quarter and three quarters: short answers a tiny model can
    learn in minutes (IUPAC naming is in the quality benchmark, `benchmarks/run_benchmark.py`). The graph's use shows
    after about 300 steps' worth of gap questions (graph benchmark), so the gaps get most of stage 2; the ~1,800
    training molecules' gaps repeat (`load_mixture` keeps the weights)."""
    return [f"messages:{files['questions']}@0.25", f"property:{files['gap']}@0.75"]


def train(arguments: list[str]) -> None:
    command = [sys.executable, str(ROOT / "train_sft.py"), *arguments]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def fact_examples(rows):
    """Single-question fact rows as examples whose task names the fact (`facts/rings`): scored, and answered by the
    baselines, per kind of fact."""
    rows = [
        {**row, "task": f"facts/{row['fact']}"} for row in rows if row.get("fact") in EXACT_FACTS and len(row["messages"]) == 2
    ]
    return examples_from_conversations(rows)


def held_out_examples(molecules: list[str], gap_file: pathlib.Path, per_task: dict[str, int], seed: int):
    """Questions about held-out molecules with checkable answers: new exact-answer fact questions and held-out QM9
    gaps."""
    held_out = [s for s in molecules if is_held_out([s], HELD_OUT)]
    facts = list(
        generate_examples(held_out, 2, multi_turn_fraction=0.0, descriptions=False, facts_subset=EXACT_FACTS, seed=seed + 1)
    )
    examples = fact_examples([{**row, "smiles": [row["smiles"]]} for row in facts[: per_task["facts"]]])
    _, held = qm9_split(gap_file, seed)
    return examples + examples_from_conversations(held.select(range(min(per_task["property"], len(held)))))


def training_examples(questions_file: pathlib.Path, gap_file: pathlib.Path, seed: int):
    """The training side of the same questions (held-out molecules excluded), for the baselines to answer from."""
    with open(questions_file) as handle:
        rows = [json.loads(line) for line in handle]
    rows = [{**row, "smiles": [row["smiles"]]} for row in rows if not is_held_out([row["smiles"]], HELD_OUT)]
    train, _ = qm9_split(gap_file, seed)
    return fact_examples(rows) + examples_from_conversations(train)


def qm9_split(gap_file: pathlib.Path, seed: int):
    """The QM9 gap questions, split into training and held-out molecules as in training."""
    conversations, _ = load_source(DataSource(path=str(gap_file), format="property"), seed=seed)
    return split_by_molecule(conversations, HELD_OUT)


def train_all(out: pathlib.Path, molecules: int, steps: int, seed: int, timings: dict) -> None:
    """Steps 1-5: data, stage 0, stage 1, stage 2, and the no-graph baseline (seconds per step into `timings`).
    Stage 2 and the baseline take `steps`, stage 0 half as many, stage 1 a quarter: with the SMILES in every prompt,
    aligning the graph on descriptions sends the graph side little signal (docs/results.md), so its time goes to stage 2."""
    log("1/6 data: generating instruction data from the shipped molecules")
    files = make_data(out / "data", molecules, seed)
    sources = stage2_sources(files)

    log("2/6 stage 0: the tiny base LLM learns the conversations as text")
    tick = time.time()
    pretrain_base_llm(out / "tiny-llm", [*sources, f"messages:{files['descriptions']}@0.25"], max(steps // 2, 1), seed)
    timings["stage0"] = time.time() - tick

    def common(stage_steps: int) -> list[str]:
        return [
            "--eval_fraction", str(HELD_OUT), "--per_device_train_batch_size", "16", "--max_steps", str(stage_steps),
            "--lr_scheduler_type", "cosine", "--warmup_steps", "20", "--logging_steps", "50", "--save_strategy", "no",
            "--seed", str(seed), "--max_length", "512", "--max_train_samples", str(16 * stage_steps),
        ]  # fmt: skip

    log("3/6 stage 1: graph-language alignment (GIN + projector; LLM frozen)")
    tick = time.time()
    tiny_graph = ",".join(f"{key}={value}" for key, value in TINY_GRAPH_CONFIG.items())
    train(["--stage", "1", "--llm", str(out / "tiny-llm"), "--datasets", f"messages:{files['descriptions']}", "--config_overrides", tiny_graph,
           "--learning_rate", "1e-3", "--output_dir", str(out / "llamo-tiny-stage1"), *common(max(steps // 4, 1))])  # fmt: skip
    timings["stage1"] = time.time() - tick

    lora = ["--lora_target_modules", "all-linear", "--lora_r", "16", "--lora_alpha", "32", "--learning_rate", "2e-3"]
    # The GIN is trained in stage 2 as well: aligned on descriptions that also show the SMILES, a frozen GIN gives
    # the language model little that the text does not (graph benchmark in docs/results.md).
    log("4/6 stage 2: instruction tuning (projector + LoRA + GIN)")
    tick = time.time()
    train(["--stage", "2", "--init_from", str(out / "llamo-tiny-stage1"), "--datasets", *sources, "--train_graph_encoder",
           "--output_dir", str(out / "llamo-tiny"), *lora, *common(steps)])  # fmt: skip
    timings["stage2"] = time.time() - tick

    log("5/6 baseline: the same base LLM and stage 2, without the graph (projector_type none)")
    tick = time.time()
    train(["--stage", "2", "--llm", str(out / "tiny-llm"), "--projector_type", "none", "--datasets", *sources,
           "--output_dir", str(out / "baseline-no-graph"), *lora, *common(steps)])  # fmt: skip
    timings["baseline"] = time.time() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "outputs")
    parser.add_argument("--molecules", type=int, default=4000, help="molecules to generate questions for")
    parser.add_argument("--steps", type=int, default=400, help="stage-2 steps (stage 0: half as many, stage 1: a quarter)")
    parser.add_argument("--eval_per_task", type=int, default=200, help="held-out questions per task (facts, gap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_only", action="store_true", help="only step 6, on the data and models already in --output_dir")
    args = parser.parse_args()
    quiet_progress_bars()  # datasets' bars, in a log file (each training step prints its own example counts)
    out, started, timings = args.output_dir, time.time(), {}
    if not args.eval_only:
        train_all(out, args.molecules, args.steps, args.seed, timings)

    log("6/6 evaluation on held-out molecules (greedy decoding)")
    tick = time.time()
    per_task = {"facts": args.eval_per_task, "property": args.eval_per_task}
    gap_file = out / "data" / "qm9_gap.tsv"
    examples = held_out_examples(shipped_molecules(args.molecules), gap_file, per_task, args.seed)
    results = {}
    for name in ("llamo-tiny", "baseline-no-graph"):
        results[name] = evaluate(str(out / name), examples, out / "eval" / name, batch_size=32, max_new_tokens=64)
    train_examples = training_examples(out / "data" / "questions.jsonl", gap_file, args.seed)
    for baseline in (MorganRetrieval(), TrainMean()):
        results[baseline.name] = evaluate_baseline(baseline, train_examples, examples, out / "eval" / baseline.name)
    timings["eval"] = time.time() - tick
    timings["total"] = time.time() - started
    report(out, examples, results, timings)


COLUMNS = {"llamo-tiny": "LLaMo (graph)", "baseline-no-graph": "no graph", "morgan_nn": "retrieval", "train_mean": "most common"}


def with_facts_overall(tasks: dict) -> dict:
    """Per-task metrics plus `facts`: exact match over all fact questions (the per-fact tasks weighted by size)."""
    facts = [metrics for task, metrics in tasks.items() if task.startswith("facts/")]
    total = sum(metrics["n"] for metrics in facts)
    overall = {"n": total, "exact_match": sum(m["n"] * m["exact_match"] for m in facts) / total}
    return {"facts": overall, **tasks}


def reliance_summary(tasks: dict) -> dict[str, dict]:
    """Answer NLL and graph reliance of the property task and of all fact questions (weighted by size)."""
    keys = ("answer_nll", "graph_reliance_shuffled", "graph_reliance_mean")
    facts = [metrics for task, metrics in tasks.items() if task.startswith("facts/") and "graph_reliance_mean" in metrics]
    summary = {}
    if facts:
        total = sum(m["n"] for m in facts)
        summary["facts"] = {key: sum(m["n"] * m[key] for m in facts) / total for key in keys}
    if "graph_reliance_mean" in tasks.get("property", {}):
        summary["property"] = {key: tasks["property"][key] for key in keys}
    return summary


def markdown_table(tasks_by_model: dict[str, dict], rows: list[tuple[str, str]]) -> list[str]:
    fmt = {"exact_match": lambda v: f"{100 * v:.1f}%", "mae": lambda v: "n/a" if v is None else f"{v:.4f}",
           "unparsable_share": lambda v: f"{v:.3f}"}  # fmt: skip
    first = tasks_by_model["llamo-tiny"]
    table = ["| task | metric | " + " | ".join(COLUMNS.values()) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for task, metric in rows:
        cells = [fmt[metric](tasks_by_model[name][task][metric]) for name in COLUMNS]
        table.append(f"| {task} (n={first[task]['n']}) | {metric} | " + " | ".join(cells) + " |")
    return table


def report(out: pathlib.Path, examples, results: dict, timings: dict) -> None:
    tasks_by_model = {name: with_facts_overall(result["tasks"]) for name, result in results.items()}
    summary_rows = [("facts", "exact_match")] + [("property", m) for m in ("exact_match", "mae", "unparsable_share")]
    per_fact_rows = [(task, "exact_match") for task in sorted(tasks_by_model["llamo-tiny"]) if task.startswith("facts/")]
    table = markdown_table(tasks_by_model, summary_rows)
    summary = {
        "results": tasks_by_model,
        "seconds": {key: round(value, 1) for key, value in timings.items()},
        "held_out_fraction": HELD_OUT,
    }
    summary["graph_reliance"] = reliance_summary(tasks_by_model["llamo-tiny"])
    (out / "pipeline_results.json").write_text(json.dumps(summary, indent=2))
    print("\n" + "\n".join(table))
    print("\nGraph reliance of LLaMo (teacher-forced answer NLL, nats per answer token; the increase when each "
          "molecule's graph is replaced):")  # fmt: skip
    for task, entry in summary["graph_reliance"].items():
        print(
            f"  {task}: NLL {entry['answer_nll']:.4f} with its graph, {entry['graph_reliance_shuffled']:+.4f} with another "
            f"molecule's graph, {entry['graph_reliance_mean']:+.4f} with the batch-mean graph"
        )
    nll = {name: tasks_by_model[name]["property"].get("answer_nll") for name in ("llamo-tiny", "baseline-no-graph")}
    if None not in nll.values():
        print(f"  property: answer NLL {nll['llamo-tiny']:.4f} (LLaMo) vs {nll['baseline-no-graph']:.4f} (no graph)")
    print("\nExact match per kind of fact:\n" + "\n".join(markdown_table(tasks_by_model, per_fact_rows)))
    print("\nSample answers (held-out molecules):")
    predictions = results["llamo-tiny"]["predictions"]
    baseline = results["baseline-no-graph"]["predictions"]
    for index in sorted({0, len(examples) // 3, len(examples) // 2, 2 * len(examples) // 3, len(examples) - 1}):
        example = examples[index]
        question = example.messages[-1]["content"]
        print(
            f"  {example.smiles[0]} | {question}\n    reference: {example.reference}\n    LLaMo:     {predictions[index]}\n    no graph:  {baseline[index]}"
        )
    print(f"\nTimes (s): {summary['seconds']}")
    print(f"Final model: {out / 'llamo-tiny'} (loads with AutoModelForCausalLM / AutoProcessor, trust_remote_code=True)")


if __name__ == "__main__":
    main()
