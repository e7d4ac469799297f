"""Guards of the featurization speed-ups: each shortcut must give exactly what its plain definition gives."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MOLECULES
from rdkit import Chem
from test_featurization import decode_motif, reference_molecules

import featurization_llamo
from featurization_llamo import (
    FEATURIZE_CACHE_SIZE,
    MARKER_SMARTS,
    featurize_molecule,
    featurize_smiles,
    functional_groups,
    marked_atoms,
    merged_rings,
    motif_descriptors,
    parse_smiles,
    prompt_smiles,
    read_molecule,
)


AWKWARD = [*MOLECULES.values(), "[Xe]", "*CC*", "[H][H]", "[NH3]->[Pt]<-[NH3]", "C1CC[NH2]->[Pt]1", "OC(O)(O)O", "S1CSCS1",
           "C(S)(N)O", "c1ccc2ccccc2c1", "C12C3C4C1C5C2C3C45", "OC1(O)CC1", "C=C=C", "CC#N", "O=C1OC(O)C1"]  # fmt: skip
# What the binary-pickle reader has to decode: every optional field of an atom record (charge, chiral tag,
# hybridization, explicit Hs, radicals, isotope), bond records with type, direction and stereo atoms, extreme values,
# 4-byte atom indices (more than 255 atoms), and the records it must hand to the accessors (map numbers, dummy labels).
PICKLE_CASES = ["[13CH3][2H]", "[2H]O[2H]", "C[C@H](N)C(=O)[O-]", "C[C@@H]1CC[C@H](C)CC1", "C/C=C/C", "F/C=C\\F",
                "C/C=C(/Cl)\\C=C\\Br", "[CH2]C", "[O]", "[C]", "[Xe-129]", "[U+7]", "[C+300]", "C=[N+]=[N-]",
                "[NH4+].[Cl-]", "[Fe+2]", "C[S@](=O)c1ccccc1", "C[Si@](F)(Cl)Br", "C#CC#N", "B1C=CC=C1", "[H+]", "[H]",
                "CC1=CC2=CC=CC=C2C=C1", "C1CC2CCC1CC2", "[*:1]CC[*:2]", "[CH3:7]C", "C~C", "c1cc[nH]c1",
                "OC(=O)" + "CC(C)(C(=O)OC)" * 80 + "C", "C" * 300, "C1" + "C" * 290 + "C1"]  # fmt: skip


def parsed_molecules() -> list[Chem.Mol]:
    mols = []
    for smiles in reference_molecules() + AWKWARD:
        try:
            mols.append(parse_smiles(smiles))
        except ValueError:
            continue
    return mols


@pytest.fixture(scope="module")
def mols() -> list[Chem.Mol]:
    return parsed_molecules()


def test_marked_atoms_equal_the_smarts_definition(mols):
    patterns = [Chem.MolFromSmarts(smarts) for smarts in MARKER_SMARTS]
    for mol in mols:
        expected = {
            atom for pattern in patterns for match in mol.GetSubstructMatches(pattern, maxMatches=10**6) for atom in match
        }
        assert set(np.flatnonzero(marked_atoms(mol)).tolist()) == expected, Chem.MolToSmiles(mol)


def test_acetal_marker_cases():
    # an acetal-like carbon needs four connections and two aliphatic O / N / S neighbours
    assert marked_atoms(parse_smiles("OCO")).tolist() == [True, True, True]
    assert marked_atoms(parse_smiles("CC(C)(O)N")).tolist() == [False, True, False, True, True]
    assert marked_atoms(parse_smiles("OCC")).tolist() == [True, False, False]
    assert not marked_atoms(parse_smiles("C(O)(C)n1cccc1"))[0]  # the aromatic n does not count


def test_ring_info_of_a_parsed_molecule_is_the_symmetrized_sssr(mols):
    # featurization reads the rings RDKit stored during sanitization instead of recomputing Chem.GetSymmSSSR
    for mol in mols:
        assert list(mol.GetRingInfo().AtomRings()) == [tuple(ring) for ring in Chem.GetSymmSSSR(Chem.Mol(mol))]


def test_a_molecule_without_ring_information_gets_it_computed(capfd):
    mol = Chem.MolFromSmiles("OC1CC2CCC1C2c1ccccc1", sanitize=False)
    mol.UpdatePropertyCache(strict=False)
    rings = merged_rings(mol)
    assert sorted(map(sorted, rings)) == [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13]]
    assert capfd.readouterr().err == ""


def reference_descriptor(mol: Chem.Mol, group: tuple[int, ...]) -> dict[str, int]:
    """The 73-d descriptor's content counted the plain way, with RDKit objects."""
    atoms = set(group)
    symbols = [mol.GetAtomWithIdx(atom).GetSymbol() for atom in atoms]
    bonds = [bond for bond in mol.GetBonds() if bond.GetBeginAtomIdx() in atoms and bond.GetEndAtomIdx() in atoms]
    types = [bond.GetBondType() for bond in bonds]
    caps = {"C": 10, "O": 5, "N": 5, "P": 5, "S": 5, "single": 10, "double": 7, "triple": 7, "aromatic": 7}
    counts = {element: symbols.count(element) for element in ("C", "O", "N", "P", "S")}
    counts["halogen"] = int(any(symbol in ("F", "Cl", "Br", "I") for symbol in symbols))
    counts["other"] = int(any(symbol not in ("C", "O", "N", "P", "S", "F", "Cl", "Br", "I") for symbol in symbols))
    for name, bond_type in (("single", "SINGLE"), ("double", "DOUBLE"), ("triple", "TRIPLE"), ("aromatic", "AROMATIC")):
        counts[name] = types.count(getattr(Chem.BondType, bond_type))
    counts["ring"] = int(any(bond.IsInRing() for bond in bonds))
    return {name: min(value, caps.get(name, 1)) for name, value in counts.items()}


