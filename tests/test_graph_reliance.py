"""Graph reliance (llamo.evaluation), the non-collapsing projector option and the size token, and the train_sft.py
flags `--train_graph_encoder` / `--no_smiles_in_prompt`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from configuration_llamo import LlamoConfig
from llamo.collator import LlamoDataCollator
from llamo.data import encode_conversation
from llamo.evaluation import Example, donor_molecules, graph_reliance, replace_graph_tokens, score
from llamo.sft import main as train
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor


QUESTION = "How many heavy atoms does this molecule have?"
# distinct heavy-atom counts 1..8, so the answer is a function of the graph
MOLECULES = ["C", "CC", "CCC", "CCCC", "CCCCC", "CCCCCC", "CCCCCCC", "CCCCCCCC"]
# eight molecules of six heavy atoms: a per-atom projector's slot count does not tell them apart
ISOMERS = ["CCCCCC", "CC(C)CCC", "CCC(C)CC", "CC(C)(C)CC", "CC(C)C(C)C", "C1CCCCC1", "c1ccccc1", "CCCCCO"]


def counting_examples(molecules=MOLECULES) -> list[Example]:
    return [
        Example(i, "count", [smiles], [{"role": "user", "content": QUESTION}], str(len(smiles)))
        for i, smiles in enumerate(molecules)
    ]


def test_donors_are_other_molecules_and_questions_about_one_molecule_never_swap_with_each_other():
    assert donor_molecules(["a", "b", "c"]) == [1, 2, 0]
    assert donor_molecules(["a", "a", "b"]) == [2, 2, 0]  # both questions about `a` get b's graph
    assert donor_molecules(["a"]) == [0]  # nothing to swap with
    assert donor_molecules(["a", "a"]) == [0, 1]


def test_replacing_graph_tokens_fixed_count():
    tokens = torch.arange(12.0).view(6, 2)  # 3 molecules x 2 slots
    slots = torch.tensor([2, 2, 2])
    assert torch.equal(replace_graph_tokens(tokens, slots, "true"), tokens)
    mean = replace_graph_tokens(tokens, slots, "mean")
    assert torch.equal(mean, torch.tensor([[4.0, 5.0], [6.0, 7.0]]).repeat(3, 1))  # slot by slot
    shuffled = replace_graph_tokens(tokens, slots, "shuffled", donors=[1, 2, 0])
    assert torch.equal(shuffled, torch.cat([tokens[2:4], tokens[4:6], tokens[0:2]]))


def test_replacing_graph_tokens_one_per_atom_cycles_or_cuts_the_donor():
    tokens = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])  # molecules of 2 and 3 atoms
    slots = torch.tensor([2, 3])
    shuffled = replace_graph_tokens(tokens, slots, "shuffled", donors=[1, 0])
    assert shuffled.squeeze(-1).tolist() == [3.0, 4.0, 1.0, 2.0, 1.0]
    assert replace_graph_tokens(tokens, slots, "mean").squeeze(-1).tolist() == [3.0] * 5
    with pytest.raises(ValueError, match="unknown graph condition"):
        replace_graph_tokens(tokens, slots, "zero")


def test_a_model_that_ignores_its_graph_has_zero_reliance():
    model, processor = build_tiny_llamo(seed=0, projector_type="multilevel")
    last = model.model.projector.head.mlp[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)  # every molecule gives the same (zero) graph tokens
    results = graph_reliance(model, processor, counting_examples(), batch_size=4)["count"]
    assert results["answer_nll"] > 0
    assert abs(results["graph_reliance_shuffled"]) < 1e-6
    assert abs(results["graph_reliance_mean"]) < 1e-6


def test_a_text_only_model_gets_the_answer_nll_without_reliance():
    model, processor = build_tiny_llamo(seed=0, projector_type="none")
    results = graph_reliance(model, processor, counting_examples(), batch_size=4)["count"]
    assert set(results) == {"answer_nll"}


def test_a_model_that_reads_the_answer_off_the_graph_has_positive_reliance():
    """Taught which of 8 same-size isomers it sees, with no SMILES in the prompt, the graph is its only source."""
    torch.manual_seed(0)
    model, processor = build_tiny_llamo(seed=0, projector_type="mlp_high")
    processor.smiles_in_prompt = False
    examples = [
        Example(i, "which", [smiles], [{"role": "user", "content": "Which one is it?"}], str(i + 1))
        for i, smiles in enumerate(ISOMERS)
    ]
    before = graph_reliance(model, processor, examples, batch_size=8)["which"]
    rows = [
        encode_conversation(e.smiles, [*e.messages, {"role": "assistant", "content": e.reference}], processor, None)
        for e in examples
    ]
    batch = LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id)(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    after = graph_reliance(model, processor, examples, batch_size=8)["which"]
    assert after["answer_nll"] < before["answer_nll"] - 1.0
    assert after["graph_reliance_shuffled"] > 0.1  # 0.34 nats when written
    assert after["graph_reliance_mean"] > 0.05  # 0.17


def test_property_scores_count_distinct_answers():
    examples = [Example(i, "property", ["C"], [{"role": "user", "content": "q"}], "0.1") for i in range(4)]
    results = score(examples, ["0.2", "0.2", "0.2", "0.3"])["property"]
    assert results["distinct_answer_share"] == 0.5


# ---------------------------------------------------------------------------------------------------------------
# Projector options


def graph_batch(processor, molecules):
    rows = [
        encode_conversation([s], [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], processor, None)
        for s in molecules
    ]
    batch = LlamoDataCollator(pad_token_id=0)(rows)
    return {key: value for key, value in batch.items() if key.startswith("graph_")}


def test_released_projector_attention_stays_the_default_with_no_new_weights():
    config = LlamoConfig()
    assert config.projector_attention == "released" and config.graph_size_token is False
    model, _ = build_tiny_llamo(seed=0)
    names = {name for name, _ in model.named_parameters()}
    assert not any("level_norms" in name or "query_log_scale" in name or "size_head" in name for name in names)


def test_normed_attention_is_less_uniform_than_the_released_one_on_the_same_weights():
    molecules = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "OCC(O)CO", "c1ccncc1"]
    released, processor = build_tiny_llamo(seed=0, projector_type="multilevel_no_motif")
    normed, _ = build_tiny_llamo(seed=0, projector_type="multilevel_no_motif", projector_attention="normed")
    missing, unexpected = normed.load_state_dict(released.state_dict(), strict=False)
    assert unexpected == [] and all("level_norms" in key or "query_log_scale" in key for key in missing)
    graph = graph_batch(processor, molecules)

    def entropy_ratio(model) -> float:
        with torch.no_grad():
            weights = model.train().get_graph_features(**graph, output_attentions=True).level_attentions  # [B, L, Q, N]
        atoms = torch.bincount(graph["graph_node_batch"]).float()
        entropy = -(weights.clamp_min(1e-12).log() * weights).sum(-1)
        return float((entropy / atoms.log()[:, None, None]).mean())

    assert entropy_ratio(released) > 0.99  # the collapse: uniform attention, every query returns the mean
    assert entropy_ratio(normed) < entropy_ratio(released) - 0.02


def test_size_token_adds_one_slot_whose_norm_grows_with_the_molecule():
    model, processor = build_tiny_llamo(seed=0, projector_type="multilevel", graph_size_token=True)
    assert model.config.num_graph_tokens == 29 and processor.num_graph_tokens == 29
    graph = graph_batch(processor, ["CCO", "CCCCCCCCCCCCO"])
    tokens = model.eval().get_graph_features(**graph).graph_features.view(2, 29, -1)
    size_head = model.model.projector.size_head
    norms = (tokens[:, -1] - size_head.bias).norm(dim=-1)  # the bias is shared; the rest scales with the atom sum
    assert norms[1] > 2 * norms[0]
    inputs = processor(text="<graph> What is it?", smiles="CCO", return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.graph_token_id).sum()) == 29
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"projector_attention": "sharp"}, "projector_attention"),
        ({"projector_type": "mlp_high", "graph_size_token": True}, "graph_size_token"),
    ],
)
def test_projector_options_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        LlamoConfig(**overrides)


# ---------------------------------------------------------------------------------------------------------------
# train_sft.py flags


@pytest.fixture(scope="module")
def counting_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "count.jsonl"
    rows = [
        {"smiles": s, "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": str(len(s))}]}
        for s in MOLECULES
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows * 3))
    return str(path)


FAST = ["--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_steps", "2", "--save_strategy", "no"]


def test_stage2_can_train_the_graph_encoder_and_hide_the_smiles(tmp_path, counting_file):
    summary = train(["--stage", "2", "--projector_type", "mlp_high", "--datasets", counting_file, "--output_dir", str(tmp_path),
                     "--train_graph_encoder", "--no_smiles_in_prompt", *FAST])  # fmt: skip
    assert summary["trainable_parameters"]["graph_encoder"] > 0
    initial = build_tiny_llamo(seed=0, projector_type="mlp_high")[0].state_dict()
    trained = LlamoForConditionalGeneration.from_pretrained(tmp_path).state_dict()
    gin = [k for k in initial if k.startswith("model.graph_encoder.") and k.endswith("weight")]
    assert gin and all(not torch.equal(initial[k], trained[k]) for k in gin)
    processor = LlamoProcessor.from_pretrained(tmp_path)
    assert processor.smiles_in_prompt is False
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "q"}]}],
        add_generation_prompt=True,
    )
    assert "CCO" not in prompt


def test_stage2_freezes_the_graph_encoder_by_default(tmp_path, counting_file):
    summary = train(
        ["--stage", "2", "--projector_type", "mlp_high", "--datasets", counting_file, "--output_dir", str(tmp_path), *FAST]
    )
    assert summary["trainable_parameters"]["graph_encoder"] == 0


def test_no_smiles_in_prompt_needs_a_graph(tmp_path, counting_file):
    with pytest.raises(ValueError, match="no_smiles_in_prompt"):
        train(["--stage", "2", "--projector_type", "none", "--datasets", counting_file, "--output_dir", str(tmp_path),
               "--no_smiles_in_prompt", *FAST])  # fmt: skip
