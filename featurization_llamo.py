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
    return _parse_checked(check_smiles_text(smiles, max_length), smiles, max_atoms)


def _parse_checked(text: str, smiles: str, max_atoms: int | None) -> Chem.Mol:
    """`parse_smiles` of a text `check_smiles_text` let through (`smiles`: the input, for the messages)."""
    with rdBase.BlockLogs():  # RDKit reports problems on the C++ stderr stream; we raise them instead
        try:
            mol = Chem.MolFromSmiles(text)
        except RuntimeError as error:  # e.g. '[#119]': an atomic number RDKit has no element for
            raise ValueError(f"invalid SMILES {short_repr(smiles)}: {error}") from None
        if mol is None:
            raise ValueError(f"invalid SMILES {short_repr(smiles)}: {_diagnose_unparsable(text)}")
    num_atoms = mol.GetNumAtoms()
    if num_atoms == 0:
        raise ValueError(f"empty SMILES {short_repr(smiles)}: a molecule needs at least one atom")
    if max_atoms is not None and num_atoms > max_atoms:
        raise ValueError(f"molecule too large {short_repr(smiles)}: {num_atoms:,} atoms > the limit of {max_atoms:,}")
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


# ---------------------------------------------------------------------------------------------------------------------
# Reading RDKit. Everything the featurization needs of a molecule is read once, into a `_Molecule`: one `_Atom` per
# atom and one `_Bond` per bond, each shared by every atom / bond with the same properties and carrying its OGB row
# and its functional-group properties ready made, plus the bond ends and the rings. The features are then computed
# from Python lists and a handful of NumPy calls, without going back to RDKit.

_CHIRALITY_POSITION = {int(value): position for value, position in _CHIRALITY_INDEX.items()}
_HYBRIDIZATION_POSITION = {int(value): position for value, position in _HYBRIDIZATION_INDEX.items()}
_BOND_TYPE_POSITION = {int(value): position for value, position in _BOND_TYPE_INDEX.items()}
_BOND_STEREO_POSITION = {int(value): position for value, position in _BOND_STEREO_INDEX.items()}
_SINGLE, _DOUBLE, _TRIPLE, _AROMATIC = (
    _BOND_TYPE_POSITION[int(getattr(Chem.BondType, name))] for name in ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
)  # fmt: skip  (bond columns 0-3)
_ELEMENT_NUMBERS = {symbol: number for number, symbol in _COUNTED_ELEMENTS.items()}
# Motif element column of each atomic number: 0-4 the counted elements in descriptor order, 5 halogen, 6 other.
_MOTIF_ELEMENT_COLUMN = {_ELEMENT_NUMBERS[symbol]: column for column, (symbol, _) in enumerate(_MOTIF_COUNT_BLOCKS)}
_MOTIF_ELEMENT_COLUMN |= dict.fromkeys(_HALOGENS, 5)
# Descriptor layout: 5 element blocks, the halogen and other-element flags, 4 bond blocks, the ring flag.
_MOTIF_HALOGEN_COLUMN = sum(buckets for _, buckets in _MOTIF_COUNT_BLOCKS)
_MOTIF_BLOCKS = [(start, buckets) for start, buckets in zip(
    np.cumsum([0] + [buckets for _, buckets in _MOTIF_COUNT_BLOCKS[:-1]]).tolist()
    + (_MOTIF_HALOGEN_COLUMN + 2 + np.cumsum([0] + [buckets for _, buckets in _MOTIF_BOND_BLOCKS[:-1]])).tolist(),
    [buckets for _, buckets in _MOTIF_COUNT_BLOCKS + _MOTIF_BOND_BLOCKS],
)]  # fmt: skip


class _Atom(NamedTuple):
    """One kind of atom (all atoms with these `values` share it)."""

    values: tuple[int, ...]  # atomic number, ChiralType, formal charge, #H (implicit + explicit), radicals,
    # HybridizationType, aromatic -- a column of `MoleculeTables.atoms`
    row: bytes  # its OGB feature row, int64, with the #H in the degree column and 0 in the ring column
    num_hs: int
    node_rows: dict[int, bytes]  # the complete OGB row by 2 * total degree + in ring (`_node_row`), filled when met
    element: int  # motif element column: 0-4 C, O, N, P, S; 5 halogen; 6 other
    marked: bool  # not a carbon: it starts a functional group ([!#6])
    aliphatic_carbon: bool  # an acetal-like carbon if it has 4 connections and two ...
    acetal_partner: bool  # ... aliphatic O / N / S neighbours


