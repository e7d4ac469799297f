"""Where LLaMo looked: the graph projector's cross-attention mapped onto a molecule's atoms, and drawn with RDKit.

LLaMo's multi-level projector turns a molecule into graph tokens with learned queries that cross-attend the atoms
at every GNN level (and, for the motif tokens, the molecule's functional groups). This module reads those weights
(`model.get_graph_features(..., output_attentions=True)`) and maps them to one weight per atom:

- **level panels**: the weights of a level's queries, averaged over its queries. Each query's weights sum to 1
  over the molecule's atoms, so each level's atom weights sum to 1.
- **motif panel**: the motif queries' weights averaged over the queries give one weight per functional group
  (summing to 1); each group's weight is split evenly among its atoms, and an atom in several groups adds up its
  shares. The atom weights sum to 1, atoms outside every group get 0, and a molecule with no functional group
  gets 0 everywhere.

The queries are learned, not conditioned on the question, so the picture depends on the molecule only.

In pictures, an atom is red when it gets more than an even share (1 / number of atoms) of its panel's attention
and blue when it gets less, on a log scale that saturates at `saturation` times (or 1 / `saturation`) the even
share; white is exactly even. Atom indices are RDKit's order of the input SMILES, which is also the node order
of the graph tensors, so no re-mapping is needed.

    from llamo.attention import attention_png
    attention_png("CC(=O)Oc1ccccc1C(=O)O", model, processor, path="aspirin.png")

or from a shell: `llamo-attention --model outputs/llamo-tiny --smiles "CC(=O)Oc1ccccc1C(=O)O" --output aspirin.png`
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem.Draw import rdMolDraw2D

from featurization_llamo import featurize_molecule, parse_smiles
from projectors_llamo import PROJECTOR_SPECS


# Projector types whose graph tokens come from cross-attention (the others have no weights to show).
ATTENTION_PROJECTOR_TYPES = tuple(name for name, spec in PROJECTOR_SPECS.items() if spec.attention_levels is not None)
MOTIF_PANEL = "motifs"

RED = (0.80, 0.10, 0.12)
BLUE = (0.15, 0.40, 0.80)
WHITE = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class AtomAttention:
    """The projector attention of one molecule, as weights on its atoms (indices of `parse_smiles(smiles)`)."""

    smiles: str
    level_names: tuple[str, ...]
    level_weights: np.ndarray  # [num_levels, num_atoms], each row sums to 1
    motif_weights: np.ndarray | None  # [num_atoms], sums to 1 (0 without functional groups); None: no motif queries
    motif_atoms: tuple[tuple[int, ...], ...]

    @property
    def num_atoms(self) -> int:
        return self.level_weights.shape[1]

    @property
    def panel_names(self) -> tuple[str, ...]:
        """Names of the pictures that can be drawn: one per level, then `"motifs"` when the model has motif queries."""
        return self.level_names + ((MOTIF_PANEL,) if self.motif_weights is not None else ())

    def panel(self, name: str) -> np.ndarray:
        """Atom weights of one panel (a name from `panel_names`)."""
        if name == MOTIF_PANEL and self.motif_weights is not None:
            return self.motif_weights
        if name in self.level_names:
            return self.level_weights[self.level_names.index(name)]
        raise ValueError(f"unknown attention panel {name!r}: this model has {list(self.panel_names)}")


def check_projector_has_attention(config) -> None:
    """Raise `ValueError` for projectors without cross-attention (per-atom MLPs, text only)."""
    projector_type = config.projector_type
    if projector_type in ATTENTION_PROJECTOR_TYPES:
        return
    if not config.uses_graph:
        reason = "it reads the SMILES text only, with no graph projector"
    else:
        reason = "its graph tokens are per-atom MLP outputs (one token per atom), with no attention to show"
    raise ValueError(
        f"this model has projector_type={projector_type!r}: {reason}. Attention pictures need one of "
        f"{', '.join(ATTENTION_PROJECTOR_TYPES)}."
    )


def level_names(config) -> tuple[str, ...]:
    """Readable names of the projector's attention levels, in the order of `level_attentions`."""
    if config.projector_spec.attention_levels == "last":
        return ("last GNN layer",)
    return ("atom embeddings",) + tuple(f"GNN layer {layer}" for layer in range(1, config.gnn_num_layers + 1))


