"""Evaluate a LLaMo model folder (or Hub id), or a baseline, by its answers to held-out questions.

    # a model: batched greedy generation (beam search with --num_beams)
    llamo-eval --model outputs/llamo-tiny --datasets caption:chebi20_dev.tsv --output_dir outputs/eval/llamo

    # a baseline through the same scoring: Morgan-fingerprint nearest neighbour over training data
    llamo-eval --baseline morgan_nn --train_datasets caption:chebi20_train.tsv \\
        --datasets caption:chebi20_dev.tsv --output_dir outputs/eval/retrieval

Data are read with the training loaders (`llamo.data`, same `[format:]path` syntax as `train_sft.py`). Writes
`predictions.jsonl` (id, task, SMILES, prompt, reference, prediction) and `results.json` (metrics per task, rows
skipped, settings, timings; for a model also, per task, the teacher-forced answer NLL with the true graph, with the
graphs shuffled across the batch and with the batch-mean graph, whose differences are the graph reliance). Metrics per task family (`llamo/metrics.py`): descriptions -> BLEU-2/4, METEOR, ROUGE;
IUPAC names -> exact match + text metrics; properties -> MAE with unparsable answers counted and the share of
distinct answers; molecule answers
-> validity, exact match, fingerprint similarities, Levenshtein; any other task -> exact match.
Predictions hold the reference answers: keep them out of version control when the data's text may not be shared.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import torch
from tqdm.auto import tqdm

from llamo.baselines import BASELINES
from llamo.cli import check_device, check_model_path, load_model_and_processor
from llamo.data import conversation_with_molecules
from llamo.examples import Example, examples_from_conversations, load_examples, question_kind  # noqa: F401  (re-exported)
from llamo.metrics import METRIC_FAMILIES, SCORED_PER_QUESTION_KIND, exact_match, normalize, parse_number  # noqa: F401


# Which metrics each task gets; `--task_metrics task=family` adds or overrides entries.
TASK_FAMILIES = {
    "caption": "text", "description": "text", "iupac": "name", "property": "property",
    "forward_reaction": "molecule", "retrosynthesis": "molecule", "reagent_prediction": "molecule",
    "molecule_generation": "molecule",
}  # fmt: skip
TOKENIZATION_NOTE = (
    "word: lower-cased NLTK wordpunct_tokenize (model-independent); llm: the model's own tokenizer pieces "
    "(at most 512, as the original LLaMo evaluation); ROUGE: rouge_score's tokenizer, no stemming"
)


# ---------------------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def generate_answers(
    model,
    processor,
    examples: Sequence[Example],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    **generate_kwargs,
) -> list[str]:
    """Batched generation (left padding, greedy unless `num_beams` > 1) with a progress bar."""
    model.eval()
    answers = []
    for start in tqdm(range(0, len(examples), batch_size), desc="Generating", unit="batch"):
        batch = examples[start : start + batch_size]
        chats = [conversation_with_molecules(example.smiles, example.messages) for example in batch]
        inputs = processor.apply_chat_template(
            chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        ).to(model.device)  # fmt: skip
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, **generate_kwargs)
        prompt_length = inputs["input_ids"].shape[1]
        answers += [processor.decode(row[prompt_length:], skip_special_tokens=True).strip() for row in output]
    return answers


# ---------------------------------------------------------------------------------------------------------------
# Graph reliance: how much the answers depend on the molecule's graph


GRAPH_CONDITIONS = ("true", "shuffled", "mean")


def donor_molecules(keys: Sequence[str]) -> list[int]:
    """For each molecule of a batch, another one whose graph it gets in the `shuffled` condition: the next one (cyclically)
    with a different key (canonical SMILES), so questions about the same molecule never swap graphs with each other.
    A molecule keeps its own graph only when the batch holds no other molecule."""
    donors = []
    for index, key in enumerate(keys):
        shifts = range(1, len(keys))
        donors.append(
            next((((index + shift) % len(keys)) for shift in shifts if keys[(index + shift) % len(keys)] != key), index)
        )
    return donors


def replace_graph_tokens(
    graph_features: torch.Tensor, slots_per_molecule: torch.LongTensor, condition: str, donors: Sequence[int] | None = None
) -> torch.Tensor:
    """Graph tokens [num_slots, H] (slot order, molecule by molecule) under a condition: `true` (unchanged),
    `mean` (every molecule gets the batch mean, slot position by slot position; per-atom projectors: the mean token)
    or `shuffled` (molecule i gets the tokens of molecule `donors[i]`, cycled or cut to its own slot count)."""
    if condition == "true":
        return graph_features
    per_molecule = list(graph_features.split(slots_per_molecule.tolist()))
    if condition == "mean":
        if len(set(slots_per_molecule.tolist())) == 1:
            mean = torch.stack(per_molecule).mean(0)
            return mean.repeat(len(per_molecule), 1)
        return graph_features.mean(0, keepdim=True).expand_as(graph_features).clone()
    if condition == "shuffled":
        if donors is None:
            raise ValueError("the shuffled condition needs the donor of each molecule")
        replaced = []
        for own, donor in zip(per_molecule, donors):
            tokens = per_molecule[donor]
            replaced.append(tokens[torch.arange(own.shape[0], device=tokens.device) % tokens.shape[0]])
        return torch.cat(replaced)
    raise ValueError(f"unknown graph condition {condition!r}: use one of {GRAPH_CONDITIONS}")


@torch.no_grad()
def answer_nll(
    model, processor, examples: Sequence[Example], batch_size: int = 16, conditions: Sequence[str] = GRAPH_CONDITIONS
) -> dict[str, list[float]]:
    """Teacher-forced negative log-likelihood of each reference answer (nats per answer token), once per graph
    condition (`replace_graph_tokens`). A model without a projector gets the `true` condition only."""
    from llamo.collator import LlamoDataCollator
    from llamo.data import encode_conversation  # the training encoding: same labels as training

    projector = getattr(model.model, "projector", None)
    conditions = [c for c in conditions if c == "true" or projector is not None]
    collator = LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id)
    state = {"condition": "true", "donors": None}

    def hook(module, inputs, output):
        node_batch, num_molecules = inputs[1], inputs[2]
        tokens = model.config.num_graph_tokens
        slots = torch.bincount(node_batch, minlength=num_molecules) if tokens is None else torch.full((num_molecules,), tokens)
        output.graph_features = replace_graph_tokens(output.graph_features, slots, state["condition"], state["donors"])
        return output

    handle = projector.register_forward_hook(hook) if projector is not None else None
    model.eval()
    nll = {condition: [] for condition in conditions}
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            rows = []
            for example in batch:
                messages = [*example.messages, {"role": "assistant", "content": example.reference}]
                row = encode_conversation(example.smiles, messages, processor, max_length=None)
                if row["skip_reason"]:
                    raise ValueError(f"example {example.id} cannot be encoded: {row['skip_detail']}")
                rows.append(row)
            inputs = collator(rows)
            labels = inputs.pop("labels")
            state["donors"] = donor_molecules([_canonical_key(s) for example in batch for s in example.smiles])
            targets, mask = labels[:, 1:], labels[:, 1:] != -100
            for condition in conditions:
                state["condition"] = condition
                logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits[:, :-1].float().cpu()
                token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
                per_example = (token_nll * mask).sum(1) / mask.sum(1)
                nll[condition] += per_example.tolist()
    finally:
        if handle is not None:
            handle.remove()
    return nll


def _canonical_key(smiles: str) -> str:
    """One key per molecule, however it is written (the input itself when it does not parse)."""
    from rdkit import Chem

    from featurization_llamo import parse_smiles

    try:
        return Chem.MolToSmiles(parse_smiles(smiles))
    except ValueError:
        return smiles


def graph_reliance(model, processor, examples: Sequence[Example], batch_size: int = 16) -> dict[str, dict]:
    """Per task: mean answer NLL with the true graph, with graphs shuffled across the batch and with the batch-mean
    graph; `graph_reliance_shuffled` / `graph_reliance_mean` are the increases over the true graph (nats per answer
    token). About 0 means the answers do not depend on the graph; a model without a graph gets `answer_nll` only."""
    nll = answer_nll(model, processor, examples, batch_size)
    results = {}
    for task in sorted({example.task for example in examples}):
        rows = [index for index, example in enumerate(examples) if example.task == task]
        mean = {condition: sum(values[i] for i in rows) / len(rows) for condition, values in nll.items()}
        entry = {"answer_nll": mean["true"]}
        for condition in ("shuffled", "mean"):
            if condition in mean:
                entry[f"answer_nll_{condition}_graph"] = mean[condition]
                entry[f"graph_reliance_{condition}"] = mean[condition] - mean["true"]
        results[task] = entry
    return results


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def task_family(task: str, task_metrics: dict[str, str] | None = None) -> str:
    """The metric family (a key of `METRIC_FAMILIES`) of a task name; `exact` (exact match only) when unlisted."""
    family = {**TASK_FAMILIES, **(task_metrics or {})}.get(task, "exact")
    if family not in METRIC_FAMILIES:
        raise ValueError(f"unknown metric family {family!r} for task {task!r}: use one of {list(METRIC_FAMILIES)}")
    return family


def score(
    examples: Sequence[Example],
    predictions: Sequence[str],
    numeric_tasks: Sequence[str] = ("property",),
    tokenizer=None,
    task_metrics: dict[str, str] | None = None,
) -> dict:
    """Metrics per task: `n`, `exact_match` for every task, plus those of the task's family (`task_family`).
    Numeric tasks (`numeric_tasks`, or family `property`) also get MAE and the unparsable count, overall and
    per property. `tokenizer` adds BLEU/METEOR on the model's own tokens to the word-level ones."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    task_metrics = {**{task: "property" for task in numeric_tasks}, **(task_metrics or {})}
    results = {}
    for task in sorted({example.task for example in examples}):
        pairs = [(e, p) for e, p in zip(examples, predictions) if e.task == task]
        family = task_family(task, task_metrics)
        answers, references = [p for _, p in pairs], [e.reference for e, _ in pairs]
        entry = {"n": len(pairs), "family": family, "exact_match": sum(map(exact_match, answers, references)) / len(pairs)}
        entry.update(METRIC_FAMILIES[family](answers, references, tokenizer=tokenizer))
        if family in SCORED_PER_QUESTION_KIND and len({question_kind(e) for e, _ in pairs}) > 1:
            entry["by_property"] = scores_by_property(pairs, family)
        results[task] = entry
    return results