def test_motif_descriptors_equal_plain_counting(mols):
    for mol in mols[::3]:
        graph = featurize_molecule(mol)
        assert len(graph.motif_atoms) == graph.motif_features.shape[0]
        for group, row in zip(graph.motif_atoms, graph.motif_features):
            assert decode_motif(row) == reference_descriptor(mol, group), (Chem.MolToSmiles(mol), group)


def test_public_helpers_agree_with_featurize_molecule():
    mol = parse_smiles(MOLECULES["caffeine"])
    graph = featurize_molecule(mol)
    groups = functional_groups(mol)
    assert tuple(groups) == graph.motif_atoms
    np.testing.assert_array_equal(motif_descriptors(mol, groups), graph.motif_features)


def test_featurize_smiles_cache_returns_what_the_uncached_path_computes():
    featurize_smiles.cache_clear()
    smiles = MOLECULES["aspirin"]
    graph, shown = featurize_smiles(smiles)
    mol = parse_smiles(smiles)
    expected = featurize_molecule(mol)
    for field in ("node_features", "edge_index", "edge_features", "motif_features"):
        np.testing.assert_array_equal(getattr(graph, field), getattr(expected, field))
        assert getattr(graph, field).dtype == getattr(expected, field).dtype
        assert not getattr(graph, field).flags.writeable  # shared by every hit: read-only
    assert graph.motif_atoms == expected.motif_atoms
    assert shown == prompt_smiles(mol)
    again = featurize_smiles(smiles)
    assert again[0] is graph and featurize_smiles.cache_info().hits == 1
    # the options are part of the key
    assert featurize_smiles(smiles, with_graph=False) == (None, shown)
    assert featurize_smiles(smiles, isomeric=True, max_length=5)[1] == prompt_smiles(mol, isomeric=True, max_length=5)
    assert featurize_smiles.cache_info().maxsize == FEATURIZE_CACHE_SIZE


@pytest.mark.parametrize("bad", ["C1CC(", "", None, ["CCO"]])
def test_featurize_smiles_raises_value_error_every_time(bad):
    for _ in range(2):  # failures are not cached
        with pytest.raises(ValueError):
            featurize_smiles(bad)


def pickle_molecules() -> list[Chem.Mol]:
    mols = parsed_molecules()
    for smiles in PICKLE_CASES:
        mol = Chem.MolFromSmiles(smiles)
        if mol is not None:
            mols.append(mol)
    return mols


def assert_same_reading(fast, reference, label: str) -> None:
    assert fast.atoms == reference.atoms, label
    assert fast.bonds == reference.bonds, label
    assert (fast.begin, fast.end) == (reference.begin, reference.end), label
    assert fast.bond_in_ring == reference.bond_in_ring, label
    assert fast.rings == reference.rings, label
    fast_edges = np.frombuffer(fast.edges, dtype=fast.index_type)
    np.testing.assert_array_equal(fast_edges, np.frombuffer(reference.edges, dtype=reference.index_type), err_msg=label)


def test_the_pickle_reader_reads_what_the_accessors_read():
    read_by_pickle = 0
    for mol in pickle_molecules():
        fast = featurization_llamo._read_pickle(mol)
        if fast is not None:
            assert_same_reading(fast, featurization_llamo._read_accessors(mol), Chem.MolToSmiles(mol))
            read_by_pickle += 1
    assert read_by_pickle >= 3500


def test_the_pickle_reader_reads_every_shipped_molecule():
    # This RDKit writes a pickle layout the reader knows; if an upgrade changes it, featurization stays correct (the
    # accessors take over) but about 1.5x slower: check the layout (MolPickler.cpp) and extend `_PICKLE_VERSIONS`.
    mols = parsed_molecules()
    unread = [Chem.MolToSmiles(mol) for mol in mols if featurization_llamo._read_pickle(mol) is None]
    assert set(unread) <= {"*CC*"}, unread[:5]


