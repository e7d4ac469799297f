"""Baselines that answer without a language model, scored by the same runner (`llamo-eval --baseline`).

- `morgan_nn`: retrieval. The answer is the training answer of the most similar training molecule (Tanimoto on
  Morgan fingerprints, radius 2, 2,048 bits; RDKit `BulkTanimotoSimilarity`), among training questions of the same
  kind (task, and property for property questions). A model that cannot beat it has not learned more than "this
  looks like that".
- `train_mean`: property questions get the training mean of that property; other questions the most common
  training answer of their kind.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence

from rdkit import DataStructs

from llamo.examples import Example, question_kind
from llamo.metrics import MORGAN_FINGERPRINT, parse_molecule, parse_number


def _fingerprint(smiles: Sequence[str]):
    """Morgan fingerprint of the example's molecules (joined into one), or None when one does not parse."""
    mol = parse_molecule(".".join(smiles))
    return MORGAN_FINGERPRINT.GetFingerprint(mol) if mol is not None else None


class MorganRetrieval:
    """Nearest-neighbour retrieval on Morgan fingerprints (see the module docstring)."""

    name = "morgan_nn"

    def __init__(self) -> None:
        self.index: dict[str, tuple[list, list[str], list[str]]] = {}
        self.fallbacks = 0
        self.skipped_train = 0

    def fit(self, examples: Sequence[Example]) -> MorganRetrieval:
        grouped = defaultdict(lambda: ([], [], []))
        for example in examples:
            fingerprint = _fingerprint(example.smiles)
            if fingerprint is None:
                self.skipped_train += 1
                continue
            fingerprints, answers, smiles = grouped[question_kind(example)]
            fingerprints.append(fingerprint)
            answers.append(example.reference)
            smiles.append(".".join(example.smiles))
        self.index = dict(grouped)
        return self

    def predict(self, examples: Sequence[Example]) -> tuple[list[str], list[dict]]:
        """Answers, and per answer the retrieved training molecule and its similarity (None for a fallback)."""
        answers, extras = [], []
        for example in examples:
            kind = question_kind(example)
            if kind not in self.index:
                raise ValueError(f"no training example of kind {kind!r} to retrieve from")
            fingerprints, train_answers, train_smiles = self.index[kind]
            fingerprint = _fingerprint(example.smiles)
            if fingerprint is None:  # unparsable query: the most common answer, counted
                self.fallbacks += 1
                answers.append(Counter(train_answers).most_common(1)[0][0])
                extras.append({"retrieved_smiles": None, "similarity": None})
                continue
            similarities = DataStructs.BulkTanimotoSimilarity(fingerprint, fingerprints)
            best = max(range(len(similarities)), key=similarities.__getitem__)  # first of the ties: deterministic
            answers.append(train_answers[best])
            extras.append({"retrieved_smiles": train_smiles[best], "similarity": round(similarities[best], 4)})
        return answers, extras

    def report(self) -> dict:
        return {
            "baseline": "nearest training molecule by Tanimoto on Morgan r=2 / 2048-bit fingerprints, same question kind",
            "unparsable_queries_answered_with_mode": self.fallbacks,
            "unparsable_training_molecules": self.skipped_train,
        }


class TrainMean:
    """Training mean per property; the most common training answer for other questions."""

    name = "train_mean"

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}

    def fit(self, examples: Sequence[Example]) -> TrainMean:
        grouped = defaultdict(list)
        for example in examples:
            grouped[question_kind(example)].append(example.reference)
        for kind, references in grouped.items():
            numbers = [parse_number(reference) for reference in references]
            if kind.startswith("property/") and all(number is not None for number in numbers):
                self.answers[kind] = f"{statistics.fmean(numbers):.4f}"
            else:
                self.answers[kind] = Counter(references).most_common(1)[0][0]
        return self

    def predict(self, examples: Sequence[Example]) -> tuple[list[str], list[dict]]:
        missing = {question_kind(e) for e in examples} - set(self.answers)
        if missing:
            raise ValueError(f"no training example of kind {sorted(missing)}")
        return [self.answers[question_kind(example)] for example in examples], [{} for _ in examples]

    def report(self) -> dict:
        return {"baseline": "training mean per property; most common training answer otherwise"}


BASELINES = {MorganRetrieval.name: MorganRetrieval, TrainMean.name: TrainMean}

__all__ = ["BASELINES", "MorganRetrieval", "TrainMean"]
