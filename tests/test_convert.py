"""Converter from the original LLaMo checkpoint (mlvlab/LLaMo's Lightning `.ckpt`) to a `from_pretrained` folder.

The real checkpoint (several GB) is not reachable here, so the tests build a tiny one in the original's exact key
layout and conventions (docs: llamo-original.md sections 1-3 and 6) and check the converted model against the
original's forward, re-written below from that description in plain torch (GIN, projector) and transformers'
LlamaForCausalLM (LLM with LoRA merged by hand), with the graph tokens spliced into the embeddings the way the
original does it (negative placeholder ids, then embeddings rebuilt around the run).
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap

import pytest
import torch
from conftest import MOLECULES
from ogb.utils import smiles2graph
from rdkit import Chem
from safetensors import safe_open
from test_remote_code import CONTRACT, run_fresh
from tokenizers import Tokenizer
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from featurization_llamo import functional_groups, motif_descriptors
from llamo.convert import CheckpointConversionError, convert_llamo_checkpoint, load_original_checkpoint, main
from llamo.tiny import TOKENIZER_DIR
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import DEFAULT_CHAT_TEMPLATE, LlamoProcessor


SYSTEM_MESSAGE = "The following is a conversation between a curious human and AI assistant."  # the original's
GNN, PROJ, PEFT_LLM, PLAIN_LLM = (
    "mllm.graph_model.molecule_node_model.",
    "mllm.abstractor.",
    "mllm.language_model.base_model.model.",
    "mllm.language_model.",
)
GNN_HIDDEN, GNN_LAYERS, QUERIES_PER_LEVEL, MOTIF_QUERIES, HEADS, MLP_DEPTH = 16, 2, 2, 3, 4, 3
LORA_RANK, LORA_ALPHA = 4, 32
ATOM_VOCAB, BOND_VOCAB = (119, 5, 12, 12, 10, 6, 6, 2, 2), (5, 6, 2)
NUM_GRAPH_TOKENS = QUERIES_PER_LEVEL * (GNN_LAYERS + 1) + MOTIF_QUERIES


# ---------------------------------------------------------------------------------------------------------------
# A base-LLM folder like Llama-2-7b-chat-hf (no pad token, unk/bos/eos = 0/1/2, its own chat template) and a tiny
# checkpoint in the original's layout.


def save_base_model_folder(folder) -> LlamaConfig:
    """The repo's tiny BPE re-numbered Llama-style, without <pad> and <graph>, plus a tiny LlamaConfig."""
    spec = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    specials, dropped = ["<unk>", "<s>", "</s>"], {"<pad>", "<graph>"}
    by_id = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    ordered = specials + [token for token in by_id if token not in dropped and token not in specials]
    spec["model"]["vocab"] = {token: index for index, token in enumerate(ordered)}
    spec["added_tokens"] = [
        {**entry, "id": ordered.index(entry["content"])} for entry in spec["added_tokens"] if entry["content"] not in dropped
    ]
    spec["post_processor"]["special_tokens"]["<s>"]["ids"] = [1]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # Llama-2-chat ships its own
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config.save_pretrained(folder)
    return config


def random_tensor(*shape, scale=None, generator) -> torch.Tensor:
    scale = scale if scale is not None else 1 / math.sqrt(shape[-1])
    return torch.randn(*shape, generator=generator) * scale


