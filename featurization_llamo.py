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

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from rdkit import Chem, rdBase


# Vocabulary sizes of the 9 atom and 3 bond columns (= ogb.utils.features.get_{atom,bond}_feature_dims()).
ATOM_FEATURE_VOCAB_SIZES = (119, 5, 12, 12, 10, 6, 6, 2, 2)
BOND_FEATURE_VOCAB_SIZES = (5, 6, 2)
MOTIF_FEATURE_SIZE = 73

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
_MOTIF_BOND_BLOCKS = ((Chem.BondType.SINGLE, 11), (Chem.BondType.DOUBLE, 8), (Chem.BondType.TRIPLE, 8), (Chem.BondType.AROMATIC, 8))
_HALOGENS = frozenset({9, 17, 35, 53})
_COUNTED_ELEMENTS = {6: "C", 8: "O", 7: "N", 15: "P", 16: "S"}
# Atoms that start a functional group: heteroatoms, atoms of double/triple bonds, acetal-like carbons.
_MARKER_PATTERNS = tuple(Chem.MolFromSmarts(smarts) for smarts in ("[!#6]", "*=,#*", "[CX4]([O,N,S])[O,N,S]"))


@dataclass(frozen=True)
class MoleculeGraph:
    """One featurized molecule. Atom indices are RDKit's, i.e. the order of atoms in the parsed SMILES."""

    node_features: np.ndarray  # [num_atoms, 9] int64, OGB atom schema
    edge_index: np.ndarray  # [2, 2 * num_bonds] int64, both directions
    edge_features: np.ndarray  # [2 * num_bonds, 3] int64, OGB bond schema
    motif_features: np.ndarray  # [num_motifs, 73] float32
    motif_atoms: tuple[tuple[int, ...], ...]  # atom indices of each motif, aligned with motif_features

    @property
    def num_atoms(self) -> int:
        return self.node_features.shape[0]

    @property
    def num_motifs(self) -> int:
        return self.motif_features.shape[0]


def parse_smiles(smiles: str) -> Chem.Mol:
    """Parse and sanitize a SMILES string with RDKit; raise `ValueError` saying what is wrong with it.

    Surrounding whitespace is stripped. Inner whitespace is refused: RDKit would silently read everything
    after the first space as the molecule's name and drop it.
    """
    if not isinstance(smiles, str):
        raise ValueError(f"expected a SMILES string, got {type(smiles).__name__} {smiles!r}")
    text = smiles.strip()
    if not text:
        raise ValueError(f"empty SMILES {smiles!r}: a molecule needs at least one atom")
    if any(character.isspace() for character in text):
        raise ValueError(f"invalid SMILES {smiles!r}: it contains whitespace")
    with rdBase.BlockLogs():  # RDKit reports problems on the C++ stderr stream; we raise them instead
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            raise ValueError(f"invalid SMILES {smiles!r}: {_diagnose_unparsable(text)}")
    if mol.GetNumAtoms() == 0:
        raise ValueError(f"empty SMILES {smiles!r}: a molecule needs at least one atom")
    return mol


def _diagnose_unparsable(text: str) -> str:
    unsanitized = Chem.MolFromSmiles(text, sanitize=False)
    if unsanitized is None:
        return "RDKit cannot parse it (syntax error)"
    problems = Chem.DetectChemistryProblems(unsanitized)
    return problems[0].Message() if problems else "RDKit rejects it"


def prompt_smiles(mol: Chem.Mol, isomeric: bool = False, max_length: int | None = 128) -> str:
    """The SMILES shown to the language model: canonical (non-isomeric by default) and truncated, as in LLaMo."""
    text = Chem.MolToSmiles(mol, isomericSmiles=isomeric, canonical=True)
    return text if max_length is None else text[:max_length]