@pytest.mark.parametrize("smiles", ["[*:1]CC[*:2]", "[CH3:7]C", "*CC*"])
def test_atoms_the_pickle_reader_does_not_read_go_to_the_accessors(smiles):
    mol = Chem.MolFromSmiles(smiles)
    assert featurization_llamo._read_pickle(mol) is None
    assert featurize_molecule(mol).num_atoms == mol.GetNumAtoms()


def test_more_than_255_atoms_are_read_from_the_pickle_with_4_byte_indices():
    mol = parse_smiles("C1" + "C" * 290 + "C1")
    fast = featurization_llamo._read_pickle(mol)
    assert fast is not None and fast.index_type == "<i4"
    assert_same_reading(fast, featurization_llamo._read_accessors(mol), "ring of 292 atoms")


def test_unsanitized_molecules_and_other_pickle_versions_use_the_accessors(monkeypatch):
    unsanitized = Chem.MolFromSmiles("OC1CC2CCC1C2c1ccccc1", sanitize=False)
    assert featurization_llamo._read_pickle(unsanitized) is None  # no property cache: the accessors raise on it
    mol = parse_smiles(MOLECULES["caffeine"])
    expected = featurize_molecule(mol)
    monkeypatch.setattr(featurization_llamo, "_PICKLE_HEADERS", (b"another version",))
    assert featurization_llamo._read_pickle(mol) is None
    graph = featurize_molecule(mol)
    for field in ("node_features", "edge_index", "edge_features", "motif_features"):
        np.testing.assert_array_equal(getattr(graph, field), getattr(expected, field))
    assert graph.motif_atoms == expected.motif_atoms


def test_features_do_not_depend_on_the_kind_caches(monkeypatch):
    # the caches of decoded records, atom / bond kinds and descriptor rows are bounded; past the bound nothing is kept
    mols = parsed_molecules()[::7]
    expected = [featurize_molecule(mol) for mol in mols]
    for name in ("_ATOM_RECORDS", "_BOND_RECORDS", "_ATOM_KINDS", "_BOND_KINDS", "_MOTIF_ROWS"):
        monkeypatch.setattr(featurization_llamo, name, {})
    monkeypatch.setattr(featurization_llamo, "_KIND_CACHE_SIZE", 0)
    for graph, reference in zip([featurize_molecule(mol) for mol in mols], expected, strict=True):
        for field in ("node_features", "edge_index", "edge_features", "motif_features"):
            np.testing.assert_array_equal(getattr(graph, field), getattr(reference, field))
        assert graph.motif_atoms == reference.motif_atoms
    assert featurization_llamo._ATOM_KINDS == {} and featurization_llamo._MOTIF_ROWS == {}


def test_read_molecule_tables_are_the_accessors_values():
    for smiles in [MOLECULES["caffeine"], "C/C=C/C", "[13CH3][2H]", "C"]:
        mol = parse_smiles(smiles)
        tables = read_molecule(mol)
        atoms = mol.GetAtoms()
        expected_atoms = [[int(getter(atom)) for atom in atoms] for getter in featurization_llamo._ATOM_GETTERS]
        expected_bonds = [[int(getter(bond)) for bond in mol.GetBonds()] for getter in featurization_llamo._BOND_GETTERS]
        assert tables.atoms.dtype == tables.bonds.dtype == np.int64
        assert tables.atoms.tolist() == expected_atoms
        assert tables.bonds.reshape(6, -1).tolist() == expected_bonds
        assert tables.degrees.tolist() == [atom.GetTotalDegree() for atom in atoms]
        assert tables.atom_in_ring.tolist() == [atom.IsInRing() for atom in atoms]


def test_featurize_molecule_arrays_are_writeable_and_typed():
    graph = featurize_molecule(parse_smiles(MOLECULES["aspirin"]))
    for field, dtype in (("node_features", np.int64), ("edge_index", np.int64), ("edge_features", np.int64),
                         ("motif_features", np.float32)):  # fmt: skip
        array = getattr(graph, field)
        assert array.dtype == dtype and array.flags.writeable and array.flags.c_contiguous, field
    empty = featurize_molecule(parse_smiles("[Xe]"))
    assert empty.edge_index.shape == (2, 0) and empty.edge_features.shape == (0, 3)
    assert empty.motif_features.shape == (1, 73)


def test_motif_descriptors_count_a_repeated_atom_once():
    mol = parse_smiles(MOLECULES["aspirin"])
    np.testing.assert_array_equal(motif_descriptors(mol, [(0, 1, 1, 2)]), motif_descriptors(mol, [(0, 1, 2)]))
    assert motif_descriptors(mol, []).shape == (0, 73)
