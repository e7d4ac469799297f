"""llamo.attention: the projector's cross-attention mapped onto atoms, and the pictures drawn from it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import MOLECULES
from PIL import Image

import llamo.attention as attention_llamo
from featurization_llamo import featurize_molecule, parse_smiles
from llamo.attention import (
    MOTIF_PANEL,
    AtomAttention,
    attention_png,
    attention_scores,
    available_panels,
    compute_atom_attention,
    compute_atom_attentions,
    draw_atom_attention,
    motif_atom_weights,
    score_color,
)
from llamo.tiny import build_tiny_llamo


BATCH = [MOLECULES[name] for name in ("aspirin", "methane", "caffeine", "salt", "cisplatin")]


def sharp_tiny_llamo(projector_type: str = "multilevel", seed: int = 1):
    """A tiny model whose projector attention is far from uniform: a random init attends almost evenly, which
    would let a scrambled atom order pass unnoticed."""
    model, processor = build_tiny_llamo(seed=seed, projector_type=projector_type)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.MultiheadAttention):
                module.in_proj_weight.mul_(40)
    return model.eval(), processor


@pytest.fixture(scope="module")
def sharp():
    return sharp_tiny_llamo()


def raw_attentions(model, processor, smiles: list[str]):
    inputs = processor(text=["<graph>"] * len(smiles), smiles=smiles, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.get_graph_features(**{k: v for k, v in inputs.items() if k.startswith("graph_")}, output_attentions=True)


def test_attention_is_far_from_even_in_the_sharpened_model(sharp):
    attention = compute_atom_attention(*sharp, MOLECULES["aspirin"])
    assert attention.level_weights.max() * attention.num_atoms > 3  # some atom gets over 3x an even share


def test_level_weights_have_one_row_per_level_summing_to_one_over_each_molecules_atoms(sharp):
    model, processor = sharp
    attentions = compute_atom_attentions(model, processor, BATCH)
    raw = raw_attentions(model, processor, BATCH)
    for index, (smiles, attention) in enumerate(zip(BATCH, attentions)):
        num_atoms = parse_smiles(smiles).GetNumAtoms()
        assert attention.level_weights.shape == (model.config.num_graph_levels, num_atoms)
        np.testing.assert_allclose(attention.level_weights.sum(axis=1), 1.0, atol=1e-5)
        # the documented aggregation: mean over the level's queries, restricted to this molecule's atoms
        expected = raw.level_attentions[index, :, :, :num_atoms].mean(dim=1).numpy()
        np.testing.assert_allclose(attention.level_weights, expected, rtol=1e-6, atol=1e-7)
        assert torch.all(raw.level_attentions[index, :, :, num_atoms:] == 0)  # nothing lost to padding


def test_motif_weights_split_each_group_over_exactly_its_atoms():
    # 6 atoms, groups {0, 1} and {1, 2, 3} (atom 1 in both), one padding slot; two queries
    motif_attention = torch.tensor([[0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    weights = motif_atom_weights(motif_attention, ((0, 1), (1, 2, 3)), num_atoms=6)
    group = [0.4, 0.6]  # mean over the queries
    np.testing.assert_allclose(weights, [group[0] / 2, group[0] / 2 + group[1] / 3, group[1] / 3, group[1] / 3, 0, 0], rtol=1e-6)
    assert weights.sum() == pytest.approx(1.0)


def test_motif_weights_sum_to_one_on_the_union_of_the_groups_and_zero_without_groups(sharp):
    attentions = compute_atom_attentions(*sharp, BATCH)
    for smiles, attention in zip(BATCH, attentions):
        groups = featurize_molecule(parse_smiles(smiles)).motif_atoms
        assert attention.motif_atoms == groups
        in_a_group = sorted({atom for group in groups for atom in group})
        assert np.flatnonzero(attention.motif_weights).tolist() == in_a_group
        assert attention.motif_weights.sum() == pytest.approx(1.0 if groups else 0.0, abs=1e-5)
    assert not attentions[1].motif_atoms  # methane has no functional group


def test_batched_equals_one_at_a_time(sharp):
    molecules = [MOLECULES["aspirin"], MOLECULES["methane"], MOLECULES["salt"]]
    for smiles, together in zip(molecules, compute_atom_attentions(*sharp, molecules)):
        alone = compute_atom_attention(*sharp, smiles)
        np.testing.assert_allclose(together.level_weights, alone.level_weights, atol=1e-6)
        np.testing.assert_allclose(together.motif_weights, alone.motif_weights, atol=1e-6)


def test_weights_stay_on_their_atoms_when_the_smiles_lists_them_in_another_order(sharp):
    written_first, written_second = "CC(=O)Oc1ccccc1C(=O)O", "OC(=O)c1ccccc1OC(C)=O"  # aspirin twice
    first, second = compute_atom_attentions(*sharp, [written_first, written_second])
    # atom j of the second SMILES is atom match[j] of the first
    match = parse_smiles(written_first).GetSubstructMatch(parse_smiles(written_second))
    assert sorted(match) == list(range(first.num_atoms)) and list(match) != sorted(match)
    np.testing.assert_allclose(second.level_weights, first.level_weights[:, list(match)], atol=1e-5)
    np.testing.assert_allclose(second.motif_weights, first.motif_weights[list(match)], atol=1e-5)


def test_resampler_reports_its_single_attention_as_one_level():
    model, processor = sharp_tiny_llamo("resampler")
    attention = compute_atom_attention(model, processor, MOLECULES["caffeine"])
    assert attention.panel_names == available_panels(model.config) == ("last GNN layer",)
    assert attention.level_weights.shape == (1, 14) and attention.motif_weights is None
    np.testing.assert_allclose(attention.level_weights.sum(), 1.0, atol=1e-5)


def test_multilevel_without_motifs_has_level_panels_only():
    model, processor = sharp_tiny_llamo("multilevel_no_motif")
    attention = compute_atom_attention(model, processor, MOLECULES["aspirin"])
    assert attention.panel_names == ("atom embeddings",) + tuple(f"GNN layer {layer}" for layer in range(1, 6))
    assert attention.motif_weights is None
    with pytest.raises(ValueError, match="unknown attention panel 'motifs'"):
        draw_atom_attention(attention, panel=MOTIF_PANEL)


@pytest.mark.parametrize("projector_type", ["mlp_low", "mlp_high", "mlp_concat", "none"])
def test_projectors_without_attention_say_why(projector_type):
    model, processor = build_tiny_llamo(seed=0, projector_type=projector_type)
    reason = "SMILES text only" if projector_type == "none" else "per-atom MLP outputs"
    with pytest.raises(ValueError, match=f"projector_type='{projector_type}'.*{reason}"):
        compute_atom_attention(model.eval(), processor, MOLECULES["aspirin"])
    with pytest.raises(ValueError, match=reason):
        available_panels(model.config)


def test_invalid_smiles_raises_the_processor_error(sharp):
    with pytest.raises(ValueError, match=r"invalid SMILES 'C1CC\(': RDKit cannot parse it"):
        compute_atom_attention(*sharp, "C1CC(")


def test_scores_are_log_ratios_to_an_even_share_and_colors_run_blue_white_red():
    scores = attention_scores(
        np.array([0.25, 0.5, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0]), saturation=4.0
    )  # even share 1/8: 2x, 4x, 1x, 0x
    np.testing.assert_allclose(scores, [0.5, 1.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0])
    np.testing.assert_allclose(attention_scores(np.array([0.5, 0.25, 0.25]), saturation=4.0)[0], np.log(1.5) / np.log(4))
    assert score_color(0.0) == (1.0, 1.0, 1.0)
    red, blue = score_color(1.0), score_color(-1.0)
    assert red[0] > 0.7 > max(red[1:]) and blue[2] > 0.7 > max(blue[:2])


def strong_pixels(png: bytes) -> tuple[int, int]:
    """Numbers of clearly red and clearly blue pixels."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((red > 150) & (green < 90) & (blue < 90)).sum()), int(((blue > 150) & (red < 90) & (green < 150)).sum())


