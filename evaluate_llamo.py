"""Evaluate a LLaMo model folder (or Hub id) by generation: answers to held-out conversations, scored against
their references.

    python evaluate_llamo.py --model outputs/llamo-tiny --datasets outputs/data/facts.jsonl --eval_fraction 0.1 \\
        --output_dir outputs/eval

writes `predictions.jsonl` (id, task, SMILES, prompt, reference, prediction) and `results.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoProcessor

from llamo_data import DataSource, conversation_with_molecules, load_mixture, split_by_molecule


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass
class Example:
    """One question to answer: the conversation up to the last user turn, and the reference answer."""

    id: int
    task: str
    smiles: list[str]
    messages: list[dict]
    reference: str


def examples_from_conversations(conversations) -> list[Example]:
    """Split each conversation before its last assistant turn: everything before is the prompt."""
    examples = []
    for index, row in enumerate(conversations):
        messages = row["messages"]
        last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
        examples.append(Example(index, row.get("task") or "", row["smiles"], messages[:last], messages[last]["content"]))
    return examples


@torch.no_grad()
def generate_answers(
    model, processor, examples: Sequence[Example], batch_size: int = 16, max_new_tokens: int = 64, num_beams: int = 1
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
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        prompt_length = inputs["input_ids"].shape[1]
        answers += [processor.decode(row[prompt_length:], skip_special_tokens=True).strip() for row in output]
    return answers


def normalize(text: str) -> str:
    return " ".join(text.split()).rstrip(".").lower()


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after collapsing whitespace, ignoring case and a final full stop."""
    return normalize(prediction) == normalize(reference)


def parse_number(text: str) -> float | None:
    """The first number in the text, or None when there is none."""
    match = NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    return value if math.isfinite(value) else None


def score(examples: Sequence[Example], predictions: Sequence[str], numeric_tasks: Sequence[str] = ("property",)) -> dict:
    """Exact match per task; for numeric tasks also the MAE over parsable answers and the share that did not parse."""
    results = {}
    for task in sorted({example.task for example in examples}):
        pairs = [(e, p) for e, p in zip(examples, predictions) if e.task == task]
        entry = {"n": len(pairs), "exact_match": sum(exact_match(p, e.reference) for e, p in pairs) / len(pairs)}
        if task in numeric_tasks:
            errors = []
            for example, prediction in pairs:
                value, reference = parse_number(prediction), parse_number(example.reference)
                if value is not None and reference is not None:
                    errors.append(abs(value - reference))
            entry["mae"] = sum(errors) / len(errors) if errors else None
            entry["unparsable"] = len(pairs) - len(errors)
            entry["unparsable_share"] = entry["unparsable"] / len(pairs)
        results[task] = entry
    return results


def write_predictions(path: pathlib.Path, examples: Sequence[Example], predictions: Sequence[str], processor) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for example, prediction in zip(examples, predictions):
            prompt = processor.apply_chat_template(conversation_with_molecules(example.smiles, example.messages), add_generation_prompt=True)
            row = {
                "id": example.id, "task": example.task, "smiles": example.smiles, "prompt": prompt,
                "reference": example.reference, "prediction": prediction,
            }  # fmt: skip
            handle.write(json.dumps(row) + "\n")


def evaluate(model_path: str, examples: Sequence[Example], output_dir: pathlib.Path | None = None, **generation) -> dict:
    """Load through the public contract, generate, score, and write predictions + results when `output_dir` is set."""
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    predictions = generate_answers(model, processor, examples, **generation)
    results = {"model": str(model_path), "tasks": score(examples, predictions)}
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(output_dir / "predictions.jsonl", examples, predictions, processor)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    return {**results, "predictions": list(predictions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id (loaded with trust_remote_code=True)")
    parser.add_argument("--datasets", nargs="+", required=True, help="'[format:]path[@weight]' as for train_sft.py")
    parser.add_argument("--eval_fraction", type=float, default=None, help="evaluate only the molecules train_sft.py held out")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=pathlib.Path, required=True)
    args = parser.parse_args()

    conversations, skipped = load_mixture([DataSource.parse(spec) for spec in args.datasets], seed=args.seed)
    if args.eval_fraction is not None:
        _, conversations = split_by_molecule(conversations, args.eval_fraction)
    if args.max_examples is not None:
        conversations = conversations.select(range(min(args.max_examples, len(conversations))))
    examples = examples_from_conversations(conversations)
    results = evaluate(
        args.model, examples, args.output_dir, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams
    )
    print(json.dumps({"tasks": results["tasks"], "rows_skipped": skipped.to_dict()}, indent=2))


if __name__ == "__main__":
    main()
