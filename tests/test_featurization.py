"""SMILES -> OGB graph (exactly `ogb.utils.smiles2graph`) and LLaMo's functional-group motifs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MOLECULES, read_data_smiles
from rdkit import Chem

from featurization_llamo import (
    ATOM_FEATURE_VOCAB_SIZES,
    BOND_FEATURE_VOCAB_SIZES,
    MOTIF_FEATURE_SIZE,
    collate_molecule_graphs,
    featurize_molecule,
    functional_groups,
    parse_smiles,
    prompt_smiles,
)


def reference_molecules() -> list[str]:
    """Real molecules shipped in data/: ChEBI-20, PubChem, QM9 and MoleculeNet (salts, charges, stereo)."""
    return (
        read_data_smiles("chebi20_smiles.tsv")
        + read_data_smiles("pubchem_iupac_train.tsv")[:500]
        + read_data_smiles("qm9_homo_lumo_gap.tsv")[:500]
        + read_data_smiles("moleculenet_smiles.tsv")
    )


def test_graph_is_identical_to_ogb_smiles2graph():
    from ogb.utils import smiles2graph

    compared = 0
    for smiles in reference_molecules():
        try:
            mol = parse_smiles(smiles)
        except ValueError:
            continue  # RDKit cannot read it; smiles2graph would crash on it
        graph = featurize_molecule(mol)
        expected = smiles2graph(smiles)
        np.testing.assert_array_equal(graph.node_features, expected["node_feat"], err_msg=smiles)
        np.testing.assert_array_equal(graph.edge_index, expected["edge_index"], err_msg=smiles)
        np.testing.assert_array_equal(graph.edge_features, expected["edge_feat"], err_msg=smiles)
        compared += 1
    assert compared >= 3500


def test_feature_values_stay_inside_the_ogb_vocabularies():
    for smiles in reference_molecules()[:800] + list(MOLECULES.values()):
        graph = featurize_molecule(parse_smiles(smiles))
        assert (graph.node_features >= 0).all() and (graph.node_features < np.array(ATOM_FEATURE_VOCAB_SIZES)).all()
        if graph.edge_features.size:
            assert (graph.edge_features < np.array(BOND_FEATURE_VOCAB_SIZES)).all()


def decode_motif(vector: np.ndarray) -> dict[str, int]:
    """Read a 73-d motif descriptor back into counts (layout of LLaMo's get_fg_feature)."""
    blocks = [("C", 11), ("O", 6), ("N", 6), ("P", 6), ("S", 6), ("halogen", 1), ("other", 1),
              ("single", 11), ("double", 8), ("triple", 8), ("aromatic", 8), ("ring", 1)]  # fmt: skip
    counts, offset = {}, 0
    for name, size in blocks:
        block = vector[offset : offset + size]
        counts[name] = int(block[0]) if size == 1 else int(np.argmax(block))
        if size > 1:
            assert block.sum() == 1, f"{name} block is not one-hot"
        offset += size
    assert offset == MOTIF_FEATURE_SIZE == len(vector)
    return counts


def motifs_of(smiles: str) -> list[tuple[set[int], dict[str, int]]]:
    graph = featurize_molecule(parse_smiles(smiles))
    return [(set(atoms), decode_motif(row)) for atoms, row in zip(graph.motif_atoms, graph.motif_features)]


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {key: value for key, value in counts.items() if value}


def test_methane_has_no_functional_group():
    graph = featurize_molecule(parse_smiles("C"))
    assert graph.motif_features.shape == (0, MOTIF_FEATURE_SIZE)
    assert graph.motif_atoms == ()


def test_benzene_is_one_aromatic_ring():
    assert [(atoms, nonzero(counts)) for atoms, counts in motifs_of("c1ccccc1")] == [
        ({0, 1, 2, 3, 4, 5}, {"C": 6, "aromatic": 6, "ring": 1})
    ]


def test_ethanol_hydroxyl_with_its_carbon_and_the_c_c_bond():
    assert [(atoms, nonzero(counts)) for atoms, counts in motifs_of("CCO")] == [
        ({1, 2}, {"C": 1, "O": 1, "single": 1}),  # O marked, its carbon is the environment
        ({0, 1}, {"C": 2, "single": 1}),  # unmarked C-C bond
    ]


def test_aspirin_ester_acid_and_ring():
    # atoms: C0 C1(=O2) O3 c4 c5 c6 c7 c8 c9 C10(=O11) O12
    assert [(atoms, nonzero(counts)) for atoms, counts in motifs_of(MOLECULES["aspirin"])] == [
        ({0, 1, 2, 3, 4}, {"C": 3, "O": 2, "single": 3, "double": 1}),  # acetyl ester incl. methyl and ring carbon
        ({9, 10, 11, 12}, {"C": 2, "O": 2, "single": 2, "double": 1}),  # carboxylic acid incl. ring carbon
        ({4, 5, 6, 7, 8, 9}, {"C": 6, "aromatic": 6, "ring": 1}),
    ]


def test_caffeine_methylated_nitrogens_carbonyls_and_two_fused_rings():
    motifs = motifs_of(MOLECULES["caffeine"])
    mol = parse_smiles(MOLECULES["caffeine"])
    symbols = [sorted(mol.GetAtomWithIdx(i).GetSymbol() for i in atoms) for atoms, _ in motifs]
    assert symbols.count(["C", "N"]) == 3  # three N-CH3
    assert symbols.count(["C", "O"]) == 2  # two C=O
    rings = [counts for atoms, counts in motifs if counts["ring"]]
    assert sorted(len(atoms) for atoms, counts in motifs if counts["ring"]) == [5, 6]  # fused rings share 2 atoms: kept apart
    assert all(counts["aromatic"] == counts["C"] + counts["N"] for counts in rings)
    assert len(motifs) == 7  # the unsubstituted imidazole N is a lone ring atom: dropped


def test_salt_ions_are_kept_as_single_atom_groups():
    assert [(atoms, nonzero(counts)) for atoms, counts in motifs_of("[Na+].[Cl-]")] == [
        ({0}, {"other": 1}),
        ({1}, {"halogen": 1}),
    ]


def test_acetal_carbon_joins_its_oxygens_and_bridged_rings_merge():
    assert [atoms for atoms, _ in motifs_of("OCC(O)O")] == [{0, 1}, {1, 2, 3, 4}]
    # norbornane: the two SSSR rings share 3 atoms -> one ring system of 7 atoms
    assert [(atoms, nonzero(counts)) for atoms, counts in motifs_of("C1CC2CCC1C2")] == [
        (set(range(7)), {"C": 7, "single": 8, "ring": 1})
    ]


def test_molecules_that_are_awkward_still_featurize():
    for smiles in [*MOLECULES.values(), "[Xe]", "*CC*", "[Fe+6]", "[H][H]", "C/C=C\\C", "[13CH4]", "[O]"]:
        graph = featurize_molecule(parse_smiles(smiles))
        assert graph.num_atoms >= 1
        assert graph.edge_index.shape == (2, graph.edge_features.shape[0])


def test_large_molecule_of_several_hundred_atoms():
    polymer = "OC(=O)" + "CC(C)(C(=O)OC)" * 80 + "C"
    graph = featurize_molecule(parse_smiles(polymer))
    assert graph.num_atoms > 500
    assert graph.num_motifs > 80


@pytest.mark.parametrize(
    "smiles, message",
    [
        ("C1CC(", "syntax error"),
        ("c1cccc1", "kekulize"),
        ("C(C)(C)(C)(C)C", "valence"),
        ("", "empty SMILES"),
        ("   ", "empty SMILES"),
        ("CC O", "whitespace"),
        (None, "expected a SMILES string"),
        (42, "expected a SMILES string"),
    ],
)
def test_invalid_smiles_raise_value_error_naming_the_problem(smiles, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_smiles(smiles)
    assert repr(smiles) in str(error.value)


def test_rdkit_parse_errors_do_not_reach_stderr(capfd):
    for smiles in ["C1CC(", "c1cccc1", "C(C)(C)(C)(C)C"]:
        with pytest.raises(ValueError):
            parse_smiles(smiles)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_surrounding_whitespace_is_stripped():
    assert Chem.MolToSmiles(parse_smiles("  CCO\n")) == "CCO"


def test_prompt_smiles_is_canonical_non_isomeric_and_truncated():
    mol = parse_smiles("[O-]C(=O)[C@@H]([NH3+])C")
    assert prompt_smiles(mol) == "CC([NH3+])C(=O)[O-]"
    assert prompt_smiles(mol, isomeric=True) == "C[C@H]([NH3+])C(=O)[O-]"
    assert prompt_smiles(parse_smiles("C" * 200)) == "C" * 128
    assert prompt_smiles(parse_smiles("C" * 200), max_length=None) == "C" * 200


def test_collate_offsets_edges_and_indexes_molecules():
    graphs = [featurize_molecule(parse_smiles(s)) for s in ("CCO", "C", "c1ccccc1")]
    batch = collate_molecule_graphs(graphs)
    assert batch["graph_node_features"].shape == (3 + 1 + 6, 9)
    assert batch["graph_node_batch"].tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    assert batch["graph_edge_index"].shape == (2, 4 + 0 + 12)
    # the benzene edges point at nodes 4..9, ethanol's at 0..2
    assert batch["graph_edge_index"][:, :4].max() == 2
    assert batch["graph_edge_index"][:, 4:].min() == 4
    assert batch["graph_motif_batch"].tolist() == [0, 0, 2]  # methane has no motif
    assert batch["graph_motif_features"].dtype == torch.float32
    assert all(tensor.dtype == torch.int64 for key, tensor in batch.items() if key != "graph_motif_features")


def released_code_groups(mol: Chem.Mol) -> list[frozenset[int]]:
    """LLaMo's released grouping procedure, step by step as llamo-original.md section 2 describes it: groups are
    merged while walking the bonds, each atom remembering the group it was put in."""
    patterns = [Chem.MolFromSmarts(s) for s in ("[!#6]", "*=,#*", "[CX4]([O,N,S])[O,N,S]")]
    marked = {atom for pattern in patterns for match in mol.GetSubstructMatches(pattern) for atom in match}
    groups: list[set[int]] = []
    owner: dict[int, list[int]] = {}
    for atom in marked:
        groups.append({atom})
        owner[atom] = [len(groups) - 1]
    for bond in mol.GetBonds():
        if bond.IsInRing():
            continue
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if a in marked and b in marked:
            groups[owner[a][0]] |= groups[owner[b][0]]
            groups[owner[b][0]] = set()
            owner[b] = owner[a]
        elif a in marked or b in marked:
            inside, outside = (a, b) if a in marked else (b, a)
            groups[owner[inside][0]].add(outside)
        else:
            groups.append({a, b})
    kept = [g for g in groups if g and not (len(g) == 1 and mol.GetAtomWithIdx(next(iter(g))).IsInRing())]
    rings = [set(r) for r in Chem.GetSymmSSSR(mol)]
    changed = True
    while changed:
        changed = False
        for i in range(len(rings)):
            for j in range(i + 1, len(rings)):
                if rings[i] and len(rings[i] & rings[j]) > 2:
                    rings[i] |= rings[j]
                    rings[j] = set()
                    changed = True
    return sorted(map(frozenset, kept + [r for r in rings if r]), key=sorted)


def test_functional_groups_equal_the_released_procedure_on_real_molecules():
    for smiles in reference_molecules():
        try:
            mol = parse_smiles(smiles)
        except ValueError:
            continue
        ours = sorted(map(frozenset, functional_groups(mol)), key=sorted)
        assert ours == released_code_groups(mol), smiles