def original_graph_state_dict(generator, shared_attention=True) -> dict[str, torch.Tensor]:
    """GNN (GNN_graphpred.molecule_node_model), unused ln_graph_model and projector (abstractor), original names."""
    H = GNN_HIDDEN
    sd = {
        f"{GNN}atom_encoder.atom_embedding_list.{i}.weight": random_tensor(n, H, scale=1.0, generator=generator)
        for i, n in enumerate(ATOM_VOCAB)
    }
    for k in range(GNN_LAYERS):
        sd[f"{GNN}gnns.{k}.eps"] = random_tensor(1, scale=0.1, generator=generator)
        sd[f"{GNN}gnns.{k}.mlp.0.weight"], sd[f"{GNN}gnns.{k}.mlp.0.bias"] = (
            random_tensor(2 * H, H, generator=generator),
            random_tensor(2 * H, scale=0.1, generator=generator),
        )
        sd[f"{GNN}gnns.{k}.mlp.3.weight"], sd[f"{GNN}gnns.{k}.mlp.3.bias"] = (
            random_tensor(H, 2 * H, generator=generator),
            random_tensor(H, scale=0.1, generator=generator),
        )
        for j, n in enumerate(BOND_VOCAB):
            sd[f"{GNN}gnns.{k}.bond_encoder.bond_embedding_list.{j}.weight"] = random_tensor(n, H, scale=1.0, generator=generator)
        for name, width in ((f"gnns.{k}.mlp.1", 2 * H), (f"batch_norms.{k}", H)):  # BatchNorm1d with trained statistics
            sd[f"{GNN}{name}.weight"] = 1 + random_tensor(width, scale=0.1, generator=generator)
            sd[f"{GNN}{name}.bias"] = random_tensor(width, scale=0.1, generator=generator)
            sd[f"{GNN}{name}.running_mean"] = random_tensor(width, scale=1.0, generator=generator)
            sd[f"{GNN}{name}.running_var"] = 1 + torch.rand(width, generator=generator) * 4
            sd[f"{GNN}{name}.num_batches_tracked"] = torch.tensor(1234)
    sd["mllm.ln_graph_model.weight"], sd["mllm.ln_graph_model.bias"] = torch.ones(H), torch.zeros(H)

    def attention(prefix):
        return {
            f"{prefix}.in_proj_weight": random_tensor(3 * H, H, generator=generator),
            f"{prefix}.in_proj_bias": random_tensor(3 * H, scale=0.1, generator=generator),
            f"{prefix}.out_proj.weight": random_tensor(H, H, generator=generator),
            f"{prefix}.out_proj.bias": random_tensor(H, scale=0.1, generator=generator),
        }

    sd[f"{PROJ}query_tokens"] = random_tensor(GNN_LAYERS + 1, QUERIES_PER_LEVEL, H, scale=1.0, generator=generator)
    shared = attention(f"{PROJ}cross_attention.0")
    for level in range(GNN_LAYERS + 1):  # ModuleList([mha] * levels): the state dict repeats the same tensors
        own = shared if shared_attention else attention(f"{PROJ}cross_attention.{level}")
        sd.update({key.replace("cross_attention.0.", f"cross_attention.{level}."): value for key, value in own.items()})
    sd[f"{PROJ}motif_weight.weight"] = random_tensor(H, 73, scale=0.5, generator=generator)
    sd[f"{PROJ}motif_query_tokens"] = random_tensor(MOTIF_QUERIES, H, scale=1.0, generator=generator)
    sd.update(attention(f"{PROJ}motif_cross_attention"))
    sd[f"{PROJ}layer_norm.weight"], sd[f"{PROJ}layer_norm.bias"] = (
        1 + random_tensor(H, scale=0.1, generator=generator),
        random_tensor(H, scale=0.1, generator=generator),
    )
    width = H
    for depth in range(MLP_DEPTH):  # build_mlp: Linear, then [SiLU, Linear] * (depth - 1)
        sd[f"{PROJ}net.{2 * depth}.weight"] = random_tensor(32, width, generator=generator)
        sd[f"{PROJ}net.{2 * depth}.bias"] = random_tensor(32, scale=0.1, generator=generator)
        width = 32
    return sd