def atom_features(mol: Chem.Mol) -> np.ndarray:
    """[num_atoms, 9] OGB atom features: atomic number, chirality, degree, formal charge, #H, radicals,
    hybridization, aromaticity, ring membership (each value outside OGB's list goes to its last bucket)."""
    rows = []
    for atom in mol.GetAtoms():
        atomic_num = atom.GetAtomicNum()
        degree = atom.GetTotalDegree()
        charge = atom.GetFormalCharge()
        num_hs = atom.GetTotalNumHs()
        radicals = atom.GetNumRadicalElectrons()
        rows.append(
            (
                atomic_num - 1 if 1 <= atomic_num <= 118 else 118,
                _CHIRALITY_INDEX.get(atom.GetChiralTag(), 4),
                degree if degree <= 10 else 11,
                charge + 5 if -5 <= charge <= 5 else 11,
                num_hs if num_hs <= 8 else 9,
                radicals if radicals <= 4 else 5,
                _HYBRIDIZATION_INDEX.get(atom.GetHybridization(), 5),
                int(atom.GetIsAromatic()),
                int(atom.IsInRing()),
            )
        )
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(ATOM_FEATURE_VOCAB_SIZES))


def bond_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Edge index [2, 2B] and OGB bond features [2B, 3] (type, stereo, conjugation), each bond i->j then j->i."""
    pairs, features = [], []
    for bond in mol.GetBonds():
        begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feature = (
            _BOND_TYPE_INDEX.get(bond.GetBondType(), 4),
            _BOND_STEREO_INDEX.get(bond.GetStereo(), 5),
            int(bond.GetIsConjugated()),
        )
        pairs += ((begin, end), (end, begin))
        features += (feature, feature)
    edge_index = np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T.copy()
    edge_features = np.asarray(features, dtype=np.int64).reshape(-1, len(BOND_FEATURE_VOCAB_SIZES))
    return edge_index, edge_features


def merged_rings(mol: Chem.Mol) -> list[set[int]]:
    """Symmetrized SSSR rings, where rings sharing more than two atoms (bridged systems) are merged into one."""
    rings = [set(ring) for ring in Chem.GetSymmSSSR(mol)]
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


def functional_groups(mol: Chem.Mol) -> list[tuple[int, ...]]:
    """LLaMo's (ReLMole's) functional groups, as sorted atom-index tuples.

    Marked atoms (heteroatoms, atoms of double/triple bonds, acetal carbons) joined by non-ring bonds form one
    group, together with the unmarked atoms bonded to them outside rings (their environment). Every other
    non-ring bond between two unmarked atoms is a 2-atom group. Single-atom groups inside a ring are dropped
    (the ring covers them), and each ring system (see `merged_rings`) is a group of its own, listed last.

    The released code merges groups while walking the bond list, and in rare bond orders it can leave one
    connected set of marked atoms split in two; bonds of a parsed SMILES never come in such an order, and the
    connected-components reading implemented here gives the same groups for them.
    """
    marked: set[int] = set()
    for pattern in _MARKER_PATTERNS:
        for match in mol.GetSubstructMatches(pattern):
            marked.update(match)

    parent = {atom: atom for atom in marked}

    def root(atom: int) -> int:
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    environment: list[tuple[int, int]] = []  # (marked atom, unmarked neighbour)
    carbon_pairs: list[tuple[int, ...]] = []
    for bond in mol.GetBonds():
        if bond.IsInRing():
            continue
        begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if begin in marked and end in marked:
            parent[root(begin)] = root(end)
        elif begin in marked:
            environment.append((begin, end))
        elif end in marked:
            environment.append((end, begin))
        else:
            carbon_pairs.append(tuple(sorted((begin, end))))

    members: dict[int, set[int]] = {}
    for atom in sorted(marked):
        members.setdefault(root(atom), set()).add(atom)
    for atom, neighbour in environment:
        members[root(atom)].add(neighbour)

    groups = [tuple(sorted(group)) for group in members.values()] + carbon_pairs
    groups = [group for group in groups if len(group) > 1 or not mol.GetAtomWithIdx(group[0]).IsInRing()]
    return groups + [tuple(sorted(ring)) for ring in merged_rings(mol)]


def motif_descriptors(mol: Chem.Mol, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """[num_groups, 73] float32 one-hot descriptors: counts of C, O, N, P, S atoms, halogen / other-element flags,
    counts of single, double, triple and aromatic bonds inside the group, and whether any of them is a ring bond."""
    features = np.zeros((len(groups), MOTIF_FEATURE_SIZE), dtype=np.float32)
    atomic_numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    bonds = [(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond.GetBondType(), bond.IsInRing()) for bond in mol.GetBonds()]
    for row, group in enumerate(groups):
        atoms = set(group)
        element_counts = dict.fromkeys(("C", "O", "N", "P", "S"), 0)
        has_halogen = has_other = False
        for atom in atoms:
            number = atomic_numbers[atom]
            if number in _COUNTED_ELEMENTS:
                element_counts[_COUNTED_ELEMENTS[number]] += 1
            elif number in _HALOGENS:
                has_halogen = True
            else:
                has_other = True
        bond_counts: dict[Chem.BondType, int] = {}
        in_ring = False
        for begin, end, bond_type, bond_in_ring in bonds:
            if begin in atoms and end in atoms:
                bond_counts[bond_type] = bond_counts.get(bond_type, 0) + 1
                in_ring |= bond_in_ring

        offset = 0
        for element, buckets in _MOTIF_COUNT_BLOCKS:
            features[row, offset + min(element_counts[element], buckets - 1)] = 1.0
            offset += buckets
        features[row, offset] = float(has_halogen)
        features[row, offset + 1] = float(has_other)
        offset += 2
        for bond_type, buckets in _MOTIF_BOND_BLOCKS:
            features[row, offset + min(bond_counts.get(bond_type, 0), buckets - 1)] = 1.0
            offset += buckets
        features[row, offset] = float(in_ring)
    return features


def featurize_molecule(mol: Chem.Mol) -> MoleculeGraph:
    """OGB graph and motif descriptors of one sanitized RDKit molecule."""
    edge_index, edge_features = bond_graph(mol)
    groups = functional_groups(mol)
    return MoleculeGraph(
        node_features=atom_features(mol),
        edge_index=edge_index,
        edge_features=edge_features,
        motif_features=motif_descriptors(mol, groups),
        motif_atoms=tuple(groups),
    )


def collate_molecule_graphs(graphs: Sequence[MoleculeGraph]) -> dict[str, torch.Tensor]:
    """Flatten molecules into the model's graph inputs (PyG-style disjoint union, no PyG objects):

    `graph_node_features` [N, 9], `graph_edge_index` [2, E] (indices into the N nodes), `graph_edge_features`
    [E, 3], `graph_node_batch` [N] (molecule of each node), `graph_motif_features` [M, 73] and
    `graph_motif_batch` [M] (molecule of each motif). Molecules keep their order.
    """
    num_atoms = np.fromiter((graph.num_atoms for graph in graphs), dtype=np.int64, count=len(graphs))
    num_motifs = np.fromiter((graph.num_motifs for graph in graphs), dtype=np.int64, count=len(graphs))
    node_offsets = np.concatenate(([0], np.cumsum(num_atoms)[:-1])) if len(graphs) else np.zeros(0, np.int64)
    molecule_ids = np.arange(len(graphs), dtype=np.int64)

    def concat(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(arrays, axis=0) if arrays else np.zeros(empty_shape, dtype=dtype)

    edge_index = [graph.edge_index + offset for graph, offset in zip(graphs, node_offsets)]
    return {
        "graph_node_features": torch.from_numpy(concat([g.node_features for g in graphs], (0, 9), np.int64)),
        "graph_edge_index": torch.from_numpy(np.concatenate(edge_index, axis=1) if edge_index else np.zeros((2, 0), np.int64)),
        "graph_edge_features": torch.from_numpy(concat([g.edge_features for g in graphs], (0, 3), np.int64)),
        "graph_node_batch": torch.from_numpy(np.repeat(molecule_ids, num_atoms)),
        "graph_motif_features": torch.from_numpy(concat([g.motif_features for g in graphs], (0, MOTIF_FEATURE_SIZE), np.float32)),
        "graph_motif_batch": torch.from_numpy(np.repeat(molecule_ids, num_motifs)),
    }
