"""Training data for LLaMo: task formats -> conversations -> encoded examples -> batches.

1. `load_source` reads a file (JSON / JSON Lines / CSV / TSV / Parquet) or a Hub dataset with `datasets`, and turns
   each row of a known format into a conversation `{"smiles": [...], "messages": [...], "task": ...}`. Rows that
   cannot be used are dropped *and counted with their reason* in a `SkipReport`.
2. `encode_dataset` featurizes every molecule and tokenizes every conversation once (`datasets.map`), with labels on
   the assistant turns only; epochs reuse the result.
3. `llamo.collator.LlamoDataCollator` pads a batch (right padding) and concatenates its molecules into the model's flat
   graph inputs.

Formats (`DataSource.format`; when omitted, the first entry of `FORMATS` whose columns the table has). Each is one
function `(row, rng) -> conversations | Skip` registered in `FORMATS`:

| format | columns | becomes |
|---|---|---|
| `messages` | `smiles`, `messages` | the conversation as given; the molecule goes in front of the first user turn, unless the text holds `<graph>` placeholders |
| `instruction` | `smiles`, `instruction`, `output` (`input` optional) | one question and its answer |
| `caption` | `SMILES`, `description` (ChEBI-20 / PubChem324k TSV) | "Describe this molecule." and the description |
| `iupac` | `smiles`, `iupac_name` (or `description` when the format is given) | "What is the IUPAC name …?" and the name |
| `property` | `smiles` + any of `homo`, `lumo`, `gap` columns (QM9, Hartree) | one question per property, answer with 4 decimals |
| `mol_instructions` | `instruction`, `input`, `output` (Mol-Instructions) | SELFIES inputs/outputs converted to SMILES |
"""

from __future__ import annotations

import functools
import hashlib
import math
import pathlib
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import datasets
from transformers.utils import logging

from configuration_llamo import GRAPH_INPUTS, num_molecules
from featurization_llamo import parse_smiles, prompt_smiles


logger = logging.get_logger(__name__)


PLACEHOLDER = "<graph>"

# Instruction wordings written for this project, picked per row with a seeded generator.
CAPTION_INSTRUCTIONS = (
    "Describe this molecule.",
    "Give a description of this molecule.",
    "What is this molecule? Describe it.",
    "Explain what this molecule is.",
)
IUPAC_INSTRUCTIONS = (
    "What is the IUPAC name of this molecule?",
    "Give the IUPAC name of this molecule.",
    "Name this molecule according to IUPAC rules.",
)
PROPERTY_INSTRUCTIONS = {
    "homo": "What is the HOMO energy of this molecule in Hartree?",
    "lumo": "What is the LUMO energy of this molecule in Hartree?",
    "gap": "What is the HOMO-LUMO gap of this molecule in Hartree?",
}
PROPERTY_COLUMNS = {"homo": ("homo", "homo_au"), "lumo": ("lumo", "lumo_au"), "gap": ("gap", "homo_lumo_gap", "homo_lumo_gap_au")}
SELFIES_PATTERN = re.compile(r"^(\[[^\[\]\s]+\]|\.)+$")