def original_llm_state_dict(base_config: LlamaConfig, generator, stage: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Llama with the original's extra <pad> row, stage-1-trained embeddings; in stage 2 PEFT 0.9 LoRA on q/v."""
    config = LlamaConfig(**{**base_config.to_dict(), "vocab_size": base_config.vocab_size + 1})
    names = LlamaForCausalLM(config).state_dict()
    sd = {}
    for name, tensor in names.items():
        scale = 0.1 if name.endswith("norm.weight") else (1.0 if "embed_tokens" in name else None)
        value = random_tensor(*tensor.shape, scale=scale, generator=generator)
        value = 1 + value if name.endswith("norm.weight") else value
        module, _, param = name.rpartition(".")
        if stage == 2 and module.endswith(("q_proj", "v_proj")):
            sd[f"{PEFT_LLM}{module}.base_layer.{param}"] = value.to(dtype)
            sd[f"{PEFT_LLM}{module}.lora_A.default.weight"] = random_tensor(LORA_RANK, tensor.shape[1], generator=generator).to(
                dtype
            )
            sd[f"{PEFT_LLM}{module}.lora_B.default.weight"] = random_tensor(
                tensor.shape[0], LORA_RANK, scale=0.05, generator=generator
            ).to(dtype)
        else:
            sd[(PEFT_LLM if stage == 2 else PLAIN_LLM) + name] = value.to(dtype)
    return sd


def original_checkpoint(base_config, stage=2, dtype=torch.float32, shared_attention=True, seed=0) -> dict:
    """A Lightning checkpoint dict as `trainer.save_checkpoint` writes it for the original LLaMoStage."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {
        **original_graph_state_dict(generator, shared_attention),
        **original_llm_state_dict(base_config, generator, stage, dtype),
    }
    return {
        "epoch": 2,
        "global_step": 1500,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 2}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "dirpath": "all_checkpoints/stage2"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-5, "weight_decay": 0.05, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "hparams_name": "args",
        "hyper_parameters": {
            "llm_tune": "lora" if stage == 2 else "freeze",
            "tune_gnn": stage == 1,
            "num_query_tokens": NUM_GRAPH_TOKENS,
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# The original's forward, from the raw state dict.


def reference_attention(sd, prefix, query, keys) -> torch.Tensor:
    """nn.MultiheadAttention (packed in_proj, HEADS heads) of `query` [Q, H] over one molecule's `keys` [N, H]."""
    q, k, v = (
        F.linear(x, w, b).unflatten(-1, (HEADS, -1)).transpose(0, 1)
        for x, w, b in zip((query, keys, keys), sd[f"{prefix}.in_proj_weight"].chunk(3), sd[f"{prefix}.in_proj_bias"].chunk(3))
    )
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return F.linear((weights @ v).transpose(0, 1).flatten(1), sd[f"{prefix}.out_proj.weight"], sd[f"{prefix}.out_proj.bias"])


def reference_gin_levels(sd, smiles: str) -> list[torch.Tensor]:
    """MoleculeSTM GIN on ogb's smiles2graph: the atom embeddings and each layer's output."""
    graph = smiles2graph(smiles)
    x, edge_index, edge_attr = (torch.from_numpy(graph[key]).long() for key in ("node_feat", "edge_index", "edge_feat"))

    def batch_norm(h, name):
        return F.batch_norm(
            h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5
        )

    h = sum(sd[f"{GNN}atom_encoder.atom_embedding_list.{i}.weight"][x[:, i]] for i in range(9))
    levels = [h]
    for k in range(GNN_LAYERS):
        bond = sum(sd[f"{GNN}gnns.{k}.bond_encoder.bond_embedding_list.{j}.weight"][edge_attr[:, j]] for j in range(3))
        messages = torch.relu(h[edge_index[0]] + bond)
        aggregated = torch.zeros_like(h).index_add_(0, edge_index[1], messages)
        z = (1 + sd[f"{GNN}gnns.{k}.eps"]) * h + aggregated
        z = F.linear(z, sd[f"{GNN}gnns.{k}.mlp.0.weight"], sd[f"{GNN}gnns.{k}.mlp.0.bias"])
        z = torch.relu(batch_norm(z, f"{GNN}gnns.{k}.mlp.1"))
        z = F.linear(z, sd[f"{GNN}gnns.{k}.mlp.3.weight"], sd[f"{GNN}gnns.{k}.mlp.3.bias"])
        h = batch_norm(z, f"{GNN}batch_norms.{k}")
        h = torch.relu(h) if k < GNN_LAYERS - 1 else h
        levels.append(h)
    return levels


def reference_graph_tokens(sd, smiles: str, motif_first: bool = True) -> torch.Tensor:
    """MLPMultilevelProjector for one molecule: [motif tokens, level 0 .. level L tokens] -> LayerNorm -> MLP."""
    levels = reference_gin_levels(sd, smiles)
    level_tokens = [
        reference_attention(sd, f"{PROJ}cross_attention.{i}", sd[f"{PROJ}query_tokens"][i], level)
        for i, level in enumerate(levels)
    ]
    canonical = Chem.MolFromSmiles(Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False, canonical=True))
    groups = functional_groups(canonical)
    if groups:
        motifs = torch.from_numpy(motif_descriptors(canonical, groups)).float() @ sd[f"{PROJ}motif_weight.weight"].T
        motif_tokens = reference_attention(sd, f"{PROJ}motif_cross_attention", sd[f"{PROJ}motif_query_tokens"], motifs)
    else:  # no functional group: the raw motif queries
        motif_tokens = sd[f"{PROJ}motif_query_tokens"]
    tokens = torch.cat([motif_tokens, *level_tokens] if motif_first else [*level_tokens, motif_tokens])
    x = F.layer_norm(tokens, (GNN_HIDDEN,), sd[f"{PROJ}layer_norm.weight"], sd[f"{PROJ}layer_norm.bias"], eps=1e-5)
    for depth in range(MLP_DEPTH):
        x = F.silu(x) if depth else x
        x = F.linear(x, sd[f"{PROJ}net.{2 * depth}.weight"], sd[f"{PROJ}net.{2 * depth}.bias"])
    return x


