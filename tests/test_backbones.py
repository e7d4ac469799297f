"""Backbone matrix: LLaMo around a tiny random model of each causal-LM family (tests/backbone_families.py).

For every family: build (weights key by key, text-only logits == the LLM's) -> stage 1 -> stage 2 with the default
LoRA targets (both through `train_sft.py --llm`) -> save -> load in a fresh process through remote code ->
text-only logits == the source LLM's; the KV cache changes nothing; a padded batch generates what each prompt
generates alone; LLaMo's forward loss == TRL's fused training loss. One subprocess loads every family's folders.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m pytest tests/test_backbones.py -q
    LLAMO_BACKBONES=gpt2,gemma2 python -m pytest tests/test_backbones.py -q   # a subset while developing
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import pytest
import torch
from backbone_families import FAMILIES, family_tokenizer, save_family_checkpoint
from conftest import run_fresh
from transformers import AutoModelForCausalLM, BertConfig, BertLMHeadModel, T5Config, T5ForConditionalGeneration
from trl.trainer.utils import add_fused_lm_head

import modeling_llamo
from llamo.builder import FidelityError, build_llamo, fidelity_token_batch, lora_target_regex
from llamo.instructions import generate_examples
from llamo.sft import main as train
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import DEFAULT_CHAT_TEMPLATE, LlamoProcessor


SELECTED = [f for f in FAMILIES if not os.environ.get("LLAMO_BACKBONES") or f.name in os.environ["LLAMO_BACKBONES"].split(",")]
BY_NAME = {family.name: family for family in SELECTED}
GRAPH = dict(
    gnn_num_layers=2,
    gnn_hidden_size=16,
    projector_num_heads=2,
    projector_mlp_depth=1,
    num_query_tokens_per_level=2,
    num_motif_query_tokens=2,
)
OVERRIDES = ",".join(f"{key}={value}" for key, value in GRAPH.items())
RUN = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_train_samples", "4", "--learning_rate", "1e-2",
       "--save_strategy", "no", "--max_length", "256", "--config_overrides", OVERRIDES]  # fmt: skip
# Stage-2 LoRA defaults per family (attention projections found by module type; the regex's readable form).
EXPECTED_LORA = {
    "llama2": ["layers.*.self_attn.q_proj", "layers.*.self_attn.v_proj"],
    "phi3": ["layers.*.self_attn.qkv_proj"],
    "falcon": ["h.*.self_attention.query_key_value"],
    "gpt_neox": ["layers.*.attention.query_key_value"],
    "gpt2": ["h.*.attn.c_attn"],
    "opt_350m": ["decoder.layers.*.self_attn.q_proj", "decoder.layers.*.self_attn.v_proj"],
}
MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CCO"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("backbones")
    rows = generate_examples(["CC(=O)Oc1ccccc1C(=O)O", "CCO", "c1ccccc1O", "CC(=O)N"], questions_per_molecule=1, seed=0)
    (folder / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return folder


@functools.cache
def _run_family(name: str, workspace: pathlib.Path) -> dict:
    """Checkpoint folder, stage 1 and stage 2 (default LoRA) of one family; returns the folders and summaries."""
    family = BY_NAME[name]
    llm = save_family_checkpoint(family, workspace / name / "llm")
    data = str(workspace / "data.jsonl")
    stage1 = train(
        ["--stage", "1", "--llm", str(llm), "--datasets", data, "--output_dir", str(workspace / name / "stage1"), *RUN]
    )
    stage2 = train(["--stage", "2", "--init_from", stage1["output_dir"], "--datasets", data,
                    "--output_dir", str(workspace / name / "stage2"), *RUN])  # fmt: skip
    return {"llm": llm, "stage1": pathlib.Path(stage1["output_dir"]), "stage2": pathlib.Path(stage2["output_dir"]),
            "summaries": (stage1, stage2)}  # fmt: skip


@pytest.fixture(scope="module")
def runs(workspace) -> dict[str, dict]:
    return {family.name: _run_family(family.name, workspace) for family in SELECTED}


FRESH_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoProcessor
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, job in jobs.items():
    ids = torch.tensor(job["ids"])
    for stage in ("stage1", "stage2"):
        model = AutoModelForCausalLM.from_pretrained(job[stage], trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(job[stage], trust_remote_code=True)
        messages = [{"role": "user", "content": [{"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
                                                 {"type": "text", "text": "Describe this molecule."}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            results[(name, stage, "text")] = model(input_ids=ids).logits
            results[(name, stage, "molecule")] = model(**inputs).logits
        results[(name, stage, "class")] = type(model).__module__
torch.save(results, out)
"""


def graph_token_id(run: dict) -> int:
    return json.loads((run["stage1"] / "config.json").read_text())["graph_token_id"]