def test_drawing_colors_follow_the_weights():
    smiles = MOLECULES["aspirin"]
    num_atoms = parse_smiles(smiles).GetNumAtoms()
    even = np.full((1, num_atoms), 1 / num_atoms, dtype=np.float32)
    focused = np.zeros((1, num_atoms), dtype=np.float32)
    focused[0, 3] = 1.0
    draw = lambda weights: draw_atom_attention(AtomAttention(smiles, ("level",), weights, None, ()), panel="level")  # noqa: E731
    assert strong_pixels(draw(even)) == (0, 0)  # an even share everywhere is white
    red, blue = strong_pixels(draw(focused))
    assert red > 100 and blue > 1000  # one atom takes it all, the rest get none


def test_png_holds_one_panel_or_all_of_them_in_a_grid(sharp, tmp_path):
    model, processor = sharp
    path = tmp_path / "aspirin.png"
    png = attention_png(MOLECULES["aspirin"], model, processor, path=path)
    assert png.startswith(b"\x89PNG") and path.read_bytes() == png
    assert Image.open(io.BytesIO(png)).size == (4 * 360, 2 * 300)  # 6 levels + motifs, 4 per row
    one = attention_png(MOLECULES["aspirin"], model, processor, panel="GNN layer 2", panel_size=(200, 150))
    assert Image.open(io.BytesIO(one)).size == (200, 150)
    assert attention_png(MOLECULES["methane"], model, processor, panel=MOTIF_PANEL).startswith(b"\x89PNG")  # one atom, no group


def test_command_line_draws_a_saved_model_loaded_through_the_auto_classes(tiny_folder, tiny, tmp_path, monkeypatch, capsys):
    output = tmp_path / "caffeine.png"
    monkeypatch.setattr(
        "sys.argv", ["llamo-attention", "--model", str(tiny_folder), "--smiles", MOLECULES["caffeine"], "--output", str(output)]
    )
    attention_llamo.main()
    assert capsys.readouterr().out.strip() == f"wrote {output}"
    expected = attention_png(MOLECULES["caffeine"], *tiny)  # the same weights, built in this process
    assert output.read_bytes() == expected