class _Bond(NamedTuple):
    """One kind of bond (all bonds with these `values` share it)."""

    values: tuple[int, ...]  # BondType, BondStereo, conjugated -- rows 2-4 of `MoleculeTables.bonds`
    rows: bytes  # its OGB feature row, int64, twice: the edge i->j and the edge j->i
    column: int  # 0-3 single / double / triple / aromatic (`_SINGLE` ...), 4 any other type
    marks: bool  # double or triple: both atoms start a functional group (*=,#*)
    acetal: bool  # single or aromatic: SMARTS' default bond, the one of [CX4]([O,N,S])[O,N,S]
    pair_row: bytes  # the motif descriptor of two carbons joined by this bond outside rings (`_motif_row`)


class _Molecule(NamedTuple):
    """What the featurization reads from RDKit about one molecule (see `_read` for the readers)."""

    atoms: list[_Atom]
    edges: bytes | bytearray  # the edge index [2, 2 * num_bonds] as `index_type` values: bond i is the edges
    # begin -> end and end -> begin, i.e. row 0 is the begin and end atom of bond 0, of bond 1, ...; row 1 the same
    # pairs swapped
    index_type: str  # NumPy dtype of `edges`
    begin: list[int]
    end: list[int]
    bonds: list[_Bond]
    bond_in_ring: list[bool]
    rings: tuple[tuple[int, ...], ...]  # symmetrized SSSR (= Chem.GetSymmSSSR), atom indices in ring order


# Shared `_Atom` / `_Bond` objects by their values (a few hundred cover a data set). Bounded; filled under the GIL.
_ATOM_KINDS: dict[tuple[int, ...], _Atom] = {}
_BOND_KINDS: dict[tuple[int, ...], _Bond] = {}
_KIND_CACHE_SIZE = 4096


def _atom_kind(values: tuple[int, ...]) -> _Atom:
    kind = _ATOM_KINDS.get(values)
    if kind is None:
        number, chiral_tag, charge, num_hs, radicals, hybridization, aromatic = values
        row = (
            number - 1 if 1 <= number <= 118 else 118,
            _CHIRALITY_POSITION.get(chiral_tag, 4),  # anything newer (allene, square planar, ...) -> misc
            num_hs,  # + the number of bonds, capped at 11, once the bonds are known (the total degree)
            charge + 5 if -5 <= charge <= 5 else 11,
            min(num_hs, 9),  # 0-8, then "misc"
            min(radicals, 5),  # 0-4, then "misc"
            _HYBRIDIZATION_POSITION.get(hybridization, 5),
            aromatic,
            0,  # in a ring: set once the rings are known
        )
        aliphatic = not aromatic
        kind = _Atom(
            values=values,
            row=np.array(row, dtype=np.int64).tobytes(),
            num_hs=num_hs,
            node_rows={},
            element=_MOTIF_ELEMENT_COLUMN.get(number, 6),
            marked=number != 6,
            aliphatic_carbon=number == 6 and aliphatic,
            acetal_partner=number in (7, 8, 16) and aliphatic,
        )
        if len(_ATOM_KINDS) < _KIND_CACHE_SIZE:
            _ATOM_KINDS[values] = kind
    return kind


