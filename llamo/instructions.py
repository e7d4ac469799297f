"""Instruction data from any list of SMILES: RDKit-computed facts as questions, answers and short descriptions.

Each molecule gives single-turn questions (formula, counts, functional groups, properties), multi-turn
conversations chaining several of them, and short descriptions (stage-1 alignment data). The wording is varied
from templates written for this project; every answer is computed, never guessed. Usable at any scale:

    llamo-instructions --input data/chebi20_smiles.tsv --output outputs/facts.jsonl

Rows are `{"smiles", "messages", "task", "fact"}`; the molecule goes in front of the first user turn when the
rows are loaded for training (`llamo/data.py`, format `messages`).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors
from tqdm.auto import tqdm

from featurization_llamo import functional_groups, parse_smiles


# Functional groups by SMARTS, written for this project and checked by hand on the molecules of
# tests/test_instructions.py. Conventions a chemist expects (and RDKit's fragment counters miss):
# - an amine N is not aromatic, has no double or triple bond and is bonded only to carbon (and H): no amide,
#   sulfonamide, nitro, hydrazine or amidine N. Its degree counts carbons: primary RNH2 (or RNH3+), secondary,
#   tertiary, quaternary ammonium. Aryl amines (aniline) are amines.
# - an ester / amide is named lactone / lactam when its C(=O)-O / C(=O)-N bond is in a ring, never both.
# - an ether O joins two carbons neither of which is a carbonyl / imine / thiocarbonyl carbon (so an ester's O is
#   not an ether), outside three-membered rings (epoxides). Aromatic O (furan) is not an ether.
# - halogens: on an sp3 carbon an alkyl halide, except a CF3 group (trifluoromethyl); on an aromatic carbon an aryl
#   halide; a free halide anion (NaCl's Cl-) is a halide ion, not a group of a molecule.
_AMINE_N = "!a;!$([#7]~[!#6;!#1]);!$([#7]=,#*);!$([#7][#6]=[#7,#8,#16])"
_NOT_CARBONYL_C = "!$([#6]=[#7,#8,#16])"
FUNCTIONAL_GROUP_SMARTS = {
    "carboxylic acid": "[CX3;$([CH1]),$(C[#6])](=O)[OX2H1]",
    "carboxylate": "[CX3;$([CH1]),$(C[#6])](=O)[OX1-]",
    "ester": "[#6][CX3](=O)!@[OX2][#6]",
    "lactone": "[#6][#6X3](=O)@[OX2,o]@[#6]",
    "amide": "[#6][CX3](=O)!@[NX3]",
    "lactam": "[#6][#6X3](=O)@[#7X3]",  # aromatic too: 2-pyridone, the xanthine ring of caffeine
    "urea group": "[#7X3][#6X3](=O)[#7X3]",
    "guanidine group": "[NX3][CX3](=[NX2])[NX3]",
    "imine": "[CX3;$(C([#6])[#6]),$([CH1][#6]),$([CH2])]=[NX2][#6,#1]",
    "carbamate": "[NX3][CX3](=O)[OX2][#6]",
    "ketone": "[#6][CX3](=O)[#6]",
    "aldehyde": "[CX3H1](=O)[#6]",
    "ether": f"[OX2;!r3]([#6;{_NOT_CARBONYL_C}])[#6;{_NOT_CARBONYL_C}]",
    "epoxide": "[OX2;r3]1[#6][#6]1",
    "aliphatic hydroxyl group": "[OX2H1][CX4]",
    "phenol": "[OX2H1]c",
    "primary amine": f"[$([NX3H2]),$([NX4H3+]);{_AMINE_N}]",
    "secondary amine": f"[$([NX3H1]),$([NX4H2+]);{_AMINE_N}]",
    "tertiary amine": f"[$([NX3H0]),$([NX4H1+]);{_AMINE_N}]",
    "quaternary ammonium": f"[NX4H0+;{_AMINE_N}]",
    "nitro group": "[$([NX3](=O)=O),$([NX3+](=O)[O-])][#6]",
    "nitrile": "[NX1]#[CX2][#6]",
    "azo group": "[#6][NX2]=[NX2][#6]",
    "thiol": "[SX2H1][#6]",
    "thioether": f"[SX2;!a]([#6;{_NOT_CARBONYL_C}])[#6;{_NOT_CARBONYL_C}]",
    "sulfonamide": "[SX4](=O)(=O)[NX3]",
    "sulfone": "[#6][SX4](=O)(=O)[#6]",
    "phosphate group": "[PX4](=O)([OX2,OX1-])([OX2,OX1-])[OX2,OX1-]",
    "alkene": "[CX3]=[CX3]",
    "alkyne": "[CX2]#[CX2]",
    "alkyl halide": "[CX4;!$(C(F)(F)F)][F,Cl,Br,I]",
    "trifluoromethyl group": "[CX4](F)(F)F",
    "aryl halide": "c[F,Cl,Br,I]",
    "halide ion": "[F-,Cl-,Br-,I-;X0]",
    "benzene ring": "c1ccccc1",
    "pyridine ring": "[nX2]1ccccc1",
    "furan ring": "o1cccc1",
    "thiophene ring": "s1cccc1",
    "imidazole ring": "[#7]1:[#6]:[#7]:[#6]:[#6]:1",
}
FUNCTIONAL_GROUP_PATTERNS = {name: Chem.MolFromSmarts(smarts) for name, smarts in FUNCTIONAL_GROUP_SMARTS.items()}
NAMED_GROUPS = {name: name for name in FUNCTIONAL_GROUP_SMARTS}  # every name the questions may ask about


def named_groups(mol: Chem.Mol) -> tuple[str, ...]:
    """The functional groups of `FUNCTIONAL_GROUP_SMARTS` present in `mol`, sorted by name."""
    return tuple(sorted(name for name, pattern in FUNCTIONAL_GROUP_PATTERNS.items() if mol.HasSubstructMatch(pattern)))


@dataclass(frozen=True)
class MoleculeFacts:
    """Facts RDKit computes for one molecule (average masses in g/mol; H-bond donors and acceptors by Lipinski's rule:
    N-H / O-H groups and N / O atoms)."""

    formula: str
    molecular_weight: float
    exact_mass: float
    heavy_atoms: int
    rings: int
    aromatic_rings: int
    hbond_donors: int
    hbond_acceptors: int
    rotatable_bonds: int
    logp: float
    tpsa: float
    formal_charge: int
    stereocentres: int
    components: int
    motifs: int  # LLaMo's functional groups (motif extractor), rings included
    groups: tuple[str, ...]  # named groups found by FUNCTIONAL_GROUP_SMARTS, sorted


def molecule_facts(mol: Chem.Mol) -> MoleculeFacts:
    return MoleculeFacts(
        formula=rdMolDescriptors.CalcMolFormula(mol),
        molecular_weight=Descriptors.MolWt(mol),
        exact_mass=Descriptors.ExactMolWt(mol),
        heavy_atoms=mol.GetNumHeavyAtoms(),
        rings=rdMolDescriptors.CalcNumRings(mol),
        aromatic_rings=rdMolDescriptors.CalcNumAromaticRings(mol),
        hbond_donors=rdMolDescriptors.CalcNumLipinskiHBD(mol),
        hbond_acceptors=rdMolDescriptors.CalcNumLipinskiHBA(mol),
        rotatable_bonds=rdMolDescriptors.CalcNumRotatableBonds(mol),
        logp=Crippen.MolLogP(mol),
        tpsa=rdMolDescriptors.CalcTPSA(mol),
        formal_charge=Chem.GetFormalCharge(mol),
        stereocentres=len(Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False)),
        components=len(Chem.GetMolFrags(mol)),
        motifs=len(functional_groups(mol)),
        groups=named_groups(mol),
    )


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# fact -> (question wordings, answer function). Answers are short and exact, so exact match can score them.
QUESTIONS: dict[str, tuple[tuple[str, ...], callable]] = {
    "formula": (
        (
            "What is the molecular formula of this molecule?",
            "Give the molecular formula.",
            "Which molecular formula does this compound have?",
        ),
        lambda f: f.formula,
    ),
    "heavy_atoms": (
        (
            "How many heavy atoms does this molecule have?",
            "Count the non-hydrogen atoms in this molecule.",
            "How many heavy atoms are there?",
        ),
        lambda f: str(f.heavy_atoms),
    ),
    "rings": (
        ("How many rings does this molecule contain?", "Count the rings in this structure.", "What is the number of rings?"),
        lambda f: str(f.rings),
    ),
    "aromatic_rings": (
        (
            "How many aromatic rings does this molecule have?",
            "Count the aromatic rings.",
            "What is the number of aromatic rings in this compound?",
        ),
        lambda f: str(f.aromatic_rings),
    ),
    "is_aromatic": (
        (
            "Is this molecule aromatic?",
            "Does this compound contain an aromatic ring?",
            "Is there an aromatic ring in this molecule?",
        ),
        lambda f: "Yes" if f.aromatic_rings else "No",
    ),
    "hbond_donors": (
        (
            "How many hydrogen bond donors does this molecule have?",
            "Count the hydrogen bond donors.",
            "What is its number of H-bond donors?",
        ),
        lambda f: str(f.hbond_donors),
    ),
    "hbond_acceptors": (
        (
            "How many hydrogen bond acceptors does this molecule have?",
            "Count the hydrogen bond acceptors.",
            "What is its number of H-bond acceptors?",
        ),
        lambda f: str(f.hbond_acceptors),
    ),
    "rotatable_bonds": (
        (
            "How many rotatable bonds does this molecule have?",
            "Count the rotatable bonds.",
            "What is the number of rotatable bonds?",
        ),
        lambda f: str(f.rotatable_bonds),
    ),
    "formal_charge": (
        ("What is the net formal charge of this molecule?", "Give the total formal charge.", "What is its overall charge?"),
        lambda f: str(f.formal_charge),
    ),
    "stereocentres": (
        (
            "How many stereocentres does this molecule have?",
            "Count the stereocentres, assigned or not.",
            "How many chiral centres are there?",
        ),
        lambda f: str(f.stereocentres),
    ),
    "components": (
        (
            "How many separate components does this structure consist of?",
            "Into how many disconnected fragments does it fall apart?",
        ),
        lambda f: str(f.components),
    ),
    "motifs": (
        (
            "How many functional groups does LLaMo's motif extractor find in this molecule?",
            "Count the motifs (functional groups and ring systems).",
        ),
        lambda f: str(f.motifs),
    ),
    "molecular_weight": (
        (
            "What is the molecular weight of this molecule?",
            "Give its average molecular mass.",
            "How heavy is one mole of this compound?",
        ),
        lambda f: f"{f.molecular_weight:.2f} g/mol",
    ),
    "exact_mass": (
        ("What is the monoisotopic mass of this molecule?", "Give its exact mass."),
        lambda f: f"{f.exact_mass:.4f}",
    ),
    "logp": (
        ("What is the Crippen logP of this molecule?", "Estimate its octanol-water partition coefficient (Crippen logP)."),
        lambda f: f"{f.logp:.2f}",
    ),
    "tpsa": (
        ("What is the topological polar surface area of this molecule?", "Give its TPSA in square angstroms."),
        lambda f: f"{f.tpsa:.2f}",
    ),
    "groups": (
        (
            "Which functional groups does this molecule contain?",
            "List the functional groups of this compound.",
            "Name the functional groups present.",
        ),
        lambda f: _listing(f.groups) if f.groups else "none of the common ones",
    ),
}
HAS_GROUP_QUESTIONS = ("Does this molecule contain {group}?", "Is there {group} in this compound?", "Does it have {group}?")
DESCRIBE_QUESTIONS = (
    "Describe this molecule.",
    "Give a short description of this molecule.",
    "What can you tell me about this molecule?",
    "Summarize the structure of this compound.",
)


def has_group_question(facts: MoleculeFacts, rng: random.Random) -> tuple[str, str]:
    """A yes/no question about one named group, asked about present and absent groups equally often."""
    present = rng.random() < 0.5 and facts.groups
    group = rng.choice(facts.groups) if present else rng.choice([g for g in NAMED_GROUPS.values() if g not in facts.groups])
    return rng.choice(HAS_GROUP_QUESTIONS).format(group=_with_article(group)), "Yes" if group in facts.groups else "No"


def ask(fact: str, facts: MoleculeFacts, rng: random.Random) -> tuple[str, str]:
    if fact == "has_group":
        return has_group_question(facts, rng)
    wordings, answer = QUESTIONS[fact]
    return rng.choice(wordings), answer(facts)


def describe(facts: MoleculeFacts, rng: random.Random) -> str:
    """A short description stitched from the facts, in varied order and wording."""
    if facts.rings == 0:
        rings = "It is acyclic."
    else:
        aromatic = f", {facts.aromatic_rings} of them aromatic" if facts.aromatic_rings else ", none of them aromatic"
        rings = f"It contains {_count(facts.rings, 'ring')}{aromatic}."
    if facts.groups:
        named = _listing(_with_article(group) for group in facts.groups)
        groups = rng.choice(("Its functional groups include {}.", "It bears {}.", "It contains {}.")).format(named)
    else:
        groups = "It has none of the common functional groups."
    hbonds = f"It has {_count(facts.hbond_donors, 'hydrogen bond donor')} and {_count(facts.hbond_acceptors, 'acceptor')}."
    charge = "" if facts.formal_charge == 0 else f" Its net charge is {facts.formal_charge:+d}."
    components = f" The structure consists of {facts.components} separate components." if facts.components > 1 else ""
    opening = rng.choice(
        (
            "The molecule has the formula {formula} ({weight:.2f} g/mol) and {atoms}.",
            "This is a compound of formula {formula} with {atoms} and a molecular weight of {weight:.2f} g/mol.",
            "A molecule with {atoms}; its formula is {formula} and its molecular weight {weight:.2f} g/mol.",
        )
    ).format(formula=facts.formula, weight=facts.molecular_weight, atoms=_count(facts.heavy_atoms, "heavy atom"))
    middle = [rings, groups, hbonds]
    rng.shuffle(middle)
    return " ".join([opening, *middle]) + charge + components


FACTS_FOR_QUESTIONS = (*QUESTIONS, "has_group")


def generate_examples(
    smiles: Iterable[str],
    questions_per_molecule: int = 3,
    multi_turn_fraction: float = 0.25,
    descriptions: bool = True,
    facts_subset: Iterable[str] | None = None,
    seed: int = 0,
) -> Iterator[dict]:
    """Instruction rows for each valid SMILES (invalid ones are skipped: `parse_smiles` explains why when you
    call it yourself; the CLI counts them). Deterministic for a given seed and input order."""
    rng = random.Random(seed)
    allowed = tuple(facts_subset) if facts_subset is not None else FACTS_FOR_QUESTIONS
    for text in smiles:
        try:
            mol = parse_smiles(text)
        except ValueError:
            continue
        facts = molecule_facts(mol)
        for fact in rng.sample(allowed, k=min(questions_per_molecule, len(allowed))):
            question, answer = ask(fact, facts, rng)
            yield {"smiles": text, "messages": [user(question), assistant(answer)], "task": "facts", "fact": fact}
        if rng.random() < multi_turn_fraction:
            turns = []
            for fact in rng.sample(allowed, k=min(3, len(allowed))):
                question, answer = ask(fact, facts, rng)
                turns += [user(question), assistant(answer)]
            yield {"smiles": text, "messages": turns, "task": "facts", "fact": "multi_turn"}
        if descriptions:
            yield {
                "smiles": text,
                "messages": [user(rng.choice(DESCRIBE_QUESTIONS)), assistant(describe(facts, rng))],
                "task": "description",
                "fact": "description",
            }


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


PROGRESS_MIN_MOLECULES = 1000


def read_smiles_column(path: pathlib.Path, column: str | None = None) -> list[str]:
    """SMILES from a .txt/.smi file (first token per line) or a CSV/TSV with a `smiles` column (any case)."""
    if path.suffix in (".txt", ".smi"):
        return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        names = {name.lower(): name for name in reader.fieldnames or []}
        key = column or names.get("smiles")
        if key not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no SMILES column (looked for {column or 'smiles'!r}; columns: {reader.fieldnames})")
        return [row[key] for row in reader]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=pathlib.Path, required=True, help=".txt/.smi, or .csv/.tsv with a smiles column")
    parser.add_argument("--smiles_column", default=None)
    parser.add_argument("--output", type=pathlib.Path, required=True, help="JSON Lines file to write")
    parser.add_argument("--questions_per_molecule", type=int, default=3)
    parser.add_argument("--multi_turn_fraction", type=float, default=0.25)
    parser.add_argument("--no_descriptions", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    smiles = read_smiles_column(args.input, args.smiles_column)
    invalid = []
    for index, text in enumerate(smiles):
        try:
            parse_smiles(text)
        except ValueError as error:
            invalid.append((index, str(error)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    # A progress bar by molecule on inputs big enough to take a while (about 2.5 ms per molecule).
    progress = tqdm(smiles, desc="molecules", unit="mol", disable=len(smiles) < PROGRESS_MIN_MOLECULES)
    with args.output.open("w", encoding="utf-8") as handle:
        for row in generate_examples(
            progress, args.questions_per_molecule, args.multi_turn_fraction, not args.no_descriptions, seed=args.seed
        ):
            handle.write(json.dumps(row) + "\n")
            rows += 1
    print(f"{len(smiles)} SMILES read, {len(invalid)} skipped as invalid, {rows} rows written to {args.output}")
    for index, reason in invalid[:10]:
        print(f"  skipped row {index}: {reason}")


if __name__ == "__main__":
    main()