@dataclass
class SkipReport:
    """Rows left out, counted per reason, with a few examples of each (never dropped silently)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    # Rows kept but changed (an answer cut at max_length, a huge text trimmed before tokenization): counted, not skipped.
    notes: Counter = field(default_factory=Counter)

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        samples = self.examples.setdefault(reason, [])
        if len(samples) < 3:
            samples.append(detail)

    def note(self, what: str) -> None:
        self.notes[what] += 1

    def update(self, other: SkipReport) -> SkipReport:
        for reason, count in other.counts.items():
            self.counts[reason] += count
            self.examples.setdefault(reason, []).extend(other.examples.get(reason, [])[: 3 - len(self.examples.get(reason, []))])
        self.notes.update(other.notes)
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        skipped = [
            f"{count} x {reason} (e.g. {'; '.join(self.examples.get(reason, []))})" for reason, count in self.counts.most_common()
        ]
        return skipped + [f"{count} x kept, {what}" for what, count in self.notes.most_common()]

    def to_dict(self) -> dict[str, Any]:
        report = {"total": self.total, "by_reason": dict(self.counts.most_common()), "examples": self.examples}
        if self.notes:
            report["kept_with_changes"] = dict(self.notes.most_common())
        return report


@dataclass
class DataSource:
    """One dataset of a training mixture: `[format:]path_or_hub_id[@weight]`, e.g. `iupac:data/pubchem_iupac_train.tsv@0.3`."""

    path: str
    format: str | None = None
    weight: float | None = None
    split: str = "train"

    @classmethod
    def parse(cls, spec: str) -> DataSource:
        weight = None
        if "@" in spec:
            spec, _, weight_text = spec.rpartition("@")
            try:
                weight = float(weight_text)
            except ValueError:
                raise ValueError(f"dataset spec {spec!r}: the weight after '@' must be a number, got {weight_text!r}") from None
        fmt, sep, rest = spec.partition(":")
        if sep and fmt in FORMATS:
            return cls(path=rest, format=fmt, weight=weight)
        return cls(path=spec, weight=weight)

    @property
    def name(self) -> str:
        return f"{self.format or 'auto'}:{pathlib.Path(self.path).name}"


def read_table(source: DataSource) -> datasets.Dataset:
    """Rows of a local file (by extension) or of a Hub dataset (any other string)."""
    path = pathlib.Path(source.path)
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if suffix in (".csv", ".tsv", ".txt"):
        # TSV captions may contain stray quote characters: read fields verbatim (QUOTE_NONE).
        separator = "," if suffix == ".csv" else "\t"
        kwargs = {"quoting": 3} if separator == "\t" else {}
        return datasets.load_dataset("csv", data_files=str(path), sep=separator, split="train", **kwargs)
    if suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if path.exists():
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl, .csv, .tsv, .txt or .parquet)")
    return datasets.load_dataset(source.path, split=source.split)


def column_lookup(columns: list[str]) -> dict[str, str]:
    """Lower-cased column name -> actual name (ChEBI-20 writes `SMILES`, PubChem tables `smiles`)."""
    return {name.lower(): name for name in columns}


class Skip(NamedTuple):
    """Why a row is left out: a stable `reason` (counted) and a `detail` (kept as an example)."""

    reason: str
    detail: str = ""


def _text(value: Any) -> str | None:
    """The stripped string, or None when the field is not a non-empty string."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def finite_number(value: Any) -> float:
    """A property value as a finite float; `ValueError` for anything else (NaN, inf, 1e400, '-Infinity', '1_000',
    booleans), so no non-finite or oddly written number becomes a training answer."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, str) and (not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip())):
        raise ValueError(f"not a plain decimal number: {value[:40]!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not finite: {value!r}")
    return number


def undouble_backslashes(smiles: str) -> str:
    r"""A SMILES as written, from a ChEBI-20 file, which doubles every backslash (`C/C=C\\C` for `C/C=C\C`); the
    one place of that fix. Other sources pass unchanged: two backslashes in a row are never valid SMILES."""
    return smiles.replace("\\\\", "\\")


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _selfies_to_smiles(text: str) -> str:
    import selfies

    try:
        smiles = selfies.decoder(text)
    except selfies.DecoderError as error:
        raise ValueError(f"invalid SELFIES {text!r}: {error}") from None
    if not smiles:
        raise ValueError(f"invalid SELFIES {text!r}: decodes to nothing")
    return smiles


class Row:
    """One table row, read by lower-cased column name (ChEBI-20 writes `SMILES`, PubChem tables `smiles`)."""

    def __init__(self, values: dict[str, Any], names: dict[str, str]):
        self.values, self.names = values, names

    def has(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str) -> Any:
        return self.values.get(self.names.get(name, name))

    def text(self, name: str) -> str | None:
        return _text(self.get(name))

    def smiles(self) -> str | Skip:
        """The row's `smiles` field, cleaned, or why there is none."""
        smiles = self.get("smiles")
        if not isinstance(smiles, str):
            return (
                Skip("wrong type", f"'smiles' is {type(smiles).__name__}")
                if smiles is not None
                else Skip("missing field", "smiles")
            )
        smiles = undouble_backslashes(smiles.strip())
        return smiles or Skip("missing field", "smiles")


# A format turns one row into its conversations `{"smiles": [...], "messages": [...](, "task": ...)}`, or a `Skip`
# (a conversation of the list may itself be a `Skip`: one bad property does not take the row's good ones with it).
FormatFunction = Callable[[Row, random.Random], "list[dict | Skip] | Skip"]


def _question_and_answer(smiles: list[str], question: str, answer: str) -> list[dict]:
    return [{"smiles": smiles, "messages": [_turn("user", question), _turn("assistant", answer)]}]