def reference_llm(sd, base_config: LlamaConfig, lora: str = "merge") -> LlamaForCausalLM:
    """LlamaForCausalLM with the checkpoint's weights, LoRA merged by hand (W + alpha/r B A), fp32."""
    prefix = PEFT_LLM if any(key.startswith(PEFT_LLM) for key in sd) else PLAIN_LLM
    weights = {}
    for key, value in sd.items():
        if key.startswith(prefix) and ".lora_" not in key:
            weights[key[len(prefix) :].replace(".base_layer.", ".")] = value.float()
    if lora == "merge":
        for key in [k for k in sd if k.endswith("lora_A.default.weight")]:
            module = key[len(prefix) : -len(".lora_A.default.weight")]
            lora_b = sd[key.replace("lora_A", "lora_B")].float()
            weights[f"{module}.weight"] = weights[f"{module}.weight"] + LORA_ALPHA / LORA_RANK * lora_b @ sd[key].float()
    config = LlamaConfig(
        **{**base_config.to_dict(), "vocab_size": base_config.vocab_size + 1, "pad_token_id": base_config.vocab_size}
    )
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(weights, strict=True)
    return model


def original_prompt_ids(tokenizer, smiles: str, instruction: str) -> list[int]:
    """The original's evaluation prompt: BOS, then each piece of the user string split at <graph>, stripped and
    tokenized on its own; the graph becomes NUM_GRAPH_TOKENS x -1."""
    shown = Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False, canonical=True)[:128]
    user = f"{shown}<graph> {instruction}"
    first_turn = f"[INST] <<SYS>>\n{SYSTEM_MESSAGE}\n<</SYS>>\n\n{user} [/INST]"
    ids = [tokenizer.bos_token_id]
    for index, piece in enumerate(first_turn.split("<graph>")):
        if index:
            ids += [-1] * NUM_GRAPH_TOKENS
        ids += tokenizer(piece.strip(), add_special_tokens=False)["input_ids"]
    return ids


def reference_forward(sd, base_config, tokenizer, samples, lora="merge", motif_first=True):
    """Left-padded batch as the original's eval collate, graph tokens spliced at the -1 runs: ids (-1 at the
    slots), attention mask, logits, and (the reference LLM, its inputs_embeds) for generation."""
    prompts = [original_prompt_ids(tokenizer, smiles, instruction) for smiles, instruction in samples]
    length = max(map(len, prompts))
    pad = base_config.vocab_size  # the original's <pad>
    ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    model = reference_llm(sd, base_config, lora)
    embeds = model.get_input_embeddings()(ids.clamp(min=0))
    for row, (smiles, _) in enumerate(samples):
        start = int((ids[row] == -1).nonzero()[0])
        embeds[row, start : start + NUM_GRAPH_TOKENS] = reference_graph_tokens(sd, smiles, motif_first)
    with torch.no_grad():
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    return ids, mask, logits, (model, embeds)


def conversation(smiles: str, instruction: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "molecule", "smiles": smiles}, {"type": "text", "text": instruction}]}]


def llamo_inputs(processor, samples):
    return processor.apply_chat_template(
        [conversation(*sample) for sample in samples], add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs={"padding": True, "padding_side": "left"},
    )  # fmt: skip


SAMPLES = [
    (MOLECULES["aspirin"], "Describe this molecule."),
    (MOLECULES["methane"], "What is its formula?"),
    ("C[C@@H](N)C(=O)O", "Name it."),
]


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-base")
    return folder, save_base_model_folder(folder)


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, base_model):
    """(raw original checkpoint, its file, converted folder, report) for a stage-2 checkpoint, LoRA merged."""
    folder, config = base_model
    checkpoint = original_checkpoint(config)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save(checkpoint, path)
    output = tmp_path_factory.mktemp("llamo-converted")
    report = convert_llamo_checkpoint(path, folder, output)
    return checkpoint, path, output, report


def load_converted(folder):
    return LlamoForConditionalGeneration.from_pretrained(folder).eval(), LlamoProcessor.from_pretrained(
        folder, trust_remote_code=True
    )


