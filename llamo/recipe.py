"""The data of the LLaMo-SmolLM2 recipe: training tables, the molecule-disjoint dev split, and held-out questions.

Used by `scripts/train_smollm2.py` (training) and `run_llamo.py` (the main job: evaluation of the shipped weights), so
both see the same tables and the same split. Sources (`../shared/data`, or `--data_dir`; caption text is never copied
into the repository, only into `outputs/`):

| table | rows | task |
|---|---|---|
| captions | ChEBI-20 validation 3,301 + PubChem324k validation 1,000 + GIT-Mol toy captions 4,150 | `caption` |
| iupac | PubChem IUPAC names, train 11,856 + validation 982 | `iupac` |
| qm9 | 6,000 QM9 molecules drawn with the seed, HOMO / LUMO / gap (Hartree) | `property` |
| facts | RDKit-computed questions (`llamo.instructions`) about 3,000 caption and IUPAC molecules | `facts` |

The dev split is `llamo.data.is_held_out` with `HELD_OUT` (10 %): a hash of the SMILES the prompt shows, so one
molecule is on the same side in every table (a molecule with a caption and a name is held out of both).
Without `../shared/data`, the repository's own SMILES tables stand in for IUPAC names and QM9 (`data/`), and the
caption task is left out with a message.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
import random
from collections.abc import Sequence


ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
HELD_OUT = 0.1
CAPTION_FILES = ("chebi20/validation.txt", "pubchem324k_caption/validation.txt", "gitmol_toy_captions/captions.txt")
IUPAC_FILES = ("pubchem_iupac/train.txt", "pubchem_iupac/validation.txt")
QM9_FILE = "qm9/qm9_homo_lumo_gap.csv"
QM9_MOLECULES = 6000
FACT_MOLECULES = 3000
# Stage 2's mixture: captions carry the paper's main task; names, properties and facts its other instructions.
MIXTURE = {"captions": 0.4, "iupac": 0.2, "qm9": 0.2, "facts": 0.2}
FORMATS = {"captions": "caption", "iupac": "iupac", "qm9": "property", "facts": "messages"}
# Facts with short exact answers (scored by exact match).
EXACT_FACTS = (
    "formula", "heavy_atoms", "rings", "aromatic_rings", "is_aromatic", "hbond_donors", "hbond_acceptors",
    "rotatable_bonds", "formal_charge", "stereocentres", "components", "motifs", "has_group",
)  # fmt: skip


def read_tsv(path: pathlib.Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None))


def write_tsv(path: pathlib.Path, columns: list[str], rows: list[dict]) -> None:
    with replaced_atomically(path) as handle:
        writer = csv.DictWriter(
            handle, fieldnames=columns, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def replaced_atomically(path: pathlib.Path):
    """A text handle whose content replaces `path` in one step when it closes: a training run reading the table while
    another prepares it again sees the old file or the new one, never half of it."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="") as handle:
        yield handle
    os.replace(partial, path)


def prepare_data(data_dir: pathlib.Path, out: pathlib.Path, seed: int = 0) -> dict[str, pathlib.Path]:
    """The recipe's four tables under `out` (all molecules: the dev split is applied by molecule when training and
    evaluating). Raises `FileNotFoundError` naming the missing files."""
    from llamo.data import undouble_backslashes
    from llamo.instructions import generate_examples

    missing = [name for name in (*CAPTION_FILES, *IUPAC_FILES, QM9_FILE) if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the recipe's data is not in {data_dir}: missing {missing} (pass --data_dir)")
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"{name}.{'jsonl' if name == 'facts' else 'tsv'}" for name in MIXTURE}
    captions = []
    for name in CAPTION_FILES:
        for row in read_tsv(data_dir / name):
            # ChEBI-20 doubles every backslash of its SMILES (the other files do not: undoubling leaves them as they are)
            captions.append({"SMILES": undouble_backslashes(row["SMILES"]), "description": row["description"], "source": name})
    write_tsv(files["captions"], ["SMILES", "description", "source"], captions)
    names = [row for name in IUPAC_FILES for row in read_tsv(data_dir / name)]
    write_tsv(files["iupac"], ["SMILES", "iupac_name"], [{"SMILES": r["SMILES"], "iupac_name": r["description"]} for r in names])
    with (data_dir / QM9_FILE).open(encoding="utf-8", newline="") as handle:
        qm9 = random.Random(seed).sample(list(csv.DictReader(handle)), QM9_MOLECULES)
    write_tsv(
        files["qm9"],
        ["smiles", "homo", "lumo", "gap"],
        [{"smiles": r["SMILES"], "homo": r["HOMO_au"], "lumo": r["LUMO_au"], "gap": r["HOMO_LUMO_gap_au"]} for r in qm9],
    )
    molecules = random.Random(seed).sample(sorted({r["SMILES"] for r in captions} | {r["SMILES"] for r in names}), FACT_MOLECULES)
    with replaced_atomically(files["facts"]) as handle:
        for row in generate_examples(molecules, 2, multi_turn_fraction=0.1, descriptions=False, seed=seed):
            handle.write(json.dumps(row) + "\n")
    print(
        f"[recipe] data in {out}: {len(captions)} captions, {len(names)} IUPAC names, {len(qm9)} QM9 molecules "
        f"(3 questions each), computed facts of {len(molecules)} molecules",
        flush=True,
    )
    return files