def scores_by_property(pairs: Sequence[tuple[Example, str]], family: str = "property") -> dict[str, dict]:
    """The family's metrics for each property asked about (HOMO, LUMO, gap ...)."""
    by_kind = {}
    for example, prediction in pairs:
        answers, references = by_kind.setdefault(question_kind(example).split("/", 1)[-1], ([], []))
        answers.append(prediction)
        references.append(example.reference)
    return {
        kind: {"n": len(answers), **METRIC_FAMILIES[family](answers, refs)} for kind, (answers, refs) in sorted(by_kind.items())
    }


# ---------------------------------------------------------------------------------------------------------------
# Writing results


def write_predictions(
    path: pathlib.Path,
    examples: Sequence[Example],
    predictions: Sequence[str],
    processor=None,
    extras: Sequence[dict] | None = None,
) -> None:
    """One JSON line per example; the prompt is the rendered chat when a processor is given, else the question."""
    with path.open("w", encoding="utf-8") as handle:
        for index, (example, prediction) in enumerate(zip(examples, predictions)):
            if processor is not None:
                chat = conversation_with_molecules(example.smiles, example.messages)
                prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
            else:
                prompt = example.question
            row = {
                "id": example.id, "task": example.task, "smiles": example.smiles, "prompt": prompt,
                "reference": example.reference, "prediction": prediction, **(extras[index] if extras else {}),
            }  # fmt: skip
            handle.write(json.dumps(row) + "\n")


