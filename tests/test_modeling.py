"""LlamoModel / LlamoForConditionalGeneration: shapes, the placeholder merge, losses, gradients, projector variants."""

from __future__ import annotations

import pytest
import torch
from conftest import MOLECULES

from configuration_llamo import PROJECTOR_ATTENTIONS, PROJECTOR_TYPES
from featurization_llamo import parse_smiles
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration, select_graph_molecules


PROMPTS = ["<graph> Describe this molecule.", "Which is larger, <graph> or <graph>?"]
SMILES = [MOLECULES["aspirin"], MOLECULES["methane"], MOLECULES["caffeine"]]


def batch(processor, prompts=PROMPTS, smiles=SMILES, **kwargs):
    return processor(text=prompts, smiles=smiles, padding=True, return_tensors="pt", **kwargs)


def graph_inputs(inputs) -> dict:
    return {key: value for key, value in inputs.items() if key.startswith("graph_")}


def capture_language_model_inputs(model):
    """Record the inputs_embeds the language model receives."""
    captured = {}

    def hook(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    return captured, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_shapes_at_each_stage(tiny):
    model, processor = tiny
    config = model.config
    inputs = batch(processor)
    num_atoms = sum(parse_smiles(s).GetNumAtoms() for s in SMILES)
    with torch.no_grad():
        levels = model.model.graph_encoder(
            inputs["graph_node_features"], inputs["graph_edge_index"], inputs["graph_edge_features"]
        )
        graph = model.get_graph_features(**graph_inputs(inputs))
        out = model(**inputs)
    assert len(levels) == config.gnn_num_layers + 1 == 6
    assert all(level.shape == (num_atoms, config.gnn_hidden_size) for level in levels)
    assert graph.graph_features.shape == (3 * 28, config.text_config.hidden_size)
    assert out.logits.shape == (*inputs["input_ids"].shape, config.text_config.vocab_size)
    assert out.graph_outputs.graph_features.shape == graph.graph_features.shape


def test_graph_vectors_land_exactly_in_the_slot_rows_and_text_rows_are_untouched(tiny):
    model, processor = tiny
    inputs = batch(processor)
    captured, handle = capture_language_model_inputs(model)
    try:
        with torch.no_grad():
            model(**inputs)
            graph_features = model.get_graph_features(**graph_inputs(inputs)).graph_features
            text_embeddings = model.get_input_embeddings()(inputs["input_ids"])
    finally:
        handle.remove()
    merged = captured["inputs_embeds"]
    slots = inputs["input_ids"] == model.config.graph_token_id
    torch.testing.assert_close(merged[slots], graph_features, rtol=0, atol=0)  # molecule by molecule, in slot order
    torch.testing.assert_close(merged[~slots], text_embeddings[~slots], rtol=0, atol=0)
    # molecule k fills the k-th run of 28 slots: the second prompt holds methane then caffeine
    second = merged[1][slots[1]]
    torch.testing.assert_close(second[:28], graph_features[28:56], rtol=0, atol=0)
    torch.testing.assert_close(second[28:], graph_features[56:], rtol=0, atol=0)


def test_slots_and_graph_vectors_that_disagree_raise(tiny):
    model, processor = tiny
    inputs = batch(processor)
    inputs["input_ids"][0, inputs["input_ids"][0].tolist().index(model.config.graph_token_id)] = 5  # drop one slot
    with pytest.raises(
        ValueError, match="Graph features and graph tokens do not match: the input has 83 graph-token slots .* 84 graph vectors"
    ):
        model(**inputs)


def test_labels_at_graph_slots_are_ignored(tiny):
    model, processor = tiny
    inputs = batch(processor)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    slots = inputs["input_ids"] == model.config.graph_token_id
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss
        scrambled = model(**inputs, labels=labels.masked_fill(slots, 7)).loss
        reference = model(**inputs, labels=labels.masked_fill(slots, -100)).loss
    assert loss == scrambled == reference


def test_graph_changes_the_output_and_the_model_is_batch_invariant(tiny):
    model, processor = tiny
    with torch.no_grad():
        alone = model(**batch(processor, ["<graph> Describe."], [MOLECULES["aspirin"]])).logits
        other = model(**batch(processor, ["<graph> Describe."], [MOLECULES["caffeine"]])).logits
        graph_alone = model.get_graph_features(
            **graph_inputs(batch(processor, ["<graph>"], [MOLECULES["caffeine"]]))
        ).graph_features
        graph_batched = model.get_graph_features(**graph_inputs(batch(processor))).graph_features
    assert not torch.allclose(alone[0, -1], other[0, -1])
    torch.testing.assert_close(graph_batched[56:], graph_alone, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_graph_encoder_projector_and_language_model(seeded):
    model, processor = build_tiny_llamo(seed=0)
    model.train()
    inputs = batch(processor)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters()}
    for name in (
        "model.graph_encoder.atom_embedding.embeddings.0.weight",
        "model.graph_encoder.layers.0.bond_embedding.embeddings.0.weight",
        "model.graph_encoder.layers.4.conv.nn.0.weight",
        "model.graph_encoder.layers.0.conv.eps",
        "model.projector.level_queries",
        "model.projector.level_attentions.0.in_proj_weight",
        "model.projector.motif_queries",
        "model.projector.motif_embedding.weight",
        "model.projector.head.mlp.0.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
        assert torch.isfinite(grads[name]).all(), name  # methane (no motif) must not poison the shared attention


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_every_projector_type_runs_forward_and_backward(projector_type):
    model, processor = build_tiny_llamo(seed=0, projector_type=projector_type)
    inputs = batch(processor)
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    slots = (inputs["input_ids"] == model.config.graph_token_id).sum().item()
    num_atoms = inputs.get("graph_node_batch", torch.empty(0)).numel()
    expected_slots = {"multilevel": 3 * 28, "multilevel_no_motif": 3 * 24, "resampler": 3 * 28, "none": 0}.get(
        projector_type, num_atoms
    )
    assert slots == expected_slots
    if projector_type == "none":
        assert model.model.graph_encoder is None and out.graph_outputs is None
    else:
        assert out.graph_outputs.graph_features.shape[0] == expected_slots
        assert model.model.projector.head.mlp[0].weight.grad.abs().sum() > 0
        assert model.model.graph_encoder.atom_embedding.embeddings[0].weight.grad.abs().sum() > 0
        last_layer_used = projector_type != "mlp_low"  # the lowest level is the atom embedding alone
        assert (model.model.graph_encoder.layers[-1].conv.nn[0].weight.grad is not None) == last_layer_used


def test_projector_attention_weights(tiny):
    model, processor = tiny
    inputs = batch(processor)
    with torch.no_grad():
        out = model.get_graph_features(**graph_inputs(inputs), output_attentions=True)
    atoms = inputs["graph_node_batch"].bincount()
    assert out.level_attentions.shape == (3, 6, 4, int(atoms.max()))
    sums = out.level_attentions.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))  # each query's weights over its molecule's atoms
    assert (out.level_attentions[1, :, :, 1:] == 0).all()  # methane has one atom: padding gets no weight
    motifs = inputs["graph_motif_batch"].bincount(minlength=3)
    assert out.motif_attentions.shape == (3, 4, int(motifs.max()))
    torch.testing.assert_close(out.motif_attentions[0].sum(-1), torch.ones(4))
    assert (out.motif_attentions[1] == 0).all()  # methane has no motif