def convert(tmp_path, base_model, checkpoint, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "original.ckpt"
    torch.save(checkpoint, path)
    return convert_llamo_checkpoint(path, base_model[0], tmp_path / "converted", **options), tmp_path / "converted"


# ---------------------------------------------------------------------------------------------------------------
# Parity


def test_converted_model_reproduces_the_original_forward(stage2, base_model):
    checkpoint, _, folder, _ = stage2
    base_config = base_model[1]
    model, processor = load_converted(folder)
    ref_ids, ref_mask, ref_logits, _ = reference_forward(checkpoint["state_dict"], base_config, processor.tokenizer, SAMPLES)

    inputs = llamo_inputs(processor, SAMPLES)
    # same token sequence as the original's piece-wise tokenization (its -1 slots are our <graph> id)
    assert torch.equal(inputs["input_ids"], ref_ids.masked_fill(ref_ids == -1, model.config.graph_token_id))
    assert torch.equal(inputs["attention_mask"], ref_mask)
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = base_config.vocab_size + 1  # the original's vocabulary; ours adds <graph> after it
    real = ref_mask.bool()
    assert ref_logits[real].abs().mean() > 0.5  # not a degenerate comparison
    torch.testing.assert_close(logits[..., :vocab][real], ref_logits[real], rtol=1e-4, atol=1e-4)


def test_greedy_generation_equals_the_original(stage2, base_model):
    checkpoint, _, folder, _ = stage2
    model, processor = load_converted(folder)
    _, ref_mask, _, (reference, embeds) = reference_forward(
        checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES[:1]
    )
    expected = reference.generate(inputs_embeds=embeds, attention_mask=ref_mask, max_new_tokens=12, do_sample=False, num_beams=1)
    inputs = llamo_inputs(processor, SAMPLES[:1])
    generated = model.generate(**inputs, max_new_tokens=12)  # greedy defaults from the converted generation config
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == expected[0].tolist()


def test_converted_folder_passes_the_public_contract_in_a_fresh_process(stage2, base_model, tmp_path):
    checkpoint, _, folder, _ = stage2
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json", "tokenizer.json",
                 "chat_template.jinja", "README.md", "configuration_llamo.py", "modeling_llamo.py", "processing_llamo.py",
                 "featurization_llamo.py", "conversion_report.json"):  # fmt: skip
        assert (folder / name).is_file(), name
    processor = LlamoProcessor.from_pretrained(folder, trust_remote_code=True)
    _, mask, ref_logits, _ = reference_forward(checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES)
    output_file = tmp_path / "remote.pt"
    code = f"path_or_hub_id = {str(folder)!r}\n" + CONTRACT + textwrap.dedent(f"""
        import torch
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        batch = processor.apply_chat_template({[conversation(*sample) for sample in SAMPLES]!r}, add_generation_prompt=True,
            tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={{"padding": True, "padding_side": "left"}})
        with torch.no_grad():
            torch.save(model(**batch).logits, {str(output_file)!r})
        """)  # fmt: skip
    answer = run_fresh(code, cwd=tmp_path)
    assert answer.strip()
    logits = torch.load(output_file)
    torch.testing.assert_close(logits[..., : ref_logits.shape[-1]][mask.bool()], ref_logits[mask.bool()], rtol=1e-4, atol=1e-4)


def test_the_reference_tells_the_token_orders_apart(tmp_path, base_model, stage2):
    """Guard on the comparison itself: converting with the paper's order (motifs last) must not match."""
    checkpoint = stage2[0]
    _, folder = convert(tmp_path, base_model, checkpoint, motif_tokens_first=False)
    model, processor = load_converted(folder)
    _, _, ref_last, _ = reference_forward(
        checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES[:1], motif_first=False
    )
    _, _, ref_first, _ = reference_forward(checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES[:1])
    with torch.no_grad():
        logits = model(**llamo_inputs(processor, SAMPLES[:1])).logits[..., : ref_last.shape[-1]]
    torch.testing.assert_close(logits, ref_last, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, ref_first, rtol=1e-2, atol=1e-2)