def _bond_kind(values: tuple[int, ...]) -> _Bond:
    kind = _BOND_KINDS.get(values)
    if kind is None:
        bond_type, stereo, conjugated = values
        column = _BOND_TYPE_POSITION.get(bond_type, 4)
        # OGB has no misc bucket for stereo and raises on the atropisomer tags RDKit added later: those -> STEREOANY
        row = np.array([column, _BOND_STEREO_POSITION.get(stereo, 5), conjugated], dtype=np.int64).tobytes()
        pair_counts = [0] * 13
        pair_counts[0], pair_counts[7 + column] = 2, 1  # two C atoms, this bond, no ring bond
        kind = _Bond(
            values=values,
            rows=row + row,
            column=column,
            marks=column in (_DOUBLE, _TRIPLE),
            acetal=column in (_SINGLE, _AROMATIC),
            pair_row=_motif_row(tuple(pair_counts)),
        )
        if len(_BOND_KINDS) < _KIND_CACHE_SIZE:
            _BOND_KINDS[values] = kind
    return kind


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
    """Everything the featurization reads from RDKit about one molecule, as arrays: one row per property, one column
    per atom (`atoms`, int64 [7, N]) or bond (`bonds`, int64 [6, B]), plus the rings (see `read_molecule`)."""

    atoms: np.ndarray  # rows: atomic number, ChiralType, formal charge, #H (implicit + explicit), radicals,
    # HybridizationType, aromatic
    bonds: np.ndarray  # rows: begin atom, end atom, BondType, BondStereo, conjugated, in ring
    degrees: np.ndarray  # [N] total degree: bonded atoms + hydrogens (RDKit's GetTotalDegree)
    atom_in_ring: np.ndarray  # [N] bool
    rings: tuple[tuple[int, ...], ...]  # symmetrized SSSR (= Chem.GetSymmSSSR), atom indices in ring order


def read_molecule(mol: Chem.Mol) -> MoleculeTables:
    """Every atom and bond property the featurization reads from RDKit, as arrays (`MoleculeTables`)."""
    molecule = _read(mol)
    num_atoms, num_bonds = len(molecule.atoms), len(molecule.bonds)
    atoms = np.array([atom.values for atom in molecule.atoms], dtype=np.int64).reshape(num_atoms, 7).T
    edges = np.frombuffer(molecule.edges, dtype=molecule.index_type)
    bonds = np.empty((6, num_bonds), dtype=np.int64)
    bonds[:2] = edges[: 2 * num_bonds].reshape(num_bonds, 2).T
    bonds[2:5] = np.array([bond.values for bond in molecule.bonds], dtype=np.int64).reshape(num_bonds, 3).T
    bonds[5] = molecule.bond_in_ring
    atom_in_ring = np.zeros(num_atoms, dtype=bool)
    atom_in_ring[[atom for ring in molecule.rings for atom in ring]] = True
    degrees = np.bincount(edges[: 2 * num_bonds], minlength=num_atoms) + atoms[3]
    return MoleculeTables(atoms=atoms, bonds=bonds, degrees=degrees, atom_in_ring=atom_in_ring, rings=molecule.rings)


def _read(mol: Chem.Mol) -> _Molecule:
    """Read a molecule from its binary pickle when it can be (`_read_pickle`: one RDKit call), else with one accessor
    call per atom or bond property (`_read_accessors`). Both read the same (`tests/test_featurization_fast.py`)."""
    molecule = _read_pickle(mol)
    return molecule if molecule is not None else _read_accessors(mol)


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


def _read_accessors(mol: Chem.Mol) -> _Molecule:
    """`_read` through RDKit's Python accessors: a wrapper object per atom / bond (about 0.4 us each) and a
    Python -> C++ call per property (0.1-0.4 us; more for enums). The reference, and the path for what the pickle
    reader does not handle."""
    num_atoms, num_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    # indexing, not `mol.GetAtoms()`, whose Python-level iterator costs about as much again as the wrappers
    atoms = list(map(mol.GetAtomWithIdx, range(num_atoms)))
    bonds = list(map(mol.GetBondWithIdx, range(num_bonds)))
    atom_values = zip(*[list(map(int, map(getter, atoms))) for getter in _ATOM_GETTERS], strict=True)
    begin, end, *bond_values, in_ring = [list(map(int, map(getter, bonds))) for getter in _BOND_GETTERS]
    edges = np.empty((2, num_bonds, 2), dtype=np.int64)
    edges[0, :, 0] = edges[1, :, 1] = begin
    edges[0, :, 1] = edges[1, :, 0] = end
    return _Molecule(
        atoms=[_atom_kind(values) for values in atom_values],
        edges=edges.tobytes(),
        index_type="=i8",
        begin=begin,
        end=end,
        bonds=[_bond_kind(values) for values in zip(*bond_values, strict=True)],
        bond_in_ring=list(map(bool, in_ring)),
        rings=tuple(map(tuple, _atom_rings(mol))),
    )