def test_a_molecule_without_motifs_gets_the_learned_motif_queries(tiny):
    model, processor = tiny
    projector = model.model.projector
    inputs = batch(processor, ["<graph>"], [MOLECULES["methane"]])
    assert inputs["graph_motif_features"].shape[0] == 0
    captured = {}
    handle = projector.head.register_forward_pre_hook(lambda module, args: captured.setdefault("tokens", args[0]))
    with torch.no_grad():
        model.get_graph_features(**graph_inputs(inputs))
    handle.remove()
    torch.testing.assert_close(captured["tokens"][0, :4], projector.motif_queries)  # motif tokens come first


def test_token_order_and_attention_sharing_are_configurable():
    first, _ = build_tiny_llamo(seed=0)
    last, processor = build_tiny_llamo(seed=0, motif_tokens_first=False)
    last.load_state_dict(first.state_dict())
    inputs = graph_inputs(batch(processor, ["<graph>"], [MOLECULES["aspirin"]]))
    with torch.no_grad():
        tokens_first = first.eval().get_graph_features(**inputs).graph_features
        tokens_last = last.eval().get_graph_features(**inputs).graph_features
    torch.testing.assert_close(tokens_first[:4], tokens_last[24:])
    torch.testing.assert_close(tokens_first[4:], tokens_last[:24])

    per_level, _ = build_tiny_llamo(seed=0, share_level_cross_attention=False)
    assert len(per_level.model.projector.level_attentions) == 6 and len(first.model.projector.level_attentions) == 1


def test_select_graph_molecules_equals_featurizing_the_selection(tiny):
    processor = tiny[1]
    full = graph_inputs(batch(processor))
    picked = select_graph_molecules(full, torch.tensor([2, 0, 2]))
    expected = graph_inputs(batch(processor, ["<graph>"] * 3, [SMILES[2], SMILES[0], SMILES[2]]))
    assert picked.keys() == expected.keys()
    for key in expected:
        assert torch.equal(picked[key], expected[key]), key