def messages_format(row: Row, rng: random.Random) -> list[dict] | Skip:
    """`smiles`, `messages` (and optionally `task`): the conversation as given."""
    smiles = row.smiles()
    if isinstance(smiles, Skip):
        return smiles
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return Skip("wrong type", "'messages' must be a non-empty list")
    turns = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = _text(message.get("content")) if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            return Skip("wrong type", f"message role {role!r}")
        if content is None:
            return (
                Skip("empty answer") if role == "assistant" else Skip("wrong type", "message content must be a non-empty string")
            )
        turns.append(_turn(role, content))
    if not any(turn["role"] == "assistant" for turn in turns):
        return Skip("empty answer", "no assistant turn")
    return [{"smiles": [smiles], "messages": turns, "task": row.text("task")}]


def instruction_format(row: Row, rng: random.Random) -> list[dict] | Skip:
    """`smiles`, `instruction`, `output` (`input` optional): one question and its answer."""
    smiles = row.smiles()
    if isinstance(smiles, Skip):
        return smiles
    instruction, answer = row.text("instruction"), row.text("output")
    if instruction is None:
        return Skip("missing field", "instruction")
    if answer is None:
        return Skip("empty answer")
    extra = row.text("input")
    return _question_and_answer([smiles], f"{instruction} {extra}" if extra else instruction, answer)


def caption_format(row: Row, rng: random.Random) -> list[dict] | Skip:
    """`SMILES`, `description`: "Describe this molecule." and the description."""
    smiles = row.smiles()
    if isinstance(smiles, Skip):
        return smiles
    answer = row.text("description")
    if answer is None:
        return Skip("empty answer")
    return _question_and_answer([smiles], rng.choice(CAPTION_INSTRUCTIONS), answer)


def iupac_format(row: Row, rng: random.Random) -> list[dict] | Skip:
    """`smiles`, `iupac_name` (or `iupac`, or `description` when the format is given): the IUPAC name."""
    smiles = row.smiles()
    if isinstance(smiles, Skip):
        return smiles
    answer = row.text(next((column for column in ("iupac_name", "iupac", "description") if row.has(column)), "iupac_name"))
    if answer is None:
        return Skip("empty answer")
    return _question_and_answer([smiles], rng.choice(IUPAC_INSTRUCTIONS), answer)


def property_format(row: Row, rng: random.Random) -> list[dict | Skip] | Skip:
    """`smiles` + any of the `homo`, `lumo`, `gap` columns (QM9, Hartree): one question per property, 4 decimals; a
    property whose value is not a finite number becomes its own `Skip`."""
    smiles = row.smiles()
    if isinstance(smiles, Skip):
        return smiles
    conversations = []
    for prop, aliases in PROPERTY_COLUMNS.items():
        column = next((alias for alias in aliases if row.has(alias)), None)
        if column is None:
            continue
        value = row.get(column)
        try:
            number = finite_number(value)
        except ValueError:  # this property is skipped on its own: the row's good ones stay
            conversations.append(Skip("non-numeric property", f"{prop}={str(value)[:40]!r}"))
            continue
        conversations += _question_and_answer([smiles], PROPERTY_INSTRUCTIONS[prop], f"{number:.4f}")
    return conversations or Skip("missing field", "homo/lumo/gap")


def mol_instructions_format(row: Row, rng: random.Random) -> list[dict] | Skip:
    """`instruction`, `input`, `output` (Mol-Instructions): the molecule arrives as SELFIES in `input`; molecule
    outputs (reactions) are SELFIES too. Both are converted to SMILES."""
    instruction, answer, extra = row.text("instruction"), row.text("output"), row.text("input")
    if instruction is None:
        return Skip("missing field", "instruction")
    if answer is None:
        return Skip("empty answer")
    try:
        molecules = [_selfies_to_smiles(extra)] if extra and SELFIES_PATTERN.match(extra) else []
        if SELFIES_PATTERN.match(answer):
            answer = _selfies_to_smiles(answer)
    except ValueError as error:
        return Skip("invalid SELFIES", str(error))
    return _question_and_answer(molecules, instruction if molecules or not extra else f"{instruction} {extra}", answer)


def _has_property_column(names: dict[str, str]) -> bool:
    return any(alias in names for aliases in PROPERTY_COLUMNS.values() for alias in aliases)