def available_panels(config) -> tuple[str, ...]:
    """Names of the pictures `draw_atom_attention` can draw for a model with this config (raises `ValueError` for
    projectors without attention)."""
    check_projector_has_attention(config)
    return level_names(config) + ((MOTIF_PANEL,) if config.uses_motifs else ())


def level_atom_weights(level_attentions: torch.Tensor, atoms_per_molecule: Sequence[int]) -> list[np.ndarray]:
    """Mean over the queries of `level_attentions` [molecules, levels, queries, max_atoms], cut to each molecule's
    atoms: one [levels, atoms] array per molecule."""
    mean_over_queries = level_attentions.float().mean(dim=2).cpu().numpy()
    return [weights[:, :num_atoms] for weights, num_atoms in zip(mean_over_queries, atoms_per_molecule)]


def motif_atom_weights(motif_attention: torch.Tensor, motif_atoms: Sequence[Sequence[int]], num_atoms: int) -> np.ndarray:
    """One molecule's motif attention [queries, max_motifs] as atom weights: the mean over queries gives each
    functional group a weight, split evenly among the group's atoms (shares add up where groups overlap)."""
    group_weights = motif_attention.float().mean(dim=0).cpu().numpy()
    weights = np.zeros(num_atoms, dtype=np.float32)
    for group_weight, atoms in zip(group_weights, motif_atoms):
        weights[list(atoms)] += group_weight / len(atoms)
    return weights


@torch.no_grad()
def compute_atom_attentions(model, processor, smiles: Sequence[str]) -> list[AtomAttention]:
    """Run the graph side of `model` on molecules featurized by `processor` and map the projector's attention onto
    each molecule's atoms. Raises `ValueError` for an invalid SMILES (the processor's message) or a projector
    without attention."""
    check_projector_has_attention(model.config)
    smiles = list(smiles)
    inputs = processor(text=[processor.graph_token] * len(smiles), smiles=smiles, padding=True, return_tensors="pt")
    graph_inputs = {name: tensor.to(model.device) for name, tensor in inputs.items() if name.startswith("graph_")}
    outputs = model.get_graph_features(**graph_inputs, output_attentions=True)

    graphs = [featurize_molecule(parse_smiles(text)) for text in smiles]
    names = level_names(model.config)
    per_molecule_levels = level_atom_weights(outputs.level_attentions, [graph.num_atoms for graph in graphs])
    attentions = []
    for index, (text, graph, levels) in enumerate(zip(smiles, graphs, per_molecule_levels)):
        motif_weights = None
        if outputs.motif_attentions is not None:
            motif_weights = motif_atom_weights(outputs.motif_attentions[index], graph.motif_atoms, graph.num_atoms)
        attentions.append(AtomAttention(text, names, levels, motif_weights, graph.motif_atoms))
    return attentions


def compute_atom_attention(model, processor, smiles: str) -> AtomAttention:
    """`compute_atom_attentions` for one molecule."""
    return compute_atom_attentions(model, processor, [smiles])[0]


def attention_scores(weights: np.ndarray, saturation: float = 4.0) -> np.ndarray:
    """Per atom, log(weight / even share) / log(`saturation`) clipped to [-1, 1]: 0 at an even share
    (1 / atoms), 1 at `saturation` x that share or more, -1 at 1 / `saturation` of it or less (and for no weight)."""
    ratios = np.asarray(weights, dtype=np.float64) * len(weights)
    with np.errstate(divide="ignore"):
        scores = np.log(ratios) / math.log(saturation)
    return np.clip(scores, -1.0, 1.0)