def test_frozen_graph_encoder_stays_in_eval_mode():
    model, processor = build_tiny_llamo(seed=0)
    model.model.graph_encoder.requires_grad_(False)
    model.train()
    assert not model.model.graph_encoder.training and model.model.projector.training
    running_mean = model.model.graph_encoder.layers[0].batch_norm.module.running_mean.clone()
    model(**batch(processor))
    assert torch.equal(running_mean, model.model.graph_encoder.layers[0].batch_norm.module.running_mean)


def test_a_single_atom_batch_trains(seeded):
    model, processor = build_tiny_llamo(seed=0)
    inputs = batch(processor, ["<graph> water"], ["O"])
    model.train()(**inputs, labels=inputs["input_ids"]).loss.backward()


def test_initialization_of_the_custom_parameters():
    model, _ = build_tiny_llamo(seed=0, gnn_hidden_size=64)
    projector, encoder = model.model.projector, model.model.graph_encoder
    assert 0.8 < projector.level_queries.std() < 1.2  # torch.randn-like queries, as the original
    assert 0.8 < projector.motif_queries.std() < 1.2
    assert abs(projector.head.mlp[0].weight.std().item() - model.config.initializer_range) < 0.005
    assert (encoder.layers[0].conv.eps == 0).all()
    assert (projector.head.layer_norm.weight == 1).all()
    assert (encoder.layers[0].batch_norm.module.running_var == 1).all()


def test_missing_weights_are_initialized_when_loading(tmp_path):
    model, _ = build_tiny_llamo(seed=0)
    state = {k: v for k, v in model.state_dict().items() if "projector" not in k}
    model.save_pretrained(tmp_path, state_dict=state)
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path)
    assert 0.5 < loaded.model.projector.level_queries.std() < 1.5
    assert torch.isfinite(loaded.model.projector.head.mlp[0].weight).all()
    torch.testing.assert_close(
        loaded.model.graph_encoder.layers[0].conv.nn[0].weight, model.model.graph_encoder.layers[0].conv.nn[0].weight
    )


def test_sdpa_is_the_default_attention_and_gradient_checkpointing_gives_the_same_loss():
    model, processor = build_tiny_llamo(seed=0)
    assert model.config.text_config._attn_implementation == "sdpa"
    inputs = batch(processor)
    model.train()
    model.model.graph_encoder.eval()  # same BatchNorm statistics in both passes
    plain = model(**inputs, labels=inputs["input_ids"]).loss
    # transformers >= 5.2x calls it activation checkpointing; the old name still works but warns
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    assert model.model.language_model.gradient_checkpointing
    checkpointed = model(**inputs, labels=inputs["input_ids"])
    checkpointed.loss.backward()
    torch.testing.assert_close(plain, checkpointed.loss)
    assert model.model.projector.level_queries.grad is not None


def test_bfloat16_keeps_the_graph_encoder_and_layer_norm_in_float32(tiny_folder, tiny):
    model = LlamoForConditionalGeneration.from_pretrained(tiny_folder, dtype=torch.bfloat16).eval()
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.projector.level_queries.dtype == torch.bfloat16
    assert model.model.graph_encoder.layers[0].conv.nn[0].weight.dtype == torch.float32
    assert model.model.projector.head.layer_norm.weight.dtype == torch.float32
    inputs = batch(tiny[1])
    with torch.no_grad():
        logits = model(**inputs).logits
        reference = tiny[0](**inputs).logits
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    assert (logits.float() - reference).abs().max() < 0.25


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
@pytest.mark.parametrize("attention", PROJECTOR_ATTENTIONS)
def test_every_projector_loads_in_bfloat16_and_answers(tmp_path, projector_type, attention):
    """LLaMo-SmolLM2's projector (multilevel, normed attention) once failed in a bf16 load: the fp32 GIN's states
    met bf16 LayerNorm parameters."""
    model, processor = build_tiny_llamo(seed=0, projector_type=projector_type, projector_attention=attention)
    model.save_pretrained(tmp_path)
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    inputs = batch(processor)
    with torch.no_grad():
        logits = loaded(**inputs).logits
        reference = model.eval()(**inputs).logits
        loaded.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert (logits.float() - reference).abs().max() < 0.25


def test_trl_fused_lm_head_gives_the_models_own_loss(seeded):
    from trl.trainer.utils import add_fused_lm_head

    model, processor = build_tiny_llamo(seed=0)
    model.eval()
    inputs = batch(processor)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels = labels.masked_fill(inputs["input_ids"] == model.config.graph_token_id, -100)
    with torch.no_grad():
        reference = model(**inputs, labels=labels).loss
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    fused = model(**inputs, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(fused.loss, reference, rtol=1e-5, atol=1e-5)
    fused.loss.backward()
    assert model.model.projector.level_queries.grad.abs().sum() > 0