# Reading a molecule from its binary pickle (`Mol.ToBinary`). One C++ call serializes every atom and bond property
# the features need -- atomic number, charge, chirality, hybridization, explicit Hs, implicit valence, radicals,
# aromaticity; bond ends, type, stereo, conjugation; the rings -- as short byte records, where the accessors cost a
# wrapper per atom / bond and a call per property (about 4x the time). The layout is that of RDKit's MolPickler.cpp
# (`_pickleAtom`, `_pickleAtomData`, `_pickleBond`, `_pickleSSSR`) for the pickle versions below, checked against the
# accessors by the tests. Anything else -- another pickle version, query atoms / bonds, atom map numbers, dummy labels,
# monomer info, a property cache or ring info other than the ones sanitization leaves -- goes to `_read_accessors`.
_PICKLE_VERSIONS = ((16, 3, 0), (16, 4, 0))
_PICKLE_HEADERS = tuple(  # endian id, the VERSION tag (as int32), major, minor, patch
    b"".join(value.to_bytes(4, "little") for value in (0xDEADBEEF, 0, *version)) for version in _PICKLE_VERSIONS
)
_PICKLE_NO_PROPS = Chem.PropertyPickleOptions.NoProps
_BEGIN_ATOMS, _BEGIN_BONDS, _BEGIN_SYMMETRIZED_SSSR = 1, b"\x0b", b"\x42"  # MolPickler::Tags 1, 11, 66
# An atom record: atomic number, flags (bit 6 aromatic, bit 5 no implicit Hs, bits 1-4: extras after the record), int32
# property flags, then one byte for each of property bits 1-7 that is set (charge, chiral tag, hybridization if not
# SP3, explicit Hs, explicit valence, implicit valence, radicals) and 4 for bit 8 (isotope).
_ATOM_RECORD_LENGTH = bytes(6 + (value & 0xFE).bit_count() for value in range(256))  # by property-flag bits 0-7
_ATOM_ISOTOPE_LENGTH = bytes([0, 4] + [255] * 254)  # by property-flag bits 8-15 (other bits: rejected when decoded)
# A bond record: begin and end atom (1 byte each; 4 past 255 atoms), flags (bit 6 aromatic, bit 5 conjugated, bit 4
# query, bit 3 type follows (not single), bit 2 direction follows, bit 1 stereo follows, bit 0 end points follow), then
# those bytes; a stereo entry is the stereo value, a count and that many atom indices. Its tail: from the flags on.
_BOND_TAIL_LENGTH = bytes(1 + (flags >> 3 & 1) + (flags >> 2 & 1) + 2 * (flags >> 1 & 1) for flags in range(256))
_SP3 = int(Chem.HybridizationType.SP3)
_SINGLE_BOND = int(Chem.BondType.SINGLE)
# Atom / bond kinds by their record bytes (bonds: without the atom indices), so that nearly every record is one
# dictionary lookup. Bounded; filled under the GIL.
_ATOM_RECORDS: dict[bytes, _Atom] = {}
_BOND_RECORDS: dict[bytes, _Bond] = {}


def _decode_atom_record(record: bytes) -> _Atom | None:
    """The kind of atom of a record (cached in `_ATOM_RECORDS`); None for a record this does not read."""
    number, flags, property_flags = record[0], record[1], int.from_bytes(record[2:6], "little")
    if flags & 0x1E or property_flags & ~0x1FE:  # query, map number, dummy label, monomer info; unknown properties
        return None
    values, offset = {}, 6
    for bit in range(1, 8):
        if property_flags >> bit & 1:
            values[bit] = record[offset]
            offset += 1
    charge = values.get(1, 0)
    num_hs = values.get(4, 0) + (0 if flags & 0x20 else values.get(6, 0))  # explicit + implicit (none if "no implicit")
    atom = _atom_kind((number, values.get(2, 0), charge - 256 if charge > 127 else charge, num_hs, values.get(7, 0),
                       values.get(3, _SP3), flags >> 6 & 1))  # fmt: skip
    if len(_ATOM_RECORDS) < _KIND_CACHE_SIZE:
        _ATOM_RECORDS[record] = atom
    return atom