def test_lora_kept_as_an_adapter_loads_with_peft(tmp_path, base_model, stage2):
    from peft import PeftModel

    checkpoint = stage2[0]
    report, folder = convert(tmp_path, base_model, checkpoint, keep_lora_adapter=True)
    assert report.lora["merged"] is False and report.lora["rank"] == LORA_RANK and report.lora["scale"] == LORA_ALPHA / LORA_RANK
    adapter_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["lora_dropout"]) == (LORA_RANK, LORA_ALPHA, 0.05)

    base, processor = load_converted(folder)
    q_proj = base.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q_proj, checkpoint["state_dict"][f"{PEFT_LLM}model.layers.0.self_attn.q_proj.base_layer.weight"])
    inputs = llamo_inputs(processor, SAMPLES)
    with torch.no_grad():
        without_lora = base(**inputs).logits
    model = PeftModel.from_pretrained(base, folder / "adapter").eval()
    _, mask, ref_logits, _ = reference_forward(checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES)
    with torch.no_grad():
        logits = model(**inputs).logits[..., : ref_logits.shape[-1]]
    torch.testing.assert_close(logits[mask.bool()], ref_logits[mask.bool()], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(without_lora[..., : ref_logits.shape[-1]], logits, atol=1e-2)  # the adapter does something


def test_stage1_checkpoint_without_peft_converts(tmp_path, base_model):
    checkpoint = original_checkpoint(base_model[1], stage=1, seed=1)
    report, folder = convert(tmp_path, base_model, checkpoint)
    assert report.training_stage == "stage 1 (no LoRA)" and report.lora == {} and report.unused == []
    model, processor = load_converted(folder)
    _, mask, ref_logits, _ = reference_forward(
        checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES[:2], lora="none"
    )
    with torch.no_grad():
        logits = model(**llamo_inputs(processor, SAMPLES[:2])).logits[..., : ref_logits.shape[-1]]
    torch.testing.assert_close(logits[mask.bool()], ref_logits[mask.bool()], rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointConversionError, match="no LoRA weights to keep"):
        convert(tmp_path / "again", base_model, checkpoint, keep_lora_adapter=True)


def test_per_level_attention_needs_the_option(tmp_path, base_model):
    checkpoint = original_checkpoint(base_model[1], shared_attention=False, seed=2)
    with pytest.raises(
        CheckpointConversionError,
        match=r"mllm\.abstractor\.cross_attention\.1\.in_proj_bias differs from .*cross_attention\.0\.in_proj_bias.*--per_level_attention",
    ):
        convert(tmp_path, base_model, checkpoint)
    report, folder = convert(tmp_path / "per-level", base_model, checkpoint, share_level_cross_attention=False)
    assert report.aliases == {}
    model, processor = load_converted(folder)
    assert len(model.model.projector.level_attentions) == GNN_LAYERS + 1
    _, _, ref_logits, _ = reference_forward(checkpoint["state_dict"], base_model[1], processor.tokenizer, SAMPLES[:1])
    with torch.no_grad():
        logits = model(**llamo_inputs(processor, SAMPLES[:1])).logits[..., : ref_logits.shape[-1]]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)

    # a shared-attention checkpoint may also be converted per level: every level gets its own copy
    _, folder = convert(
        tmp_path / "copies", base_model, original_checkpoint(base_model[1], seed=2), share_level_cross_attention=False
    )
    attentions = LlamoForConditionalGeneration.from_pretrained(folder).model.projector.level_attentions
    assert len(attentions) == GNN_LAYERS + 1 and all(
        torch.equal(a.in_proj_weight, attentions[0].in_proj_weight) for a in attentions
    )


def test_bf16_checkpoint_keeps_its_dtypes_and_rounds_the_lora_merge_once(tmp_path, base_model):
    checkpoint = original_checkpoint(base_model[1], dtype=torch.bfloat16, seed=3)  # bf16 LLM, fp32 GNN and projector
    _, folder = convert(tmp_path, base_model, checkpoint)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("model.graph_encoder.layers.0.conv.nn.1.module.running_var").dtype == torch.float32
        assert weights.get_tensor("model.projector.level_queries").dtype == torch.float32
        merged = weights.get_tensor("model.language_model.layers.1.self_attn.v_proj.weight")
    sd, module = checkpoint["state_dict"], f"{PEFT_LLM}model.layers.1.self_attn.v_proj"
    expected = (
        sd[f"{module}.base_layer.weight"].float()
        + LORA_ALPHA / LORA_RANK * sd[f"{module}.lora_B.default.weight"].float() @ sd[f"{module}.lora_A.default.weight"].float()
    )
    assert merged.dtype == torch.bfloat16 and torch.equal(merged, expected.to(torch.bfloat16))
    model = LlamoForConditionalGeneration.from_pretrained(folder)  # default dtype: the LLM's, GIN kept in fp32
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.graph_encoder.layers[0].batch_norm.module.running_mean.dtype == torch.float32

    # dtype=...: everything cast but the modules the model keeps in fp32
    _, folder = convert(tmp_path / "cast", base_model, original_checkpoint(base_model[1], seed=3), dtype=torch.bfloat16)
    with safe_open(folder / "model.safetensors", "pt") as weights:
        dtypes = {key: weights.get_slice(key).get_dtype() for key in weights.keys()}  # noqa: SIM118  (safe_open: no __iter__)
    assert dtypes["model.projector.head.mlp.0.weight"] == dtypes["lm_head.weight"] == "BF16"
    assert dtypes["model.projector.head.layer_norm.weight"] == dtypes["model.graph_encoder.layers.1.conv.eps"] == "F32"


# ---------------------------------------------------------------------------------------------------------------
# Tokens, generation config, report


