"""Molecule featurization for LLaMo: SMILES -> OGB-schema graph + functional-group (motif) descriptors.

Everything here is chemistry on the CPU (RDKit + NumPy), done once per molecule by the processor; the
model's forward only ever sees the integer / float tensors produced here.

* Graph: the OGB schema of `ogb.utils.smiles2graph` -- 9 categorical features per atom, 3 per bond, every
  bond stored in both directions -- reproduced index for index (see `tests/test_featurization.py`).
* Motifs: the functional groups of LLaMo's released code (ReLMole rules), each described by a 73-d
  one-hot count vector. A molecule can have zero groups (methane, argon); the projector then falls back
  to its learned motif queries, as the original does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from rdkit import Chem, rdBase


try:  # loaded as remote code (a package next to the weights)
    from .configuration_llamo import (
        ATOM_FEATURE_VOCAB_SIZES,
        BOND_FEATURE_VOCAB_SIZES,
        GRAPH_INPUTS,
        MOTIF_FEATURE_SIZE,
        num_molecules,
    )
except ImportError:  # imported as a plain module from the repository root
    from configuration_llamo import (
        ATOM_FEATURE_VOCAB_SIZES,
        BOND_FEATURE_VOCAB_SIZES,
        GRAPH_INPUTS,
        MOTIF_FEATURE_SIZE,
        num_molecules,
    )

_CHIRALITY_INDEX = {
    Chem.ChiralType.CHI_UNSPECIFIED: 0,
    Chem.ChiralType.CHI_TETRAHEDRAL_CW: 1,
    Chem.ChiralType.CHI_TETRAHEDRAL_CCW: 2,
    Chem.ChiralType.CHI_OTHER: 3,
}  # anything newer (allene, square planar, ...) -> the "misc" bucket 4, as OGB does
_HYBRIDIZATION_INDEX = {
    Chem.HybridizationType.SP: 0,
    Chem.HybridizationType.SP2: 1,
    Chem.HybridizationType.SP3: 2,
    Chem.HybridizationType.SP3D: 3,
    Chem.HybridizationType.SP3D2: 4,
}  # misc -> 5
_BOND_TYPE_INDEX = {
    Chem.BondType.SINGLE: 0,
    Chem.BondType.DOUBLE: 1,
    Chem.BondType.TRIPLE: 2,
    Chem.BondType.AROMATIC: 3,
}  # misc -> 4
# OGB has no misc bucket for stereo and raises on the atropisomer tags RDKit added later; we map those to
# STEREOANY (5) instead of failing on them.
_BOND_STEREO_INDEX = {
    Chem.BondStereo.STEREONONE: 0,
    Chem.BondStereo.STEREOZ: 1,
    Chem.BondStereo.STEREOE: 2,
    Chem.BondStereo.STEREOCIS: 3,
    Chem.BondStereo.STEREOTRANS: 4,
    Chem.BondStereo.STEREOANY: 5,
}

# Motif descriptor layout: (name, number of one-hot buckets); the last bucket of a count collects overflow.
_MOTIF_COUNT_BLOCKS = (("C", 11), ("O", 6), ("N", 6), ("P", 6), ("S", 6))
_MOTIF_BOND_BLOCKS = (
    (Chem.BondType.SINGLE, 11),
    (Chem.BondType.DOUBLE, 8),
    (Chem.BondType.TRIPLE, 8),
    (Chem.BondType.AROMATIC, 8),
)
_HALOGENS = frozenset({9, 17, 35, 53})
_COUNTED_ELEMENTS = {6: "C", 8: "O", 7: "N", 15: "P", 16: "S"}
# Atoms that start a functional group: heteroatoms, atoms of double/triple bonds, acetal-like carbons. This is the
# definition; `marked_atoms` computes the same atoms from atom and bond properties (tests check they agree).
MARKER_SMARTS = ("[!#6]", "*=,#*", "[CX4]([O,N,S])[O,N,S]")


@dataclass(frozen=True)
class MoleculeGraph:
    """One featurized molecule. Atom indices are RDKit's, i.e. the order of atoms in the parsed SMILES."""

    node_features: np.ndarray  # [num_atoms, len(ATOM_FEATURE_VOCAB_SIZES)] int64, OGB atom schema
    edge_index: np.ndarray  # [2, 2 * num_bonds] int64, both directions
    edge_features: np.ndarray  # [2 * num_bonds, len(BOND_FEATURE_VOCAB_SIZES)] int64, OGB bond schema
    motif_features: np.ndarray  # [num_motifs, MOTIF_FEATURE_SIZE] float32
    motif_atoms: tuple[tuple[int, ...], ...]  # atom indices of each motif, aligned with motif_features

    def graph_inputs(self) -> dict[str, np.ndarray]:
        """This molecule alone as graph inputs (`GRAPH_INPUTS`, molecule id 0), the parts `join_graph_inputs` joins."""
        counts = {"node": self.num_atoms, "edge": self.edge_index.shape[1], "motif": self.num_motifs}
        # `graph_<field>` is this class's `<field>`; the batch vectors are all zeros here.
        return {
            spec.name: np.zeros(counts[spec.element], dtype=np.int64)
            if spec.kind == "batch"
            else getattr(self, spec.name[len("graph_") :])
            for spec in GRAPH_INPUTS
        }

    @property
    def num_atoms(self) -> int:
        return self.node_features.shape[0]

    @property
    def num_motifs(self) -> int:
        return self.motif_features.shape[0]