def _decode_bond_record(record: bytes) -> _Bond | None:
    """The kind of bond of a record without its atom indices (cached in `_BOND_RECORDS`); None if not read here."""
    flags = record[0]
    if flags & 0x11:  # query bond, mol-file end points
        return None
    bond_type = record[1] if flags & 0x08 else _SINGLE_BOND
    stereo = record[1 + (flags >> 3 & 1) + (flags >> 2 & 1)] if flags & 0x02 else 0
    bond = _bond_kind((bond_type, stereo, flags >> 5 & 1))
    if len(_BOND_RECORDS) < _KIND_CACHE_SIZE:
        _BOND_RECORDS[record] = bond
    return bond


def _read_pickle(mol: Chem.Mol) -> _Molecule | None:
    """`_read` from the molecule's pickle; None where it cannot be read this way (see above)."""
    if mol.NeedsUpdatePropertyCache():  # implicit valences not computed: the accessors raise, the pickle says 0
        return None
    data = mol.ToBinary(_PICKLE_NO_PROPS)
    if not data.startswith(_PICKLE_HEADERS):
        return None
    try:
        return _read_pickle_records(data)
    except (IndexError, ValueError):  # a record running past the end: not a layout read here
        return None


def _int32(data: bytes, position: int) -> int:
    if position + 4 > len(data):
        raise IndexError("past the end of the pickle")
    return int.from_bytes(data[position : position + 4], "little", signed=True)


def _read_pickle_records(data: bytes) -> _Molecule | None:
    num_atoms, num_bonds = _int32(data, 20), _int32(data, 24)
    if num_atoms <= 0 or data[28] != 0x80 or data[29] != _BEGIN_ATOMS:
        return None
    atoms, known, position = [], _ATOM_RECORDS.get, 30
    add_atom, record_length, isotope_length = atoms.append, _ATOM_RECORD_LENGTH, _ATOM_ISOTOPE_LENGTH
    for _ in range(num_atoms):
        end = position + record_length[data[position + 2]] + isotope_length[data[position + 3]]
        atom = known(data[position:end])
        if atom is None:
            atom = _decode_atom_record(data[position:end])
            if atom is None:
                return None
        add_atom(atom)
        position = end
    if data[position : position + 1] != _BEGIN_BONDS:
        return None
    position += 1
    width = 1 if num_atoms <= 255 else 4  # bytes of an atom index in the bond and ring records
    head = 2 * width  # the bond's two atoms, then its record
    bonds, ends, known = [], bytearray(), _BOND_RECORDS.get
    add_bond, tail_length = bonds.append, _BOND_TAIL_LENGTH
    for _ in range(num_bonds):
        start = position + head
        flags = data[start]
        end = start + tail_length[flags]
        bond = known(data[start:end])
        if bond is None:
            bond = _decode_bond_record(data[start:end])
            if bond is None:
                return None
        add_bond(bond)
        ends += data[position:start]
        position = end + data[end - 1] * width if flags & 0x02 else end  # skip the stereo atoms
    if data[position : position + 1] != _BEGIN_SYMMETRIZED_SSSR:
        return None  # no ring info, or rings of another kind than sanitization's symmetrized SSSR
    num_rings = _int32(data, position + 1)  # unsigned, in fact; a ring count past 2**31 fails the end check anyway
    position += 5
    rings = []
    if width == 1:
        for _ in range(num_rings):
            size = data[position]
            rings.append(tuple(data[position + 1 : position + 1 + size]))
            position += 1 + size
        begin, end = list(ends[0::2]), list(ends[1::2])
        swapped = bytearray(len(ends))
        swapped[0::2], swapped[1::2] = end, begin
        index_type = "u1"
    else:
        for _ in range(num_rings):
            size = _int32(data, position)
            rings.append(tuple(np.frombuffer(data, dtype="<i4", count=size, offset=position + 4).tolist()))
            position += 4 + 4 * size
        pairs = np.frombuffer(bytes(ends), dtype="<i4").reshape(num_bonds, 2)  # (a copy: `ends` grows below)
        begin, end = pairs[:, 0].tolist(), pairs[:, 1].tolist()
        swapped = pairs[:, ::-1].tobytes()
        index_type = "<i4"
    if position > len(data):
        return None
    # a ring bond joins two atoms next to each other in a ring (RDKit's bond rings are these pairs of its atom rings)
    ring_pairs = set()
    for ring in rings:
        shifted = ring[1:] + ring[:1]
        ring_pairs.update(zip(ring, shifted), zip(shifted, ring))
    in_ring = list(map(ring_pairs.__contains__, zip(begin, end))) if rings else [False] * num_bonds
    ends += swapped  # the second row of the edge index
    return _Molecule(atoms, ends, index_type, begin, end, bonds, in_ring, tuple(rings))