# format name -> (does a table with these lower-cased columns have this format?, the row converter). The order is
# the detection order: the first format whose test passes is the table's format.
FORMATS: dict[str, tuple[Callable[[dict[str, str]], bool], FormatFunction]] = {
    "messages": (lambda names: "messages" in names, messages_format),
    "instruction": (lambda names: {"instruction", "output", "smiles"} <= names.keys(), instruction_format),
    "mol_instructions": (lambda names: {"instruction", "output"} <= names.keys(), mol_instructions_format),
    "iupac": (lambda names: "iupac_name" in names or "iupac" in names, iupac_format),
    "property": (_has_property_column, property_format),
    "caption": (lambda names: {"description", "smiles"} <= names.keys(), caption_format),
}


def detect_format(columns: list[str]) -> str:
    """The first format of `FORMATS` whose columns the table has."""
    names = column_lookup(columns)
    for name, (matches, _) in FORMATS.items():
        if matches(names):
            return name
    raise ValueError(
        f"cannot tell the task format from the columns {columns}: pass it as 'FORMAT:path' with FORMAT in {tuple(FORMATS)}"
    )


def _row_to_conversations(row: dict[str, Any], fmt: str, names: dict[str, str], rng: random.Random) -> list[dict | Skip] | Skip:
    """The conversation(s) made from one row, or why the row cannot be used."""
    _, convert = FORMATS[fmt]
    return convert(Row(row, names), rng)


def load_source(source: DataSource, seed: int = 0) -> tuple[datasets.Dataset, SkipReport]:
    """Conversations `{"smiles": list[str], "messages": list[dict], "task": str}` from one source, and what was skipped."""
    table = read_table(source)
    fmt = source.format or detect_format(table.column_names)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {tuple(FORMATS)}")
    names = column_lookup(table.column_names)

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out = {"smiles": [], "messages": [], "task": [], "skip_reason": [], "skip_detail": []}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for index, row in zip(indices, rows):
            result = _row_to_conversations(row, fmt, names, random.Random(f"{seed}-{index}"))
            for conversation in [result] if isinstance(result, Skip) else result:
                skip = conversation if isinstance(conversation, Skip) else None
                conversation = {} if skip else conversation
                out["smiles"].append(conversation.get("smiles", []))
                out["messages"].append(conversation.get("messages", []))
                out["task"].append(conversation.get("task") or fmt)
                out["skip_reason"].append(skip.reason if skip else "")
                out["skip_detail"].append(f"row {index}" + (f": {skip.detail}" if skip and skip.detail else "") if skip else "")
        return out

    converted = table.map(
        convert, batched=True, with_indices=True, remove_columns=table.column_names, desc=f"Reading {source.name}"
    )
    report = SkipReport()
    for reason, detail in zip(converted["skip_reason"], converted["skip_detail"]):
        if reason:
            report.add(f"{source.name}: {reason}", detail)
    kept = converted.filter(lambda reason: not reason, input_columns="skip_reason")
    return kept.remove_columns(["skip_reason", "skip_detail"]), report


def load_mixture(sources: list[DataSource], seed: int = 0) -> tuple[datasets.Dataset, SkipReport]:
    """All sources, concatenated, or interleaved with the given proportions (`@weight` on every source).

    Interleaved, the proportions hold over the whole mixture: it runs until every source has been used up once, and a
    source used up before that starts again (oversampling, as a weight asks). Without repetition a small source would
    run out early and the mixture's tail, which `--max_train_samples` or `--max_steps` may or may not reach, would be
    the other sources only: the weights would silently not hold."""
    loaded = [load_source(source, seed) for source in sources]
    report = SkipReport()
    for _, skipped in loaded:
        report.update(skipped)
    parts = [dataset for dataset, _ in loaded]
    weights = [source.weight for source in sources]
    if len(parts) == 1:
        return parts[0], report
    if all(weight is None for weight in weights):
        return datasets.concatenate_datasets(parts).shuffle(seed=seed), report
    if any(weight is None or weight <= 0 for weight in weights):
        raise ValueError(f"give every dataset a positive weight ('path@0.3') or none at all, got {weights}")
    total = sum(weights)
    mixture = datasets.interleave_datasets(
        parts,
        probabilities=[weight / total for weight in weights],
        seed=seed,
        stopping_strategy="all_exhausted",
    )
    for source, part, weight in zip(sources, parts, weights):
        repeats = len(mixture) * weight / total / max(len(part), 1)
        if repeats > 1.05:
            logger.warning(
                "mixture: %s (%d rows, weight %s) is repeated about %.1f times to keep its weight",
                source.name,
                len(part),
                weight,
                repeats,
            )
    return mixture, report