# Limits checked before RDKit sees a SMILES (both configurable per call and on `LlamoProcessor`). Every molecule of
# ChEBI-20, PubChem324k and QM9 fits with room to spare (the largest in this repository's data: 1,186 characters,
# 458 atoms). Past them RDKit work grows quadratically (motifs, rings) and `MolToSmiles` recurses once per chain
# atom or branch level, overflowing the C stack (SIGSEGV) at about 19,000 -- a crash no `except` can catch.
MAX_SMILES_LENGTH = 20_000
MAX_ATOMS = 2_000
# How much of a rejected input an error message repeats (a 1 MB input is not echoed whole).
_REPR_LIMIT = 80


def short_repr(value: object, limit: int = _REPR_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters with the full length noted, for error messages."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}... ({len(text):,} characters of repr)"


def check_smiles_text(smiles: str, max_length: int | None = MAX_SMILES_LENGTH) -> str:
    """The stripped SMILES if it may be given to RDKit, else `ValueError` naming (a cut repr of) the input.

    Refused before parsing: non-strings, empty text, inner whitespace (RDKit reads everything after a space as the
    molecule's name), text longer than `max_length`, and any character that is not printable ASCII -- RDKit silently
    drops leading/trailing non-ASCII, control and NUL characters (`'\u4e2dO'` would be water) and cannot encode
    lone surrogates."""
    if not isinstance(smiles, str):
        raise ValueError(f"expected a SMILES string, got {type(smiles).__name__} {short_repr(smiles)}")
    text = smiles.strip()
    if not text:
        raise ValueError(f"empty SMILES {short_repr(smiles)}: a molecule needs at least one atom")
    if max_length is not None and len(text) > max_length:
        raise ValueError(f"SMILES too long {short_repr(smiles)}: {len(text):,} characters > the limit of {max_length:,}")
    if len(text.split(maxsplit=1)) > 1:
        raise ValueError(f"invalid SMILES {short_repr(smiles)}: it contains whitespace")
    if not text.isascii() or not text.isprintable():
        bad = next(character for character in text if not (character.isascii() and character.isprintable()))
        raise ValueError(f"invalid SMILES {short_repr(smiles)}: {bad!r} is not a printable ASCII character")
    return text


def parse_smiles(smiles: str, max_length: int | None = MAX_SMILES_LENGTH, max_atoms: int | None = MAX_ATOMS) -> Chem.Mol:
    """Parse and sanitize a SMILES string with RDKit; raise `ValueError` saying what is wrong with it.

    Surrounding whitespace is stripped. The text is checked first (`check_smiles_text`: length, whitespace, printable
    ASCII), and a molecule with more than `max_atoms` atoms is refused before anything else walks its graph.
    """
    text = check_smiles_text(smiles, max_length)
    with rdBase.BlockLogs():  # RDKit reports problems on the C++ stderr stream; we raise them instead
        try:
            mol = Chem.MolFromSmiles(text)
        except RuntimeError as error:  # e.g. '[#119]': an atomic number RDKit has no element for
            raise ValueError(f"invalid SMILES {short_repr(smiles)}: {error}") from None
        if mol is None:
            raise ValueError(f"invalid SMILES {short_repr(smiles)}: {_diagnose_unparsable(text)}")
    if mol.GetNumAtoms() == 0:
        raise ValueError(f"empty SMILES {short_repr(smiles)}: a molecule needs at least one atom")
    if max_atoms is not None and mol.GetNumAtoms() > max_atoms:
        raise ValueError(f"molecule too large {short_repr(smiles)}: {mol.GetNumAtoms():,} atoms > the limit of {max_atoms:,}")
    return mol


def _diagnose_unparsable(text: str) -> str:
    try:  # RDKit raises RuntimeError (not a chemistry problem) for atomic numbers it has no element for, e.g. [#119]
        unsanitized = Chem.MolFromSmiles(text, sanitize=False)
        if unsanitized is None:
            return "RDKit cannot parse it (syntax error)"
        problems = Chem.DetectChemistryProblems(unsanitized)
    except RuntimeError as error:
        return " ".join(line.strip() for line in str(error).strip().splitlines()[:2])
    return problems[0].Message() if problems else "RDKit rejects it"


def prompt_smiles(mol: Chem.Mol, isomeric: bool = False, max_length: int | None = 128) -> str:
    """The SMILES shown to the language model: canonical (non-isomeric by default) and truncated, as in LLaMo."""
    text = Chem.MolToSmiles(mol, isomericSmiles=isomeric, canonical=True)
    return text if max_length is None else text[:max_length]


def _enum_table(enum_type, index: dict, default: int) -> np.ndarray:
    """Array mapping every integer value of an RDKit enum to its position in `index` (`default` if absent), so
    a whole column of enum values is translated with one NumPy indexing instead of a dict lookup per atom."""
    table = np.full(max(enum_type.values) + 1, default, dtype=np.int64)
    for value, position in index.items():
        table[int(value)] = position
    return table


_CHIRALITY_TABLE = _enum_table(Chem.ChiralType, _CHIRALITY_INDEX, 4)
_HYBRIDIZATION_TABLE = _enum_table(Chem.HybridizationType, _HYBRIDIZATION_INDEX, 5)
_BOND_TYPE_TABLE = _enum_table(Chem.BondType, _BOND_TYPE_INDEX, 4)  # also the motif bond-count column (0-3)
_BOND_STEREO_TABLE = _enum_table(Chem.BondStereo, _BOND_STEREO_INDEX, 5)
_SINGLE, _DOUBLE, _TRIPLE, _AROMATIC = (int(getattr(Chem.BondType, name)) for name in ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC"))

# Motif element column of each atomic number: 0-4 the counted elements in descriptor order, 5 halogen, 6 other.
_MOTIF_ELEMENT_COLUMN = np.full(256, 6, dtype=np.int64)
_ELEMENT_NUMBERS = {symbol: number for number, symbol in _COUNTED_ELEMENTS.items()}
for _column, (_symbol, _) in enumerate(_MOTIF_COUNT_BLOCKS):
    _MOTIF_ELEMENT_COLUMN[_ELEMENT_NUMBERS[_symbol]] = _column
_MOTIF_ELEMENT_COLUMN[sorted(_HALOGENS)] = 5
# Descriptor layout: 5 element blocks, the halogen and other-element flags, 4 bond blocks, the ring flag.
_MOTIF_HALOGEN_COLUMN = sum(buckets for _, buckets in _MOTIF_COUNT_BLOCKS)
_MOTIF_FLAG_COLUMNS = [_MOTIF_HALOGEN_COLUMN, _MOTIF_HALOGEN_COLUMN + 1, MOTIF_FEATURE_SIZE - 1]  # halogen, other, ring
_MOTIF_BLOCK_BUCKETS = np.array([buckets for _, buckets in _MOTIF_COUNT_BLOCKS + _MOTIF_BOND_BLOCKS])
_MOTIF_BLOCK_STARTS = np.concatenate(
    (
        np.cumsum([0] + [buckets for _, buckets in _MOTIF_COUNT_BLOCKS[:-1]]),
        _MOTIF_HALOGEN_COLUMN + 2 + np.cumsum([0] + [buckets for _, buckets in _MOTIF_BOND_BLOCKS[:-1]]),
    )
)

_ATOM_GETTERS = (
    Chem.Atom.GetAtomicNum,
    Chem.Atom.GetChiralTag,
    Chem.Atom.GetFormalCharge,
    Chem.Atom.GetTotalNumHs,
    Chem.Atom.GetNumRadicalElectrons,
    Chem.Atom.GetHybridization,
    Chem.Atom.GetIsAromatic,
)
_BOND_GETTERS = (
    Chem.Bond.GetBeginAtomIdx,
    Chem.Bond.GetEndAtomIdx,
    Chem.Bond.GetBondType,
    Chem.Bond.GetStereo,
    Chem.Bond.GetIsConjugated,
    Chem.Bond.IsInRing,
)


@dataclass(frozen=True)
class MoleculeTables:
    """Everything the featurization reads from RDKit about one molecule: one row per property, one column per atom
    (`atoms`, int64 [7, N]) or bond (`bonds`, int64 [6, B]), plus the rings.

    Each RDKit accessor is a Python -> C++ call (0.3-0.9 us) and each Atom / Bond wrapper costs about 1.5 us to
    create, so every atom and bond is visited exactly once, here; the OGB features, the functional-group markers
    and the motif descriptors are then computed from these tables without going back to RDKit.
    """

    atoms: np.ndarray  # rows: atomic number, ChiralType, formal charge, #H (implicit + explicit), radicals,
    # HybridizationType, aromatic
    bonds: np.ndarray  # rows: begin atom, end atom, BondType, BondStereo, conjugated, in ring
    degrees: np.ndarray  # [N] total degree: bonded atoms + hydrogens (RDKit's GetTotalDegree)
    atom_in_ring: np.ndarray  # [N] bool
    rings: tuple[tuple[int, ...], ...]  # symmetrized SSSR (= Chem.GetSymmSSSR), atom indices in ring order


def _atom_rings(mol: Chem.Mol) -> tuple[tuple[int, ...], ...]:
    """Rings of the symmetrized SSSR. Sanitization already stores exactly these in the molecule's ring info
    (`tests/test_featurization.py` checks it against `Chem.GetSymmSSSR`), so they are read, not recomputed."""
    ring_info = mol.GetRingInfo()
    try:
        with rdBase.BlockLogs():
            ring_info.NumRings()  # raises if the ring info was never computed (an unsanitized molecule)
    except RuntimeError:
        Chem.GetSymmSSSR(mol)  # computes and stores it
    return ring_info.AtomRings()


def read_molecule(mol: Chem.Mol) -> MoleculeTables:
    """Read every atom and bond property the featurization needs in one pass (see `MoleculeTables`)."""
    num_atoms, num_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    # indexing, not `mol.GetAtoms()`, whose Python-level iterator costs about as much again as the wrappers
    atoms = list(map(mol.GetAtomWithIdx, range(num_atoms)))
    bonds = list(map(mol.GetBondWithIdx, range(num_bonds)))
    atom_table = np.array([list(map(getter, atoms)) for getter in _ATOM_GETTERS], dtype=np.int64)
    bond_table = np.array([list(map(getter, bonds)) for getter in _BOND_GETTERS], dtype=np.int64)
    atom_table = atom_table.reshape(len(_ATOM_GETTERS), num_atoms)
    bond_table = bond_table.reshape(len(_BOND_GETTERS), num_bonds)
    rings = _atom_rings(mol)
    atom_in_ring = np.zeros(num_atoms, dtype=bool)
    atom_in_ring[[atom for ring in rings for atom in ring]] = True
    # RDKit's total degree is the atom's number of bonds plus its hydrogen count
    degrees = np.bincount(bond_table[:2].ravel(), minlength=num_atoms) + atom_table[3]
    return MoleculeTables(atoms=atom_table, bonds=bond_table, degrees=degrees, atom_in_ring=atom_in_ring, rings=rings)


def _atom_feature_matrix(tables: MoleculeTables) -> np.ndarray:
    numbers, chiral_tags, charges, num_hs, radicals, hybridizations, aromatic = tables.atoms
    features = np.empty((len(numbers), len(ATOM_FEATURE_VOCAB_SIZES)), dtype=np.int64)
    features[:, 0] = np.where((numbers >= 1) & (numbers <= 118), numbers - 1, 118)
    features[:, 1] = _CHIRALITY_TABLE[chiral_tags]
    features[:, 2] = np.minimum(tables.degrees, 11)  # 0-10, then "misc"
    features[:, 3] = np.where((charges >= -5) & (charges <= 5), charges + 5, 11)
    features[:, 4] = np.minimum(num_hs, 9)  # 0-8, then "misc"
    features[:, 5] = np.minimum(radicals, 5)  # 0-4, then "misc"
    features[:, 6] = _HYBRIDIZATION_TABLE[hybridizations]
    features[:, 7] = aromatic
    features[:, 8] = tables.atom_in_ring
    return features


def _bond_graph_arrays(tables: MoleculeTables) -> tuple[np.ndarray, np.ndarray]:
    begin, end, bond_types, stereo, conjugated, _ = tables.bonds
    num_edges = 2 * len(begin)
    edge_index = np.empty((2, num_edges), dtype=np.int64)
    edge_index[0, 0::2] = edge_index[1, 1::2] = begin
    edge_index[1, 0::2] = edge_index[0, 1::2] = end
    edge_features = np.empty((num_edges, len(BOND_FEATURE_VOCAB_SIZES)), dtype=np.int64)
    edge_features[0::2, 0] = edge_features[1::2, 0] = _BOND_TYPE_TABLE[bond_types]
    edge_features[0::2, 1] = edge_features[1::2, 1] = _BOND_STEREO_TABLE[stereo]
    edge_features[0::2, 2] = edge_features[1::2, 2] = conjugated
    return edge_index, edge_features


def atom_features(mol: Chem.Mol) -> np.ndarray:
    """[num_atoms, 9] OGB atom features: atomic number, chirality, degree, formal charge, #H, radicals,
    hybridization, aromaticity, ring membership (each value outside OGB's list goes to its last bucket)."""
    return _atom_feature_matrix(read_molecule(mol))


def bond_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Edge index [2, 2B] and OGB bond features [2B, 3] (type, stereo, conjugation), each bond i->j then j->i."""
    return _bond_graph_arrays(read_molecule(mol))


def _merge_rings(atom_rings: Sequence[Sequence[int]]) -> list[set[int]]:
    rings = [set(ring) for ring in atom_rings]
    changed = True
    while changed:
        changed = False
        for i, ring in enumerate(rings):
            for other in rings[i + 1 :]:
                if ring and len(ring & other) > 2:
                    ring |= other
                    other.clear()
                    changed = True
    return [ring for ring in rings if ring]


def merged_rings(mol: Chem.Mol) -> list[set[int]]:
    """Symmetrized SSSR rings, where rings sharing more than two atoms (bridged systems) are merged into one."""
    return _merge_rings(_atom_rings(mol))


def _marker_list(tables: MoleculeTables) -> list[bool]:
    # Plain Python: a few dozen atoms and bonds are cheaper to loop over than to push through a dozen NumPy calls.
    numbers, aromatic = tables.atoms[0].tolist(), tables.atoms[6].tolist()
    begin, end, bond_types = tables.bonds[:3].tolist()
    marked = [number != 6 for number in numbers]  # [!#6]
    for first, second, bond_type in zip(begin, end, bond_types):
        if bond_type in (_DOUBLE, _TRIPLE):  # *=,#*
            marked[first] = marked[second] = True
    # [CX4]([O,N,S])[O,N,S]: an aliphatic carbon of total degree 4 with two aliphatic O / N / S neighbours joined by
    # SMARTS' default bond (single or aromatic)
    carbons = {
        atom: 0
        for atom, (number, is_aromatic, degree) in enumerate(zip(numbers, aromatic, tables.degrees.tolist()))
        if number == 6 and not is_aromatic and degree == 4
    }
    if carbons:
        for first, second, bond_type in zip(begin, end, bond_types):
            if bond_type in (_SINGLE, _AROMATIC):
                for carbon, neighbour in ((first, second), (second, first)):
                    if carbon in carbons and numbers[neighbour] in (7, 8, 16) and not aromatic[neighbour]:
                        carbons[carbon] += 1
        for carbon, count in carbons.items():
            if count >= 2:
                marked[carbon] = True
    return marked


def marked_atoms(mol: Chem.Mol) -> np.ndarray:
    """[num_atoms] bool: the atoms that start a functional group, i.e. the atoms matched by any of the
    `MARKER_SMARTS` (heteroatoms, atoms of double / triple bonds, acetal-like carbons), computed from the atom and
    bond properties instead of three substructure searches."""
    return np.array(_marker_list(read_molecule(mol)), dtype=bool).reshape(-1)


def _functional_groups(tables: MoleculeTables) -> list[tuple[int, ...]]:
    marked = _marker_list(tables)
    parent = list(range(len(marked)))

    def root(atom: int) -> int:
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    environment: list[tuple[int, int]] = []  # (marked atom, unmarked neighbour)
    carbon_pairs: list[tuple[int, ...]] = []
    begin, end, in_ring = tables.bonds[0].tolist(), tables.bonds[1].tolist(), tables.bonds[5].tolist()
    for first, second, bond_in_ring in zip(begin, end, in_ring):
        if bond_in_ring:
            continue
        if marked[first] and marked[second]:
            parent[root(first)] = root(second)
        elif marked[first]:
            environment.append((first, second))
        elif marked[second]:
            environment.append((second, first))
        else:
            carbon_pairs.append((first, second) if first < second else (second, first))

    members: dict[int, set[int]] = {}
    for atom, is_marked in enumerate(marked):
        if is_marked:
            members.setdefault(root(atom), set()).add(atom)
    for atom, neighbour in environment:
        members[root(atom)].add(neighbour)

    atom_in_ring = tables.atom_in_ring
    groups = [tuple(sorted(group)) for group in members.values()] + carbon_pairs
    groups = [group for group in groups if len(group) > 1 or not atom_in_ring[group[0]]]
    return groups + [tuple(sorted(ring)) for ring in _merge_rings(tables.rings)]


def functional_groups(mol: Chem.Mol) -> list[tuple[int, ...]]:
    """LLaMo's (ReLMole's) functional groups, as sorted atom-index tuples.

    Marked atoms (heteroatoms, atoms of double/triple bonds, acetal carbons; see `marked_atoms`) joined by non-ring
    bonds form one group, together with the unmarked atoms bonded to them outside rings (their environment). Every
    other non-ring bond between two unmarked atoms is a 2-atom group. Single-atom groups inside a ring are dropped
    (the ring covers them), and each ring system (see `merged_rings`) is a group of its own, listed last.

    The released code merges groups while walking the bond list, and in rare bond orders it can leave one
    connected set of marked atoms split in two; bonds of a parsed SMILES never come in such an order, and the
    connected-components reading implemented here gives the same groups for them.
    """
    return _functional_groups(read_molecule(mol))


def _motif_matrix(tables: MoleculeTables, groups: Sequence[Sequence[int]]) -> np.ndarray:
    features = np.zeros((len(groups), MOTIF_FEATURE_SIZE), dtype=np.float32)
    if not len(groups):
        return features
    element_columns = _MOTIF_ELEMENT_COLUMN[np.minimum(tables.atoms[0], 255)].tolist()
    begin, end, bond_types, _, _, in_ring = tables.bonds.tolist()
    bond_columns = _BOND_TYPE_TABLE[tables.bonds[2]].tolist()  # 0-3 single / double / triple / aromatic, 4 other
    neighbours: list[list[tuple[int, int]]] = [[] for _ in element_columns]
    for bond, (first, second) in enumerate(zip(begin, end)):
        neighbours[first].append((second, bond))
        neighbours[second].append((first, bond))

    counts, flags = [], []
    for group in groups:
        atoms = set(group)
        elements, bonds, ring = [0] * 7, [0] * 5, False
        for atom in atoms:
            elements[element_columns[atom]] += 1
            for neighbour, bond in neighbours[atom]:
                if neighbour > atom and neighbour in atoms:  # a bond of the group (both atoms in it), counted once
                    bonds[bond_columns[bond]] += 1
                    ring = ring or bool(in_ring[bond])
        counts.append(elements[:5] + bonds[:4])
        flags.append((elements[5] > 0, elements[6] > 0, ring))
    columns = _MOTIF_BLOCK_STARTS + np.minimum(counts, _MOTIF_BLOCK_BUCKETS - 1)
    features[np.arange(len(groups))[:, None], columns] = 1.0
    features[:, _MOTIF_FLAG_COLUMNS] = flags
    return features


def motif_descriptors(mol: Chem.Mol, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """[num_groups, 73] float32 one-hot descriptors: counts of C, O, N, P, S atoms, halogen / other-element flags,
    counts of single, double, triple and aromatic bonds inside the group, and whether any of them is a ring bond."""
    return _motif_matrix(read_molecule(mol), groups)


def featurize_molecule(mol: Chem.Mol) -> MoleculeGraph:
    """OGB graph and motif descriptors of one sanitized RDKit molecule (RDKit is read once, see `read_molecule`)."""
    tables = read_molecule(mol)
    edge_index, edge_features = _bond_graph_arrays(tables)
    groups = _functional_groups(tables)
    return MoleculeGraph(
        node_features=_atom_feature_matrix(tables),
        edge_index=edge_index,
        edge_features=edge_features,
        motif_features=_motif_matrix(tables, groups),
        motif_atoms=tuple(groups),
    )


# Molecules featurized by `featurize_smiles` that are kept for reuse: at most this many, and at most this many bytes
# of arrays (about 10 kB each for ChEBI-sized molecules; a 2,000-atom molecule takes about 1 MB).
FEATURIZE_CACHE_SIZE = 4096
FEATURIZE_CACHE_BYTES = 256 * 2**20


class CacheInfo(NamedTuple):
    """`functools.lru_cache`'s statistics, plus the bytes held."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    nbytes: int = 0
    maxbytes: int = 0


class _FeaturizationCache:
    """Thread-safe LRU cache bounded by entry count *and* array bytes (the demo serves requests from threads)."""

    def __init__(self, maxsize: int, maxbytes: int):
        self.maxsize, self.maxbytes = maxsize, maxbytes
        self._entries: OrderedDict[tuple, tuple[tuple[MoleculeGraph | None, str], int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.nbytes = 0

    def get(self, key: tuple):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: tuple, value: tuple[MoleculeGraph | None, str]) -> None:
        graph = value[0]
        size = len(value[1]) + (0 if graph is None else sum(
            array.nbytes for array in (graph.node_features, graph.edge_index, graph.edge_features, graph.motif_features)
        ))  # fmt: skip
        if size > self.maxbytes:
            return  # a molecule bigger than the whole budget is not kept
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (value, size)
            self.nbytes += size
            while len(self._entries) > self.maxsize or self.nbytes > self.maxbytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.nbytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = self.nbytes = 0

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._entries), self.nbytes, self.maxbytes)