# ---------------------------------------------------------------------------------------------------------------------
# Features of a `_Molecule`.


def _node_row(atom: _Atom, key: int) -> bytes:
    """`atom.node_rows[key]`: its OGB row with the total degree (capped) and the ring flag that `key` encodes."""
    row = np.frombuffer(atom.row, dtype=np.int64).copy()
    row[2], row[8] = min(key >> 1, 11), key & 1  # degree 0-10, then "misc"
    atom.node_rows[key] = row = row.tobytes()
    return row


def _graph_arrays(molecule: _Molecule, writeable: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """OGB node features, edge index and edge features (read-only unless `writeable`), and the total degree of each
    atom (bonds + Hs).

    Three NumPy calls: after RDKit's work each costs a microsecond or more (about three times what it costs in a tight
    loop), more than the plain-Python counting of bonds per atom and the lookup of each atom's finished row."""
    atoms, bonds = molecule.atoms, molecule.bonds
    num_atoms, num_edges = len(atoms), 2 * len(bonds)
    degrees = [atom.num_hs for atom in atoms]
    for atom in molecule.begin:
        degrees[atom] += 1
    for atom in molecule.end:
        degrees[atom] += 1
    keys = [2 * degree for degree in degrees]
    for ring in molecule.rings:
        for atom in ring:
            keys[atom] |= 1
    rows = [atom.node_rows.get(key) or _node_row(atom, key) for atom, key in zip(atoms, keys)]
    buffer = bytearray if writeable else bytes  # arrays on `bytes` are read-only
    node_features = np.ndarray((num_atoms, len(ATOM_FEATURE_VOCAB_SIZES)), dtype=np.int64, buffer=buffer(b"".join(rows)))
    edge_index = np.ndarray((2, num_edges), dtype=molecule.index_type, buffer=molecule.edges).astype(np.int64)
    if not writeable:
        edge_index.setflags(write=False)
    edge_features = np.ndarray((num_edges, len(BOND_FEATURE_VOCAB_SIZES)), dtype=np.int64,
                               buffer=buffer(b"".join([bond.rows for bond in bonds])))  # fmt: skip
    return node_features, edge_index, edge_features, degrees


def atom_features(mol: Chem.Mol) -> np.ndarray:
    """[num_atoms, 9] OGB atom features: atomic number, chirality, degree, formal charge, #H, radicals,
    hybridization, aromaticity, ring membership (each value outside OGB's list goes to its last bucket)."""
    return _graph_arrays(_read(mol))[0]


def bond_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Edge index [2, 2B] and OGB bond features [2B, 3] (type, stereo, conjugation), each bond i->j then j->i."""
    return _graph_arrays(_read(mol))[1:3]


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


def _marker_list(molecule: _Molecule, degrees: Sequence[int]) -> list[bool]:
    """`marked_atoms` of a read molecule, given each atom's total degree."""
    atoms = molecule.atoms
    marked = [atom.marked for atom in atoms]  # [!#6]
    # [CX4]([O,N,S])[O,N,S]: an aliphatic carbon of total degree 4 with two aliphatic O / N / S neighbours (partners)
    # joined by SMARTS' default bond (single or aromatic); only worth looking for with two partners or more
    partners = [atom.acetal_partner for atom in atoms]
    acetals: dict[int, int] | None = {} if partners.count(True) >= 2 else None
    for first, second, bond in zip(molecule.begin, molecule.end, molecule.bonds):
        if bond.marks:  # *=,#*
            marked[first] = marked[second] = True
        elif acetals is not None and bond.acetal:
            carbon = first if partners[second] else second if partners[first] else None
            if carbon is not None and degrees[carbon] == 4 and atoms[carbon].aliphatic_carbon:
                acetals[carbon] = acetals.get(carbon, 0) + 1
    for carbon, count in (acetals or {}).items():
        if count >= 2:
            marked[carbon] = True
    return marked


def marked_atoms(mol: Chem.Mol) -> np.ndarray:
    """[num_atoms] bool: the atoms that start a functional group, i.e. the atoms matched by any of the
    `MARKER_SMARTS` (heteroatoms, atoms of double / triple bonds, acetal-like carbons), computed from the atom and
    bond properties instead of three substructure searches."""
    molecule = _read(mol)
    return np.array(_marker_list(molecule, _graph_arrays(molecule)[3]), dtype=bool).reshape(-1)


def _functional_groups(molecule: _Molecule, degrees: Sequence[int]) -> tuple[list, list, list, list]:
    """`functional_groups` of a read molecule in its three parts: the groups of marked atoms, the carbon pairs (with
    their descriptor rows, which depend on the bond only), the ring systems. The groups are their concatenation."""
    marked = _marker_list(molecule, degrees)
    # Marked atoms joined by non-ring bonds: connected components, each labelled by its first atom (so `members` keeps
    # the groups in the order of their first atoms) and grown by moving the later-labelled of two joined groups. An
    # unmarked neighbour (environment) joins the list of its marked atom's group, and moves with it.
    label = list(range(len(marked)))
    members = {atom: [atom] for atom, is_marked in enumerate(marked) if is_marked}
    carbon_pairs: list[tuple[int, int]] = []
    pair_rows: list[bytes] = []
    for first, second, bond, bond_in_ring in zip(molecule.begin, molecule.end, molecule.bonds, molecule.bond_in_ring):
        if bond_in_ring:
            continue
        if marked[first]:
            if marked[second]:
                kept, joined = label[first], label[second]
                if kept != joined:
                    if joined < kept:
                        kept, joined = joined, kept
                    moved = members.pop(joined)
                    for atom in moved:
                        label[atom] = kept
                    members[kept] += moved
            else:
                members[label[first]].append(second)
        elif marked[second]:
            members[label[second]].append(first)
        else:  # two unmarked atoms, i.e. two carbons
            carbon_pairs.append((first, second) if first < second else (second, first))
            pair_rows.append(bond.pair_row)

    ring_atoms = set().union(*molecule.rings)  # a lone marked atom in a ring is no group: its ring covers it
    groups = [tuple(sorted(set(group))) for group in members.values() if len(group) > 1 or group[0] not in ring_atoms]
    rings = molecule.rings
    ring_systems = [tuple(sorted(ring)) for ring in (rings if len(rings) < 2 else _merge_rings(rings))]
    return groups, carbon_pairs, pair_rows, ring_systems


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
    molecule = _read(mol)
    marked_groups, carbon_pairs, _, ring_systems = _functional_groups(molecule, _graph_arrays(molecule)[3])
    return marked_groups + carbon_pairs + ring_systems


# Descriptor rows (float32 bytes) by their counts (see `_motif_row`). Bounded; filled under the GIL.
_MOTIF_ROWS: dict[tuple[int, ...], bytes] = {}


def _motif_row(counts: tuple[int, ...]) -> bytes:
    """The 73-d descriptor of a group with these counts: 7 element columns (`_Atom.element`), then 5 bond columns
    (`_Bond.column`), then 1 if a bond of the group is a ring bond."""
    row = _MOTIF_ROWS.get(counts)
    if row is None:
        values = np.zeros(MOTIF_FEATURE_SIZE, dtype=np.float32)
        for (start, buckets), count in zip(_MOTIF_BLOCKS, counts[:5] + counts[7:11], strict=True):
            values[start + min(count, buckets - 1)] = 1.0  # the last bucket of a count collects overflow
        flags = [counts[5] > 0, counts[6] > 0, counts[12] > 0]  # a halogen, another element, a ring bond
        values[[_MOTIF_HALOGEN_COLUMN, _MOTIF_HALOGEN_COLUMN + 1, MOTIF_FEATURE_SIZE - 1]] = flags
        row = values.tobytes()
        if len(_MOTIF_ROWS) < _KIND_CACHE_SIZE:
            _MOTIF_ROWS[counts] = row
    return row


def _motif_rows(molecule: _Molecule, groups: Sequence[Sequence[int]]) -> list[bytes]:
    """The descriptor rows of groups of distinct atoms (see `motif_descriptors`)."""
    elements = [atom.element for atom in molecule.atoms]
    groups_of = [0] * len(elements)  # bit i set: the atom is in group i
    counts: dict[int, list[int]] = {}  # by the group's bit
    bit = 1
    for group in groups:
        group_counts = counts[bit] = [0] * 13
        for atom in group:
            groups_of[atom] |= bit
            group_counts[elements[atom]] += 1
        bit <<= 1
    for first, second, bond, in_ring in zip(molecule.begin, molecule.end, molecule.bonds, molecule.bond_in_ring):
        shared = groups_of[first] & groups_of[second]  # the groups that hold both atoms: the bond is theirs
        if shared:
            column = 7 + bond.column
            while shared:
                lowest = shared & -shared
                group_counts = counts[lowest]
                group_counts[column] += 1
                if in_ring:
                    group_counts[12] = 1
                shared ^= lowest
    known = _MOTIF_ROWS.get
    return [known(group_counts) or _motif_row(group_counts) for group_counts in map(tuple, counts.values())]


def _motif_matrix(rows: Sequence[bytes], writeable: bool = True) -> np.ndarray:
    joined = b"".join(rows)
    return np.ndarray((len(rows), MOTIF_FEATURE_SIZE), dtype=np.float32, buffer=bytearray(joined) if writeable else joined)


def motif_descriptors(mol: Chem.Mol, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """[num_groups, 73] float32 one-hot descriptors: counts of C, O, N, P, S atoms, halogen / other-element flags,
    counts of single, double, triple and aromatic bonds inside the group, and whether any of them is a ring bond."""
    return _motif_matrix(_motif_rows(_read(mol), [set(group) for group in groups]))


def featurize_molecule(mol: Chem.Mol) -> MoleculeGraph:
    """OGB graph and motif descriptors of one sanitized RDKit molecule (RDKit is read once, see `_read`)."""
    return _featurize(mol, writeable=True)


def _featurize(mol: Chem.Mol, writeable: bool) -> MoleculeGraph:
    molecule = _read(mol)
    node_features, edge_index, edge_features, degrees = _graph_arrays(molecule, writeable)
    marked_groups, carbon_pairs, pair_rows, ring_systems = _functional_groups(molecule, degrees)
    rows = _motif_rows(molecule, marked_groups + ring_systems)
    rows[len(marked_groups) : len(marked_groups)] = pair_rows  # groups: marked, carbon pairs, ring systems
    return MoleculeGraph(
        node_features=node_features,
        edge_index=edge_index,
        edge_features=edge_features,
        motif_features=_motif_matrix(rows, writeable),
        motif_atoms=(*marked_groups, *carbon_pairs, *ring_systems),
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
        size = len(value[1])
        if graph is not None:
            size += graph.node_features.nbytes + graph.edge_index.nbytes + graph.edge_features.nbytes
            size += graph.motif_features.nbytes
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
    mol = _parse_checked(text, smiles, max_atoms)  # = parse_smiles, without checking the text twice
    graph = _featurize(mol, writeable=False) if with_graph else None  # shared by every hit: read-only arrays
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