def score_color(score: float) -> tuple[float, float, float]:
    """White at 0, blending into red towards 1 and into blue towards -1."""
    target = RED if score > 0 else BLUE
    return tuple(float(white + abs(score) * (end - white)) for white, end in zip(WHITE, target))


def _highlights(mol: Chem.Mol, weights: np.ndarray, saturation: float) -> dict:
    """Atom circles colored by their scores; each bond colored by the mean score of its two atoms."""
    scores = attention_scores(weights, saturation)
    atom_colors = {index: score_color(score) for index, score in enumerate(scores)}
    bond_colors = {
        bond.GetIdx(): score_color((scores[bond.GetBeginAtomIdx()] + scores[bond.GetEndAtomIdx()]) / 2) for bond in mol.GetBonds()
    }
    return {
        "highlightAtoms": list(atom_colors),
        "highlightAtomColors": atom_colors,
        "highlightBonds": list(bond_colors),
        "highlightBondColors": bond_colors,
    }


def _legend(attention: AtomAttention, name: str) -> str:
    weights = attention.panel(name)
    if name == MOTIF_PANEL and not attention.motif_atoms:
        return "motifs: no functional group"
    peak = float(weights.max()) * attention.num_atoms
    return f"{name} (peak {peak:.1f}x even)"


def draw_atom_attention(
    attention: AtomAttention,
    panel: str | None = None,
    panel_size: tuple[int, int] = (360, 300),
    panels_per_row: int = 4,
    saturation: float = 4.0,
) -> bytes:
    """PNG of the molecule with its atoms shaded by attention: one `panel` (a name from `attention.panel_names`), or
    all of them side by side (`panel=None`)."""
    names = list(attention.panel_names) if panel is None else [panel]
    for name in names:
        attention.panel(name)  # raises for an unknown name
    mol = parse_smiles(attention.smiles)
    per_panel = []
    for name in names:
        if name == MOTIF_PANEL and not attention.motif_atoms:
            per_panel.append({"highlightAtoms": [], "highlightAtomColors": {}, "highlightBonds": [], "highlightBondColors": {}})
        else:
            per_panel.append(_highlights(mol, attention.panel(name), saturation))

    width, height = panel_size
    columns = min(panels_per_row, len(names))
    rows = math.ceil(len(names) / columns)
    drawer = rdMolDraw2D.MolDraw2DCairo(width * columns, height * rows, width, height)
    options = drawer.drawOptions()
    options.fillHighlights = True
    options.continuousHighlight = True
    options.legendFontSize = 16
    options.useBWAtomPalette()  # black atom labels: red and blue belong to the attention colors here
    drawer.DrawMolecules(
        [mol] * len(names),
        highlightAtoms=[item["highlightAtoms"] for item in per_panel],
        highlightAtomColors=[item["highlightAtomColors"] for item in per_panel],
        highlightBonds=[item["highlightBonds"] for item in per_panel],
        highlightBondColors=[item["highlightBondColors"] for item in per_panel],
        legends=[_legend(attention, name) for name in names],
    )
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


def attention_png(
    smiles: str, model, processor, panel: str | None = None, path: str | pathlib.Path | None = None, **draw_kwargs
) -> bytes:
    """Molecule + model + processor -> PNG of where the projector looked (also written to `path` when given)."""
    png = draw_atom_attention(compute_atom_attention(model, processor, smiles), panel=panel, **draw_kwargs)
    if path is not None:
        pathlib.Path(path).write_bytes(png)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw where a LLaMo model's graph projector looks in a molecule.")
    parser.add_argument("--model", required=True, help="model folder or Hub id (loaded with trust_remote_code=True)")
    parser.add_argument("--smiles", required=True)
    parser.add_argument("--output", type=pathlib.Path, required=True, help="PNG file to write")
    parser.add_argument("--panel", default=None, help="one panel, e.g. 'GNN layer 2' or 'motifs' (default: all)")
    args = parser.parse_args()

    from llamo.cli import load_model_and_processor

    model, processor = load_model_and_processor(args.model, device="cpu")
    attention_png(args.smiles, model, processor, panel=args.panel, path=args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