_FEATURIZE_CACHE = _FeaturizationCache(FEATURIZE_CACHE_SIZE, FEATURIZE_CACHE_BYTES)


def featurize_smiles(
    smiles: str,
    with_graph: bool = True,
    isomeric: bool = False,
    max_length: int | None = 128,
    max_smiles_length: int | None = MAX_SMILES_LENGTH,
    max_atoms: int | None = MAX_ATOMS,
) -> tuple[MoleculeGraph | None, str]:
    """Parse one SMILES and return its graph (None when `with_graph` is False) and its prompt SMILES (see
    `prompt_smiles`), as `LlamoProcessor` needs them. Raises `ValueError` for an invalid or empty SMILES, or one past
    the limits (`max_smiles_length` characters, `max_atoms` atoms; see `parse_smiles`).

    Results are memoized in an LRU cache bounded by count (`FEATURIZE_CACHE_SIZE`) and bytes (`FEATURIZE_CACHE_BYTES`):
    training sees the same molecules every epoch and instruction data asks several questions about one molecule.
    The cached arrays are shared, so they are read-only; `featurize_smiles.cache_clear()` empties the cache.
    """
    text = check_smiles_text(smiles, max_smiles_length)  # cheap checks first; also keeps unhashable input out
    key = (text, with_graph, isomeric, max_length, max_smiles_length, max_atoms)
    cached = _FEATURIZE_CACHE.get(key)
    if cached is not None:
        return cached
    mol = parse_smiles(smiles, max_length=max_smiles_length, max_atoms=max_atoms)
    graph = featurize_molecule(mol) if with_graph else None
    if graph is not None:
        for array in (graph.node_features, graph.edge_index, graph.edge_features, graph.motif_features):
            array.flags.writeable = False
    # `max_atoms` keeps `MolToSmiles` (recursive in RDKit) far below the depth that overflows the stack
    result = (graph, prompt_smiles(mol, isomeric=isomeric, max_length=max_length))
    _FEATURIZE_CACHE.put(key, result)
    return result


