"""Guards of the featurization speed-ups: each shortcut must give exactly what its plain definition gives."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MOLECULES
from rdkit import Chem
from test_featurization import decode_motif, reference_molecules

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
)


AWKWARD = [*MOLECULES.values(), "[Xe]", "*CC*", "[H][H]", "[NH3]->[Pt]<-[NH3]", "C1CC[NH2]->[Pt]1", "OC(O)(O)O", "S1CSCS1",
           "C(S)(N)O", "c1ccc2ccccc2c1", "C12C3C4C1C5C2C3C45", "OC1(O)CC1", "C=C=C", "CC#N", "O=C1OC(O)C1"]  # fmt: skip


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