def test_graph_token_is_added_after_the_original_pad_and_is_never_generated(stage2, base_model):
    checkpoint, _, folder, report = stage2
    vocab = base_model[1].vocab_size
    assert report.added_tokens == {"<pad>": vocab, "<graph>": vocab + 1}
    model, processor = load_converted(folder)
    tokenizer, sd = processor.tokenizer, checkpoint["state_dict"]
    assert (tokenizer.pad_token_id, processor.graph_token_id, model.config.graph_token_id, len(tokenizer)) == (
        vocab,
        vocab + 1,
        vocab + 1,
        vocab + 2,
    )
    assert processor.chat_template == DEFAULT_CHAT_TEMPLATE and tokenizer.chat_template in (
        None,
        DEFAULT_CHAT_TEMPLATE,
    )  # not the base's
    embeddings, lm_head = model.get_input_embeddings().weight, model.lm_head.weight
    assert torch.equal(embeddings[: vocab + 1], sd[f"{PEFT_LLM}model.embed_tokens.weight"])  # trained table, pad row included
    torch.testing.assert_close(embeddings[vocab + 1], embeddings[: vocab + 1].mean(0))
    assert not (embeddings[: vocab + 1] == embeddings[vocab + 1]).all(-1).any()  # inputs_embeds calls can find the slots
    assert torch.equal(lm_head[vocab + 1], lm_head[tokenizer.unk_token_id])
    generation = model.generation_config
    assert (generation.max_new_tokens, generation.num_beams, generation.do_sample) == (512, 1, False)
    assert generation.suppress_tokens == [vocab + 1] and generation.pad_token_id == vocab

    # Even when its logit dominates, <graph> is not generated.
    with torch.no_grad():
        model.lm_head.weight[vocab + 1] = 100 * model.lm_head.weight[3]
    inputs = llamo_inputs(processor, SAMPLES[:1])
    with torch.no_grad():
        assert model(**inputs).logits[0, -1].argmax() == vocab + 1
    generated = model.generate(**inputs, max_new_tokens=6)
    assert (vocab + 1) not in generated[0, inputs["input_ids"].shape[1] :].tolist()


def test_report_accounts_for_every_key(stage2, tmp_path, base_model, capsys):
    checkpoint, _, folder, report = stage2
    sd = checkpoint["state_dict"]
    aliases = {f"{PROJ}cross_attention.{level}.{param}" for level in range(1, GNN_LAYERS + 1)
               for param in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}  # fmt: skip
    lora = {key for key in sd if ".lora_" in key}
    assert set(report.aliases) == aliases
    assert set(report.ignored) == {"mllm.ln_graph_model.weight", "mllm.ln_graph_model.bias"}
    assert report.unused == [] and report.filled == {}
    assert set(report.converted.values()) | aliases | lora | set(report.ignored) == set(sd)
    assert report.metadata == {"epoch": 2, "global_step": 1500, "pytorch-lightning_version": "2.2.1"}
    assert (
        report.converted["model.graph_encoder.layers.1.conv.nn.1.module.num_batches_tracked"]
        == f"{GNN}gnns.1.mlp.1.num_batches_tracked"
    )
    saved = json.loads((folder / "conversion_report.json").read_text())
    assert saved["lora"]["merged"] is True and saved["lora"]["rank"] == LORA_RANK and len(saved["lora"]["modules"]) == 4

    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "base_model: meta-llama/Llama-2-7b-chat-hf" in card and "license: llama2" in card
    assert "merged into the base weights (W + 32/4 B A" in card and "epoch 2, global_step 1500" in card

    # unknown keys are reported (CLI summary), and refused with --strict
    checkpoint = {**checkpoint, "state_dict": {**sd, "mllm.new_head.weight": torch.zeros(2)}}
    torch.save(checkpoint, tmp_path / "extra.ckpt")
    main(
        ["--checkpoint", str(tmp_path / "extra.ckpt"), "--base_model", str(base_model[0]), "--output_dir", str(tmp_path / "out")]
    )
    printed = capsys.readouterr().out
    assert "unused (not recognized): 1\n  mllm.new_head.weight" in printed and "ignored: 2" in printed
    with pytest.raises(SystemExit, match="unrecognized checkpoint keys \\(strict\\): \\['mllm.new_head.weight'\\]"):
        main(
            [
                "--checkpoint",
                str(tmp_path / "extra.ckpt"),
                "--base_model",
                str(base_model[0]),
                "--output_dir",
                str(tmp_path / "o2"),
                "--strict",
            ]
        )


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs


def with_state_dict(checkpoint, update=None, drop=()):
    state_dict = {key: value for key, value in checkpoint["state_dict"].items() if key not in drop}
    return {**checkpoint, "state_dict": {**state_dict, **(update or {})}}


