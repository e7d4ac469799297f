"""Deterministic train / dev splits of the shared real data (`../shared/data`), written as files the training and
evaluation loaders read (`llamo.data` formats `caption`, `iupac`, `property`).

- `caption`: ChEBI-20 `validation.txt` (its test split is kept aside), divided by a hash of the canonical SMILES
  (`llamo.data.is_held_out`, 10 % dev): one molecule is never on both sides.
- `iupac`: PubChem `train.txt` for training, `validation.txt` as dev, minus dev molecules also in train.
- `property`: QM9 HOMO / LUMO / gap (Hartree); molecules whose QM9 index hashes below `qm9_train_fraction` train, a
  disjoint bucket of about 130 molecules is dev, minus dev molecules also in train.

The split files hold the captions: they are written under the git-ignored output folder, never into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pathlib
from dataclasses import dataclass

from rdkit import Chem

from llamo.data import is_held_out, undouble_backslashes
from llamo.metrics import parse_molecule


SOURCES = {
    "caption": ("chebi20/validation.txt",),
    "iupac": ("pubchem_iupac/train.txt", "pubchem_iupac/validation.txt"),
    "property": ("qm9/qm9_homo_lumo_gap.csv",),
}
CAPTION_DEV_FRACTION = 0.1
QM9_DEV_BUCKET = (0.999, 1.0)  # about 130 molecules, far from the training bucket


@dataclass
class TaskSplit:
    """Where a task's files are and what went into them."""

    task: str
    format: str
    train: pathlib.Path
    dev: pathlib.Path
    counts: dict

    def spec(self, part: str) -> str:
        return f"{self.format}:{getattr(self, part)}"


def write_split(task: str, out: pathlib.Path, name: str, header: list[str], train: list, dev: list, counts: dict) -> TaskSplit:
    """`<name>_train.tsv` and `<name>_dev.tsv` in `out`, in the loader format named like the task."""
    train_path = write_rows(out / f"{name}_train.tsv", header, train)
    return TaskSplit(task, task, train_path, write_rows(out / f"{name}_dev.tsv", header, dev), counts)


def missing_sources(shared: pathlib.Path) -> list[str]:
    return [str(shared / name) for names in SOURCES.values() for name in names if not (shared / name).is_file()]


def read_rows(path: pathlib.Path) -> list[dict[str, str]]:
    """Rows of a TSV (`.txt`) or CSV file, fields verbatim (captions may hold stray quotes)."""
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix == ".csv":
            return list(csv.DictReader(handle))
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_rows(path: pathlib.Path, header: list[str], rows: list[list]) -> pathlib.Path:
    """A TSV with fields written verbatim (no quoting or escaping, as the loaders read it)."""
    lines = []
    for row in [header, *rows]:
        fields = [str(field) for field in row]
        if any(char in field for field in fields for char in "\t\r\n"):
            raise ValueError(f"{path.name}: a field holds a tab or line break: {fields}")
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def canonical(smiles: str) -> str | None:
    mol = parse_molecule(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else None


def unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) for a string."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


def split_captions(shared: pathlib.Path, out: pathlib.Path) -> TaskSplit:
    rows = read_rows(shared / SOURCES["caption"][0])
    train, dev, invalid = [], [], 0
    for row in rows:
        smiles = undouble_backslashes(row["SMILES"])
        if canonical(smiles) is None:
            invalid += 1
            continue
        (dev if is_held_out([smiles], CAPTION_DEV_FRACTION) else train).append([row["CID"], smiles, row["description"]])
    header = ["CID", "SMILES", "description"]
    counts = {"source_rows": len(rows), "invalid_smiles": invalid, "train": len(train), "dev": len(dev)}
    return write_split("caption", out, "chebi20", header, train, dev, counts)


def split_names(shared: pathlib.Path, out: pathlib.Path) -> TaskSplit:
    train_rows, dev_rows = (read_rows(shared / name) for name in SOURCES["iupac"])
    train = [[row["cid"], row["SMILES"], row["description"]] for row in train_rows]
    seen = {canonical(row[1]) for row in train}
    dev = [[row["cid"], row["SMILES"], row["description"]] for row in dev_rows]
    overlap = [row for row in dev if canonical(row[1]) in seen]
    dev = [row for row in dev if row not in overlap]
    header = ["cid", "smiles", "iupac_name"]
    counts = {"train": len(train), "dev": len(dev), "dev_dropped_also_in_train": len(overlap)}
    return write_split("iupac", out, "iupac", header, train, dev, counts)


def split_qm9(shared: pathlib.Path, out: pathlib.Path, train_fraction: float) -> TaskSplit:
    rows = read_rows(shared / SOURCES["property"][0])
    train, dev = [], []
    for row in rows:
        bucket = unit_hash(f"qm9-{row['Index']}")
        record = [row["Index"], row["SMILES"], row["HOMO_au"], row["LUMO_au"], row["HOMO_LUMO_gap_au"]]
        if bucket < train_fraction:
            train.append(record)
        elif QM9_DEV_BUCKET[0] <= bucket < QM9_DEV_BUCKET[1]:
            dev.append(record)
    seen = {canonical(row[1]) for row in train}
    kept = [row for row in dev if canonical(row[1]) not in seen]
    header = ["qm9_index", "smiles", "homo", "lumo", "gap"]
    counts = {"source_rows": len(rows), "train": len(train), "dev": len(kept), "dev_dropped_also_in_train": len(dev) - len(kept)}
    return write_split("property", out, "qm9", header, train, kept, counts)


def prepare_splits(shared: pathlib.Path, out: pathlib.Path, qm9_train_fraction: float = 0.1) -> dict[str, TaskSplit]:
    """Write every task's train / dev files into `out` and a `splits.json` describing them."""
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "caption": split_captions(shared, out),
        "iupac": split_names(shared, out),
        "property": split_qm9(shared, out, qm9_train_fraction),
    }
    summary = {task: {"train": str(s.train), "dev": str(s.dev), **s.counts} for task, s in splits.items()}
    (out / "splits.json").write_text(json.dumps(summary, indent=2))
    return splits