def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("transformers", "torch", "rdkit", "nltk", "rouge_score", "Levenshtein"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def finish(
    name: str,
    examples: Sequence[Example],
    predictions: Sequence[str],
    output_dir: pathlib.Path | None,
    tokenizer=None,
    processor=None,
    extras: Sequence[dict] | None = None,
    task_metrics: dict[str, str] | None = None,
    **info,
) -> dict:
    """Score, and write `predictions.jsonl` + `results.json` when `output_dir` is set; returns results + predictions."""
    started = time.time()
    tasks = score(examples, predictions, tokenizer=tokenizer, task_metrics=task_metrics)
    results = {
        "model": name,
        "examples": len(examples),
        "tasks": tasks,
        **info,
        "score_seconds": round(time.time() - started, 2),
        "tokenization": TOKENIZATION_NOTE,
        "versions": library_versions(),
    }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(output_dir / "predictions.jsonl", examples, predictions, processor, extras)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    return {**results, "predictions": list(predictions)}


def evaluate(
    model_path: str,
    examples: Sequence[Example],
    output_dir: pathlib.Path | None = None,
    task_metrics: dict[str, str] | None = None,
    device: str | None = None,
    reliance: bool = True,
    **generation,
) -> dict:
    """Load through the public contract, generate, score, and write predictions + results when `output_dir` is set.
    With `reliance` each task also gets the teacher-forced answer NLL and the graph reliance (`graph_reliance`)."""
    model, processor = load_model_and_processor(model_path, device)
    started = time.time()
    predictions = generate_answers(model, processor, examples, **generation)
    seconds = time.time() - started
    reliance_info = {}
    if reliance:
        tick = time.time()
        reliance_info = {
            "graph_reliance": graph_reliance(model, processor, examples, batch_size=generation.get("batch_size", 16)),
            "graph_reliance_seconds": round(time.time() - tick, 2),
        }
    results = finish(
        str(model_path), examples, predictions, None, tokenizer=processor.tokenizer, processor=processor,
        task_metrics=task_metrics, kind="model", generation={"do_sample": False, "num_beams": 1, **generation},
        generate_seconds=round(seconds, 2), examples_per_second=round(len(examples) / seconds, 2),
    )  # fmt: skip
    for task, entry in reliance_info.get("graph_reliance", {}).items():
        results["tasks"][task].update(entry)
    if reliance:
        results["graph_reliance_seconds"] = reliance_info["graph_reliance_seconds"]
    if output_dir is not None:
        write_results(output_dir, results, examples, predictions, processor)
    return results


def write_results(output_dir: pathlib.Path, results: dict, examples, predictions, processor=None, extras=None) -> None:
    """`predictions.jsonl` and `results.json` (without the predictions list) in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(output_dir / "predictions.jsonl", examples, predictions, processor, extras)
    (output_dir / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "predictions"}, indent=2))


def evaluate_baseline(
    baseline,
    train_examples: Sequence[Example],
    examples: Sequence[Example],
    output_dir: pathlib.Path | None = None,
    task_metrics: dict[str, str] | None = None,
    tokenizer=None,
) -> dict:
    """Fit a baseline (`llamo.baselines`) on training examples, answer, and score exactly like a model (`tokenizer`:
    also score text on these tokenizer pieces, e.g. those of the models it is compared with)."""
    started = time.time()
    baseline.fit(train_examples)
    predictions, extras = baseline.predict(examples)
    return finish(
        baseline.name, examples, predictions, output_dir, tokenizer=tokenizer, extras=extras, task_metrics=task_metrics,
        kind="baseline", train_examples=len(train_examples), fit_predict_seconds=round(time.time() - started, 2),
        **baseline.report(),
    )  # fmt: skip


# The headline metrics of each family in the printed summary (all of them are in results.json).
SUMMARY_METRICS = {
    "text": ("bleu2_word", "bleu4_word", "meteor_word", "rougeL"),
    "name": ("exact_match", "bleu2_word", "meteor_word"),
    "property": ("mae", "unparsable_share"),
    "molecule": ("validity", "exact_match_inchi", "morgan_similarity"),
    "exact": ("exact_match",),
}


def summary_table(tasks: dict[str, dict]) -> str:
    """A Markdown table, one row per task, with the headline metrics of its family (`score`'s output)."""
    lines = ["| task | n | metric | value |", "|---|---:|---|---:|"]
    for task, entry in tasks.items():
        for metric in SUMMARY_METRICS.get(entry.get("family", "exact"), ("exact_match",)):
            value = entry.get(metric)
            if metric not in entry:
                continue
            shown = "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {task} | {entry['n']} | {metric} | {shown} |")
    return "\n".join(lines)


def parse_task_metrics(items: Sequence[str]) -> dict[str, str]:
    """['mol_instructions=molecule', ...] -> {'mol_instructions': 'molecule'}."""
    pairs = dict(item.split("=", 1) for item in items if "=" in item)
    if len(pairs) != len(items):
        raise ValueError(f"--task_metrics expects task=family pairs, got {list(items)}")
    return pairs


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="model folder or Hub id (loaded with trust_remote_code=True)")
    who.add_argument("--baseline", choices=tuple(BASELINES), help="a baseline fitted on --train_datasets")
    parser.add_argument("--datasets", nargs="+", required=True, help="'[format:]path' as for train_sft.py")
    parser.add_argument("--train_datasets", nargs="+", default=None, help="baselines: the training data to answer from")
    parser.add_argument("--eval_fraction", type=float, default=None, help="evaluate only the molecules train_sft.py held out")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument(
        "--task_metrics", nargs="*", default=[], help=f"task=family overrides, family in {'/'.join(METRIC_FAMILIES)}"
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no_graph_reliance", action="store_true", help="skip the teacher-forced answer NLL with true / shuffled / mean graphs"
    )
    parser.add_argument("--output_dir", type=pathlib.Path, required=True)
    parser.add_argument(
        "--update_model_card", action="store_true", help="--model folder: add the results to its README.md (model-index + table)"
    )
    args = parser.parse_args(argv)

    try:  # before reading data or loading anything: a mistyped folder or a missing GPU is reported at once
        if args.model is not None:
            args.model = check_model_path(args.model, "--model")
            args.device = check_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    examples, skipped = load_examples(args.datasets, args.eval_fraction, args.max_examples, args.seed)
    task_metrics = parse_task_metrics(args.task_metrics)
    if args.baseline is not None:
        if not args.train_datasets:
            parser.error("--baseline needs --train_datasets")
        train_examples, train_skipped = load_examples(args.train_datasets, seed=args.seed)
        results = evaluate_baseline(BASELINES[args.baseline](), train_examples, examples, args.output_dir, task_metrics)
        skipped = {"eval": skipped, "train": train_skipped}
    else:
        results = evaluate(
            args.model, examples, args.output_dir, task_metrics=task_metrics, device=args.device,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
            reliance=not args.no_graph_reliance,
        )  # fmt: skip
    results.pop("predictions")
    results.update(datasets=args.datasets, rows_skipped=skipped)
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({"tasks": results["tasks"], "rows_skipped": skipped}, indent=2))
    print(f"\nSummary ({results['model']}, {results['examples']} examples):\n" + summary_table(results["tasks"]))
    if args.update_model_card:
        from llamo.model_card import add_evaluation_to_card

        if args.model is None or not pathlib.Path(args.model).is_dir():
            parser.error("--update_model_card needs --model to be a local folder")
        add_evaluation_to_card(pathlib.Path(args.model), results, " + ".join(args.datasets))
    return results


def cli() -> None:
    """Console entry point `llamo-eval`."""
    main()


if __name__ == "__main__":
    cli()