def mixture_specs(files: dict[str, pathlib.Path]) -> list[str]:
    """`train_sft.py --datasets` of stage 2: every table with its weight."""
    return [f"{FORMATS[name]}:{files[name]}@{weight}" for name, weight in MIXTURE.items()]


# ---------------------------------------------------------------------------------------------------------------
# Held-out questions for evaluation, and the training side for the baselines


def evaluation_tables(data_dir: pathlib.Path | None, out: pathlib.Path, seed: int = 0) -> dict[str, pathlib.Path]:
    """The recipe's tables when its data is there; else the repository's own SMILES tables (IUPAC names, QM9 gaps)
    for the tasks they cover (no captions: their text is not in the repository)."""
    if data_dir is not None and all((data_dir / name).is_file() for name in (*CAPTION_FILES, *IUPAC_FILES, QM9_FILE)):
        return prepare_data(data_dir, out, seed)
    where = "no data folder given" if data_dir is None else f"{data_dir} does not hold the recipe's data"
    print(
        f"[recipe] {where}: captions are not evaluated; IUPAC names and QM9 come from the repository's data/ tables",
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    files = {"iupac": ROOT / "data" / "pubchem_iupac_validation.tsv", "qm9": out / "qm9.tsv"}
    rows = read_tsv(ROOT / "data" / "qm9_homo_lumo_gap.tsv")
    write_tsv(files["qm9"], ["smiles", "homo", "lumo", "gap"], rows)
    iupac_train = ROOT / "data" / "pubchem_iupac_train.tsv"
    files["iupac_pool"] = iupac_train
    return files


def split_examples(spec: str, seed: int = 0):
    """(training examples, held-out examples) of one `[format:]path` table, split by molecule as in training."""
    from llamo.data import DataSource, load_source, split_by_molecule
    from llamo.examples import examples_from_conversations

    conversations, _ = load_source(DataSource.parse(spec), seed=seed)
    train, held = split_by_molecule(conversations, HELD_OUT)
    return examples_from_conversations(train), examples_from_conversations(held)


def fact_examples(smiles: Sequence[str], count: int, seed: int):
    """`count` new exact-answer fact questions (one task per kind of fact: `facts/rings`) about these molecules."""
    from llamo.examples import examples_from_conversations
    from llamo.instructions import generate_examples

    rows = generate_examples(smiles, 1, multi_turn_fraction=0.0, descriptions=False, facts_subset=EXACT_FACTS, seed=seed)
    rows = [{**row, "smiles": [row["smiles"]], "task": f"facts/{row['fact']}"} for row, _ in zip(rows, range(count))]
    return examples_from_conversations(rows)


def held_out_questions(files: dict[str, pathlib.Path], per_task: int, seed: int = 0):
    """(held-out examples, training examples for the baselines): `per_task` questions of each task about dev molecules
    (captions when present, IUPAC names, QM9 HOMO/LUMO/gap, computed facts), drawn with the seed."""
    from llamo.data import is_held_out

    rng = random.Random(seed)
    held, train = [], []
    for name, spec in (("captions", "caption"), ("iupac", "iupac"), ("qm9", "property")):
        if name not in files:
            continue
        train_part, held_part = split_examples(f"{spec}:{files[name]}", seed)
        if name == "iupac" and "iupac_pool" in files:  # the repository's tables: the train file is the pool
            pool_train, pool_held = split_examples(f"iupac:{files['iupac_pool']}", seed)
            train_part, held_part = train_part + pool_train, held_part + pool_held
        held += rng.sample(held_part, min(per_task, len(held_part)))
        train += train_part
    dev_molecules = sorted({e.smiles[0] for e in held if e.smiles})
    train_molecules = sorted({e.smiles[0] for e in train if e.smiles and not is_held_out(e.smiles, HELD_OUT)})
    held += fact_examples(dev_molecules, per_task, seed + 1)
    train += fact_examples(train_molecules, 20 * per_task, seed + 2)
    for index, example in enumerate(held):
        example.id = index
    return held, train


__all__ = [
    "DEFAULT_DATA", "EXACT_FACTS", "HELD_OUT", "MIXTURE", "evaluation_tables", "held_out_questions", "mixture_specs",
    "prepare_data",
]  # fmt: skip
