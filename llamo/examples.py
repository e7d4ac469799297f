"""Evaluation examples: held-out questions with their reference answers, read with the training loaders.

Both the evaluation runner (`llamo.evaluation`) and the baselines (`llamo.baselines`) work on `Example`s; this module
is what they share, so neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llamo.data import PROPERTY_INSTRUCTIONS, DataSource, load_mixture, split_by_molecule


PROPERTY_BY_QUESTION = {question: name for name, question in PROPERTY_INSTRUCTIONS.items()}


@dataclass
class Example:
    """One question to answer: the conversation up to the last user turn, and the reference answer."""

    id: int
    task: str
    smiles: list[str]
    messages: list[dict]
    reference: str

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def examples_from_conversations(conversations) -> list[Example]:
    """Split each conversation before its last assistant turn: everything before is the prompt."""
    examples = []
    for index, row in enumerate(conversations):
        messages = row["messages"]
        last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
        examples.append(Example(index, row.get("task") or "", row["smiles"], messages[:last], messages[last]["content"]))
    return examples


def load_examples(
    specs: Sequence[str], eval_fraction: float | None = None, max_examples: int | None = None, seed: int = 0
) -> tuple[list[Example], dict]:
    """Examples from `[format:]path` specs through the training loaders, and the rows those skipped (counted)."""
    conversations, skipped = load_mixture([DataSource.parse(spec) for spec in specs], seed=seed)
    if eval_fraction is not None:
        _, conversations = split_by_molecule(conversations, eval_fraction)
    if max_examples is not None:
        conversations = conversations.select(range(min(max_examples, len(conversations))))
    return examples_from_conversations(conversations), skipped.to_dict()


def question_kind(example: Example) -> str:
    """The task, refined by the property asked for (`property/homo`): what a baseline may answer from."""
    prop = PROPERTY_BY_QUESTION.get(example.question.strip())
    return f"{example.task}/{prop}" if prop else example.task


__all__ = ["Example", "PROPERTY_BY_QUESTION", "examples_from_conversations", "load_examples", "question_kind"]