def test_missing_keys_are_named_in_the_original_layout(tmp_path, base_model, stage2):
    checkpoint = with_state_dict(
        stage2[0],
        drop={
            f"{GNN}gnns.1.mlp.0.weight",
            f"{PROJ}motif_weight.weight",
            f"{PEFT_LLM}model.layers.1.self_attn.q_proj.base_layer.weight",
        },
    )
    with pytest.raises(CheckpointConversionError) as error:
        convert(tmp_path, base_model, checkpoint)
    message = str(error.value)
    assert "original.ckpt does not fit the LLaMo architecture:\nmissing from the checkpoint:" in message
    for key, ours in (
        (f"{GNN}gnns.1.mlp.0.weight", "model.graph_encoder.layers.1.conv.nn.0.weight"),
        (f"{PROJ}motif_weight.weight", "model.projector.motif_embedding.weight"),
        (f"{PEFT_LLM}model.layers.1.self_attn.q_proj.base_layer.weight", "model.language_model.layers.1.self_attn.q_proj.weight"),
    ):
        assert f"\n  {key} (-> {ours})" in message

    checkpoint = with_state_dict(stage2[0], drop={f"{PEFT_LLM}model.norm.weight"})
    with pytest.raises(
        CheckpointConversionError,
        match=rf"missing from the checkpoint:\n  {PEFT_LLM}model\.norm\.weight \(-> model\.language_model\.norm\.weight\)",
    ):
        convert(tmp_path / "norm", base_model, checkpoint)


def test_a_missing_batch_count_is_filled_and_reported(tmp_path, base_model, stage2):
    checkpoint = with_state_dict(stage2[0], drop={f"{GNN}batch_norms.0.num_batches_tracked"})
    report, _ = convert(tmp_path, base_model, checkpoint)
    assert report.filled == {
        "model.graph_encoder.layers.0.batch_norm.module.num_batches_tracked": "0 (absent from the checkpoint)"
    }


def test_wrong_shapes_name_the_original_key(tmp_path, base_model, stage2):
    checkpoint = with_state_dict(stage2[0], update={f"{PROJ}net.2.weight": torch.zeros(32, 31)})
    with pytest.raises(
        CheckpointConversionError,
        match=rf"{PROJ}net\.2\.weight -> model\.projector\.head\.mlp\.2\.weight: checkpoint \[32, 31\], model expects \[32, 32\]",
    ):
        convert(tmp_path, base_model, checkpoint)
    lora_a = f"{PEFT_LLM}model.layers.0.self_attn.v_proj.lora_A.default.weight"
    checkpoint = with_state_dict(stage2[0], update={lora_a: torch.zeros(LORA_RANK, 7)})
    with pytest.raises(
        CheckpointConversionError, match=r"LoRA shapes do not fit .*v_proj\.base_layer\.weight \[16, 32\]: lora_A \[4, 7\]"
    ):
        convert(tmp_path / "lora", base_model, checkpoint)
    checkpoint = with_state_dict(stage2[0], drop={f"{PEFT_LLM}model.layers.0.self_attn.v_proj.lora_B.default.weight"})
    with pytest.raises(CheckpointConversionError, match="has only lora_A"):
        convert(tmp_path / "half", base_model, checkpoint)


def test_a_tokenizer_that_does_not_fit_the_embeddings_is_refused(tmp_path, base_model, stage2):
    checkpoint = with_state_dict(
        stage2[0], update={f"{PEFT_LLM}model.embed_tokens.weight": torch.zeros(base_model[1].vocab_size + 5, 32)}
    )
    with pytest.raises(ValueError, match=r"has 2047 tokens with <pad>, but the checkpoint's embedding table has 2051 rows"):
        convert(tmp_path, base_model, checkpoint)
    arguments = [
        "--checkpoint",
        str(tmp_path / "original.ckpt"),
        "--base_model",
        str(base_model[0]),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit, match=r"^error: the tokenizer of .* has 2047 tokens"):  # the CLI: a message, no traceback
        main(arguments)


def test_unsafe_pickles_need_explicit_trust(tmp_path, stage2):
    checkpoint = {**stage2[0], "hyper_parameters": argparse.Namespace(llm_tune="lora")}
    path = tmp_path / "namespace.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(
        ValueError,
        match=r"namespace\.ckpt: torch\.load\(weights_only=True\) refused .*\['argparse\.Namespace'\].*allow_unsafe_pickle",
    ):
        load_original_checkpoint(path)
    state_dict, metadata = load_original_checkpoint(path, allow_unsafe_pickle=True)
    assert state_dict.keys() == stage2[0]["state_dict"].keys() and metadata["global_step"] == 1500


def test_files_that_are_not_llamo_checkpoints_are_refused(tmp_path, stage2):
    with pytest.raises(ValueError, match="is a directory, not a checkpoint file"):
        load_original_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_original_checkpoint(tmp_path / "nope.ckpt")
    torch.save({"model": {"encoder.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt is not an original LLaMo checkpoint.*\['model'\]"):
        load_original_checkpoint(tmp_path / "other.ckpt")
    torch.save({"state_dict": {"mllm.x": [1, 2]}}, tmp_path / "lists.ckpt")
    with pytest.raises(ValueError, match=r"not tensors: \['mllm\.x'\]"):
        load_original_checkpoint(tmp_path / "lists.ckpt")