featurize_smiles.cache_clear = _FEATURIZE_CACHE.clear
featurize_smiles.cache_info = _FEATURIZE_CACHE.info


def collate_molecule_graphs(graphs: Sequence[MoleculeGraph]) -> dict[str, torch.Tensor]:
    """Flatten molecules into the model's graph inputs (`GRAPH_INPUTS`; a PyG-style disjoint union, no PyG objects):
    node, edge and motif rows molecule by molecule, edge indices into all the nodes, the molecule of each node and
    motif. Molecules keep their order."""
    return join_graph_inputs([graph.graph_inputs() for graph in graphs])


def join_graph_inputs(parts: Sequence[Mapping[str, Any]], config=None) -> dict[str, torch.Tensor]:
    """The one batching function of LLaMo's graph inputs: concatenate `parts` (each a mapping with the `GRAPH_INPUTS`
    of one or more molecules, as arrays, tensors or nested lists) into one batch, in order.

    Every tensor is laid out by its `GraphInput` entry (dtype, `[count, width]` / `[2, count]` / `[count]`, width from
    `config` or the OGB defaults, so empty parts keep their shape); edge indices are shifted by the nodes and molecule
    ids by the molecules of the parts before them. Used by `LlamoProcessor` (one part per molecule) and by the training
    collator (one part per encoded conversation).
    """
    arrays = {spec.name: [] for spec in GRAPH_INPUTS}
    nodes = molecules = 0
    for part in parts:
        node_batch = np.asarray(part["graph_node_batch"], dtype=np.int64).reshape(-1)
        for spec in GRAPH_INPUTS:
            array = np.asarray(part[spec.name], dtype=spec.dtype).reshape(spec.shape(config))
            if spec.kind == "edge_index":
                array = array + nodes
            elif spec.kind == "batch":
                array = array + molecules
            arrays[spec.name].append(array)
        nodes += len(node_batch)
        molecules += num_molecules(node_batch)
    joined = {}
    for spec in GRAPH_INPUTS:
        axis = 1 if spec.kind == "edge_index" else 0
        empty = np.zeros([0 if size == -1 else size for size in spec.shape(config)], dtype=spec.dtype)
        joined[spec.name] = torch.from_numpy(np.concatenate(arrays[spec.name], axis=axis) if parts else empty)
    return joined