def is_held_out(smiles: list[str], fraction: float, text: str | None = None) -> bool:
    """Whether a conversation about these molecules belongs to the held-out `fraction`: a hash of the SMILES text as
    the prompt shows it (canonical, non-isomeric, cut at 128 characters; see `prompt_smiles`), so stereoisomers, one
    molecule written two ways, and long molecules that share their first 128 characters -- all of which look the same
    to the model -- stay on one side. A conversation without molecules is placed by `text` (its first question)."""
    key = "|".join(map(_shown_smiles, smiles)) if smiles else "text:" + (text or "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def _first_question(messages: list[dict]) -> str:
    return next((message["content"] for message in messages if message.get("role") == "user"), "")


def split_by_molecule(dataset: datasets.Dataset, fraction: float) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Deterministic held-out split where all conversations showing one molecule text land on the same side."""
    smiles_column = dataset.select_columns("smiles")[:]["smiles"]  # one read (row by row is slow on a mixture)
    # the messages (slow to read as Python objects) only of the conversations without molecules
    without_molecules = [index for index, smiles in enumerate(smiles_column) if not smiles]
    questions = dict(zip(without_molecules, map(_first_question, dataset.select(without_molecules)["messages"])))
    flags = [is_held_out(smiles, fraction, questions.get(index)) for index, smiles in enumerate(smiles_column)]
    train = dataset.select([i for i, flag in enumerate(flags) if not flag])
    evaluation = dataset.select([i for i, flag in enumerate(flags) if flag])
    return train, evaluation


@functools.lru_cache(maxsize=1 << 16)  # a mixture repeats molecules (several questions each, repeated sources)
def _shown_smiles(smiles: str) -> str:
    """The SMILES text the processor puts in the prompt (its defaults), or the input when it does not parse."""
    try:
        return prompt_smiles(parse_smiles(smiles))
    except ValueError:
        return smiles


def conversation_with_molecules(smiles: list[str], messages: list[dict]) -> list[dict]:
    """Chat messages in the processor's format. Molecules fill the `<graph>` placeholders when the text has them,
    otherwise they go in front of the first user turn. Raises `ValueError` when placeholders and SMILES disagree."""
    with_placeholders = any(PLACEHOLDER in message["content"] for message in messages)
    pending = list(smiles)
    chat = []
    for message in messages:
        if with_placeholders and PLACEHOLDER in message["content"]:
            items = []
            pieces = message["content"].split(PLACEHOLDER)
            for position, piece in enumerate(pieces):
                if piece.strip():
                    items.append({"type": "text", "text": piece.strip()})
                if position < len(pieces) - 1:
                    if not pending:
                        raise ValueError(f"more {PLACEHOLDER} placeholders than the {len(smiles)} SMILES given")
                    items.append({"type": "molecule", "smiles": pending.pop(0)})
            chat.append({**message, "content": items})
        elif not with_placeholders and message["role"] == "user" and pending:
            items = [{"type": "molecule", "smiles": s} for s in pending] + [{"type": "text", "text": message["content"]}]
            chat.append({**message, "content": items})
            pending = []
        else:
            chat.append(dict(message))
    if pending:
        raise ValueError(f"{len(pending)} SMILES left without a {PLACEHOLDER} placeholder or user turn")
    return chat


def _graph_column(dtype: str, kind: str) -> datasets.List:
    """`datasets` type of one graph input stored per conversation: a list (batch vectors) or a list of lists."""
    value = datasets.Value(dtype)
    return datasets.List(value) if kind == "batch" else datasets.List(datasets.List(value))


ENCODED_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int64")),
        "labels": datasets.List(datasets.Value("int64")),
        **{spec.name: _graph_column(spec.dtype, spec.kind) for spec in GRAPH_INPUTS},
        "num_molecules": datasets.Value("int64"),
        "task": datasets.Value("string"),
        "skip_reason": datasets.Value("string"),
        "skip_detail": datasets.Value("string"),
    }
)
# The graph inputs of a conversation without molecules (edge_index keeps its two rows).
EMPTY_GRAPH_ROW = {spec.name: [[], []] if spec.kind == "edge_index" else [] for spec in GRAPH_INPUTS}


ANSWER_CUT = "answer cut at max_length"
TEXT_TRIMMED = "text trimmed before tokenization"


def character_budget(processor, max_length: int | None) -> int | None:
    """How many characters of one message can matter for `max_length` tokens: no token spells more characters than
    the longest vocabulary entry, so text past `max_length` times that (doubled, for merges near the cut) is never
    part of the first `max_length` tokens. Trimming there spares tokenizing megabytes to keep a thousand tokens."""
    if max_length is None:
        return None
    longest = max(map(len, processor.tokenizer.get_vocab()), default=1)
    return 2 * max_length * max(longest, 1) + 64


def trim_messages(messages: list[dict], budget: int | None) -> tuple[list[dict], bool, bool]:
    """Messages with each text cut to `budget` characters; also whether any was cut, and whether a `<graph>`
    placeholder was cut off with it (its slots would lie beyond max_length)."""
    if budget is None or all(len(message["content"]) <= budget for message in messages):
        return messages, False, False
    trimmed, lost_placeholder = [], False
    for message in messages:
        content = message["content"]
        if len(content) > budget:
            lost_placeholder |= PLACEHOLDER in content[budget - len(PLACEHOLDER) + 1 :]
            content = content[:budget]
        trimmed.append({**message, "content": content})
    return trimmed, True, lost_placeholder


def encode_conversation(
    smiles: list[str], messages: list[dict], processor, max_length: int | None, char_budget: int | None = None
) -> dict[str, Any]:
    """Token ids, labels (assistant tokens only; -100 elsewhere, graph slots included) and the molecules' graph
    tensors of one conversation; `skip_reason` / `skip_detail` say why it cannot be used. A kept conversation that
    was changed says how in `skip_detail` (`TEXT_TRIMMED`, `ANSWER_CUT`), with an empty `skip_reason`.
    `char_budget`: see `character_budget` (computed when not given)."""
    empty = {"input_ids": [], "labels": [], **EMPTY_GRAPH_ROW, "num_molecules": 0}
    notes = []
    if max_length is not None:
        budget = char_budget if char_budget is not None else character_budget(processor, max_length)
        messages, trimmed, lost_placeholder = trim_messages(messages, budget)
        if lost_placeholder:
            return {
                **empty,
                "skip_reason": "graph tokens beyond max_length",
                "skip_detail": f"a placeholder after {budget:,} characters",
            }
        if trimmed:
            notes.append(TEXT_TRIMMED)
    try:
        chat = conversation_with_molecules(smiles, messages)
        encoded = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    except ValueError as error:
        return {**empty, "skip_reason": "invalid molecule or placeholders", "skip_detail": str(error)}
    ids, mask = encoded["input_ids"][0], encoded["assistant_masks"][0]
    labels = [token if keep and token != processor.graph_token_id else -100 for token, keep in zip(ids, mask)]
    if max_length is not None and len(ids) > max_length:
        if processor.graph_token_id in ids[max_length:]:
            return {**empty, "skip_reason": "graph tokens beyond max_length", "skip_detail": f"{len(ids)} tokens > {max_length}"}
        if any(label != -100 for label in labels[max_length:]):
            notes.append(ANSWER_CUT)
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == -100 for label in labels):
        return {**empty, "skip_reason": "no answer token within max_length", "skip_detail": f"max_length={max_length}"}
    row = {**empty, "input_ids": ids, "labels": labels, "skip_reason": "", "skip_detail": "; ".join(notes)}
    if "graph_node_batch" in encoded:
        row.update({name: encoded[name].tolist() for name in EMPTY_GRAPH_ROW})
        row["num_molecules"] = num_molecules(encoded["graph_node_batch"])
    return row


def encode_dataset(
    dataset: datasets.Dataset, processor, max_length: int | None = None, num_proc: int | None = None
) -> tuple[datasets.Dataset, SkipReport]:
    """Featurize and tokenize every conversation once; returns the encoded rows and those that could not be used."""

    budget = character_budget(processor, max_length)

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        encoded = encode_conversation(row["smiles"], row["messages"], processor, max_length, char_budget=budget)
        return {**encoded, "task": row.get("task") or ""}

    encoded = dataset.map(
        encode,
        remove_columns=dataset.column_names,
        features=ENCODED_FEATURES,
        num_proc=num_proc,
        desc="Featurizing and tokenizing",
    )
    report = SkipReport()
    for index, (reason, detail) in enumerate(zip(encoded["skip_reason"], encoded["skip_detail"])):
        if reason:
            report.add(reason, f"conversation {index}: {detail}")
        elif detail:  # kept, but changed: counted so that a cut answer is never silent
            for note in detail.split("; "):
                report.note(note)
    kept = encoded.filter(lambda reason: not reason, input_columns="skip_reason")
    return kept.remove_columns(["skip_reason", "skip_detail"]), report