@pytest.fixture(scope="module")
def fresh_logits(runs, workspace) -> dict:
    """Every family's stage-1 and stage-2 folders loaded in ONE new process through remote code (trust_remote_code)."""
    jobs = {}
    for name, run in runs.items():
        vocab = AutoModelForCausalLM.from_pretrained(run["llm"]).get_output_embeddings().out_features
        ids = fidelity_token_batch(vocab, graph_token_id=graph_token_id(run))
        jobs[name] = {"stage1": str(run["stage1"]), "stage2": str(run["stage2"]), "ids": ids.tolist()}
    out = workspace / "fresh.pt"
    code = FRESH_LOAD.replace("sys.argv[1]", repr(json.dumps(jobs))).replace("sys.argv[2]", repr(str(out)))
    run_fresh(code, workspace)
    return torch.load(out)


def molecule_inputs(processor, answers: list[str] | None = None, smiles: list[str] = MOLECULES) -> dict:
    conversations = []
    for index, molecule in enumerate(smiles):
        messages = [
            {"role": "user", "content": [{"type": "molecule", "smiles": molecule}, {"type": "text", "text": "What is it?"}]}
        ]
        if answers is not None:
            messages.append({"role": "assistant", "content": answers[index]})
        conversations.append(messages)
    if answers is None:
        return dict(processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                  return_tensors="pt", processor_kwargs={"padding": True, "padding_side": "left"}))  # fmt: skip
    encoded = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                            processor_kwargs={"padding": True, "padding_side": "right"})  # fmt: skip
    inputs = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
    inputs["input_ids"] = torch.tensor(encoded["input_ids"])
    inputs["attention_mask"] = torch.tensor(encoded["attention_mask"])
    inputs["labels"] = torch.where(torch.tensor(encoded["assistant_masks"], dtype=torch.bool), inputs["input_ids"], -100)
    return inputs


family_names = pytest.mark.parametrize("name", list(BY_NAME))


@family_names
def test_build_keeps_the_llms_weights_head_and_template(name, runs):
    family = BY_NAME[name]
    model, processor = build_llamo(str(runs[name]["llm"]), config_overrides=GRAPH, check_fidelity=True)
    source = AutoModelForCausalLM.from_pretrained(runs[name]["llm"]).eval()
    assert model.lm_head.weight.shape[1] == source.get_output_embeddings().in_features
    assert (model.lm_head.bias is not None) == (source.get_output_embeddings().bias is not None)
    assert model.model.projector.head.mlp[-1].out_features == source.get_input_embeddings().embedding_dim
    uses_llamo = processor.chat_template == DEFAULT_CHAT_TEMPLATE
    assert uses_llamo == (family.expected_template == "llamo")
    assert "generation %}" in processor.chat_template  # assistant turns marked for the assistant-only loss
    if family.expected_template == "llm":
        assert processor.chat_template != DEFAULT_CHAT_TEMPLATE
    _, requested = build_llamo(str(runs[name]["llm"]), config_overrides=GRAPH, chat_template="llamo", check_fidelity=False)
    assert requested.chat_template == DEFAULT_CHAT_TEMPLATE


@family_names
def test_both_stages_train_with_the_default_lora_targets(name, runs):
    stage1, stage2 = runs[name]["summaries"]
    assert stage1["steps"] == 2 and stage2["steps"] == 2
    assert stage1["trainable_parameters"]["graph_encoder"] > 0 and stage1["trainable_parameters"]["language_model"] == 0
    assert stage2["trainable_parameters"]["lora"] > 0
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in stage2["log_history"] if "loss" in entry)
    model = LlamoForConditionalGeneration.from_pretrained(runs[name]["stage1"])
    _, targets = lora_target_regex(model.model.language_model, ["auto"])
    if name in EXPECTED_LORA:
        assert sorted(targets) == sorted(EXPECTED_LORA[name])


@family_names
def test_fresh_process_remote_code_load_equals_the_source_llm(name, runs, fresh_logits):
    source = AutoModelForCausalLM.from_pretrained(runs[name]["llm"]).eval()
    vocab = source.get_output_embeddings().out_features
    ids = fidelity_token_batch(vocab, graph_token_id=graph_token_id(runs[name]))
    assert fresh_logits[(name, "stage1", "class")].startswith("transformers_modules.")  # the saved code, not the repo's
    with torch.no_grad():
        expected = source(input_ids=ids).logits
    # stage 1 leaves the LLM frozen: text-only logits are the source LLM's
    torch.testing.assert_close(fresh_logits[(name, "stage1", "text")][..., :vocab], expected)
    # stage 2 (merged LoRA): the fresh remote-code model equals the repository's classes on the same folder
    stage2 = LlamoForConditionalGeneration.from_pretrained(runs[name]["stage2"]).eval()
    processor = LlamoProcessor.from_pretrained(runs[name]["stage2"])
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
                {"type": "text", "text": "Describe this molecule."},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        torch.testing.assert_close(fresh_logits[(name, "stage2", "text")], stage2(input_ids=ids).logits)
        torch.testing.assert_close(fresh_logits[(name, "stage2", "molecule")], stage2(**inputs).logits)


