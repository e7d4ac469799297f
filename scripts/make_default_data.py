"""Rebuild the small fact-only data files in `data/` from the shared corpus (`../shared/data`).

Only SMILES, identifiers, IUPAC names and numbers are copied -- never caption text. Selection is
deterministic (file order / fixed strides), so running this again gives byte-identical files.

    python scripts/make_default_data.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import pathlib

from llamo.data import undouble_backslashes


ROOT = pathlib.Path(__file__).resolve().parent.parent


def read_tsv(path: pathlib.Path) -> list[list[str]]:
    with path.open(encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    return rows[1:]


def write_tsv(path: pathlib.Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("\t".join(header) + "\n")
        for row in rows:
            handle.write("\t".join(row) + "\n")
    print(f"wrote {path.relative_to(ROOT)}: {len(rows)} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    shared, out = args.shared, ROOT / "data"
    out.mkdir(exist_ok=True)

    # ChEBI-20 validation: CID + SMILES of the first 2,000 rows.
    chebi = [[cid, undouble_backslashes(smiles)] for cid, smiles, _ in read_tsv(shared / "chebi20" / "validation.txt")[:2000]]
    write_tsv(out / "chebi20_smiles.tsv", ["cid", "smiles"], chebi)

    # PubChem SMILES -> IUPAC name: the first 2,000 training rows, and the whole validation split.
    iupac_train = read_tsv(shared / "pubchem_iupac" / "train.txt")[:2000]
    write_tsv(out / "pubchem_iupac_train.tsv", ["cid", "smiles", "iupac_name"], iupac_train)
    write_tsv(
        out / "pubchem_iupac_validation.tsv",
        ["cid", "smiles", "iupac_name"],
        read_tsv(shared / "pubchem_iupac" / "validation.txt"),
    )

    # QM9 HOMO / LUMO / gap (Hartree): every 65th molecule, 2,013 rows.
    with (shared / "qm9" / "qm9_homo_lumo_gap.csv").open(encoding="utf-8") as handle:
        qm9 = list(csv.reader(handle))[1:]
    write_tsv(out / "qm9_homo_lumo_gap.tsv", ["qm9_index", "smiles", "homo", "lumo", "gap"], qm9[::65])

    # MoleculeNet BBBP and ESOL SMILES: salts, charges, stereo and drug-like molecules for the parity tests.
    with (shared / "moleculenet" / "BBBP.csv").open(encoding="utf-8") as handle:
        bbbp = [["bbbp", row["num"], row["smiles"]] for row in csv.DictReader(handle)]
    with (shared / "moleculenet" / "ESOL_delaney-processed.csv").open(encoding="utf-8") as handle:
        esol = [["esol", str(i), row["smiles"]] for i, row in enumerate(csv.DictReader(handle), start=1)]
    write_tsv(out / "moleculenet_smiles.tsv", ["dataset", "id", "smiles"], bbbp[::4] + esol[::4])


if __name__ == "__main__":
    main()