@family_names
def test_cache_and_batching_change_nothing(name, runs):
    model = LlamoForConditionalGeneration.from_pretrained(runs[name]["stage2"]).eval()
    processor = LlamoProcessor.from_pretrained(runs[name]["stage2"])
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    batch = molecule_inputs(processor)
    cached = model.generate(**batch, use_cache=True, **settings)
    uncached = model.generate(**batch, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    prompt_length = batch["input_ids"].shape[1]
    for index, smiles in enumerate(MOLECULES):
        alone = molecule_inputs(processor, smiles=[smiles])
        single = model.generate(**alone, **settings)
        assert single[0, alone["input_ids"].shape[1] :].tolist() == cached[index, prompt_length:].tolist()


@family_names
def test_forward_loss_equals_trls_fused_training_loss(name, runs):
    model, processor = build_llamo(str(runs[name]["llm"]), config_overrides=GRAPH, check_fidelity=False)
    text_config = model.config.text_config
    if hasattr(text_config, "output_router_logits"):  # what SFTTrainer does for MoE models
        text_config.output_router_logits = True
    inputs = molecule_inputs(processor, answers=["An ester of salicylic acid.", "Ethanol, an alcohol."])
    model.eval()
    with torch.no_grad():
        own = model(**inputs)
        add_fused_lm_head(model)
        fused = model(**inputs, fused_lm_head=True)
    if hasattr(text_config, "output_router_logits"):
        assert own.router_logits is not None and own.aux_loss > 0  # passed through and counted
    torch.testing.assert_close(own.loss, fused.loss, rtol=1e-5, atol=1e-5)


def test_the_fidelity_check_catches_a_dropped_head_transform(runs, monkeypatch):
    """Without LLaMo reproducing Granite's logits_scaling (or Gemma-2's soft-cap) the build must fail, naming it."""
    name = next((n for n in ("granite", "gemma2", "cohere") if n in runs), None)
    if name is None:
        pytest.skip("no family with a head transform selected")
    monkeypatch.setattr(modeling_llamo, "apply_head_semantics", lambda logits, config: logits)
    with pytest.raises(FidelityError, match="text-only logits differ"):
        build_llamo(str(runs[name]["llm"]), config_overrides=GRAPH)


def test_non_causal_language_models_are_refused(tmp_path):
    tokenizer = family_tokenizer(BY_NAME.get("llama2") or FAMILIES[0])
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=len(tokenizer))
    BertLMHeadModel(BertConfig(**small)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="is not a causal LM"):
        build_llamo(str(tmp_path / "bert"))
    T5ForConditionalGeneration(
        T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=len(tokenizer))
    ).save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="not a decoder-only causal LM"):
        build_llamo(str(tmp_path / "t5"))


def test_chat_template_llm_is_refused_when_the_template_cannot_be_marked(runs):
    name = next((n for n in ("llama2", "mistral") if n in runs), None)
    if name is None:
        pytest.skip("no [INST]-template family selected")
    with pytest.raises(ValueError, match="does not mark assistant turns"):
        build_llamo(str(runs[name]["llm"]), config_overrides=GRAPH, chat_template="llm", check_fidelity=False)


def test_moe_generation_works_with_router_logits_on(runs):
    """A trained MoE folder keeps `output_router_logits=True` (SFTTrainer sets it); cached decoding must not try to
    compute the load-balancing loss against the full attention mask (the bare MixtralForCausalLM fails there)."""
    moe = [name for name in ("mixtral", "qwen3_moe") if name in runs]
    if not moe:
        pytest.skip("no MoE family selected")
    for name in moe:
        model = LlamoForConditionalGeneration.from_pretrained(runs[name]["stage2"]).eval()
        assert model.config.text_config.output_router_logits
        processor = LlamoProcessor.from_pretrained(runs[name]["stage2"])
        batch = molecule_inputs(processor)
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_gpt2_conv1d_layers_count_as_linear_for_named_and_all_linear_targets():
    from transformers import GPT2Config, GPT2Model

    language_model = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    _, every = lora_target_regex(language_model, ["all-linear"])
    assert sorted(every) == ["c_attn", "c_fc", "c_proj"]
    regex, named = lora_target_regex(language_model, ["c_attn"])
    assert named == ["c_attn"] and regex == r"^model\.language_model\..*\.(c_attn)$"
    with pytest.raises(ValueError, match=r"are not linear layers of the language model; it has \['c_attn', 'c_fc', 'c_proj'\]"):
        lora_target_regex(language_model, ["q_proj", "v_proj"])
