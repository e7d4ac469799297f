"""fp32 islands: the GIN (parameters and BatchNorm statistics) and the projector's LayerNorm stay fp32 on every path
that creates or loads LLaMo around a bf16 language model, and compute in fp32 under autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from llamo.tiny import build_tiny_llamo, load_tiny_tokenizer, tiny_llamo_config
from modeling_llamo import LlamoForConditionalGeneration, fp32_island_names, keep_fp32_islands


def island_dtypes(model) -> dict[str, torch.dtype]:
    """dtype of every floating tensor inside a declared fp32 island, by name."""
    dtypes = {}
    for island in fp32_island_names(model):
        module = model.get_submodule(island)
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            if tensor.is_floating_point():
                dtypes[f"{island}.{name}"] = tensor.dtype
    return dtypes


def assert_islands_fp32_and_llm_bf16(model) -> None:
    dtypes = island_dtypes(model)
    assert any(".running_mean" in name for name in dtypes) and any("layer_norm.weight" in name for name in dtypes)
    assert {name: dtype for name, dtype in dtypes.items() if dtype != torch.float32} == {}
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def bf16_llm_folder(tmp_path_factory):
    """A tiny Llama checkpoint saved in bf16 (what every real LLM checkpoint is) and its LlamoConfig."""
    folder = tmp_path_factory.mktemp("bf16-llm")
    model, _ = build_tiny_llamo(seed=0)
    model.model.language_model.to(torch.bfloat16).save_pretrained(folder)
    config = tiny_llamo_config(load_tiny_tokenizer())
    config.text_config.dtype = "bfloat16"
    return folder, config


def test_the_islands_are_declared_by_the_modules_themselves():
    model, _ = build_tiny_llamo(seed=0)
    assert fp32_island_names(model) == ["model.graph_encoder", "model.projector.head.layer_norm"]
    # transformers' loading dtype plan is fed from the same declarations
    assert set(model._keep_in_fp32_modules_strict) >= {"graph_encoder", "projector.head.layer_norm"}


def test_fresh_model_from_a_config_in_bf16_keeps_the_islands_fp32():
    config = tiny_llamo_config(load_tiny_tokenizer())
    model = LlamoForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    assert_islands_fp32_and_llm_bf16(model)


@pytest.mark.parametrize("dtype", ["auto", torch.bfloat16])
def test_built_around_a_bf16_llm_checkpoint_the_new_gin_is_fp32(bf16_llm_folder, dtype):
    folder, config = bf16_llm_folder  # stage 1: the GIN and projector are not in the checkpoint (created fresh)
    model = LlamoForConditionalGeneration.from_pretrained(
        folder, config=config, key_mapping={r"^": "model.language_model."}, dtype=dtype
    )
    assert_islands_fp32_and_llm_bf16(model)


def test_a_saved_llamo_reloaded_in_bf16_keeps_the_islands_fp32(tmp_path):
    model, _ = build_tiny_llamo(seed=0)
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # even a checkpoint whose islands were saved in bf16
    for dtype in ("auto", torch.bfloat16):
        assert_islands_fp32_and_llm_bf16(LlamoForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype))


def test_keep_fp32_islands_restores_a_model_cast_to_bf16():
    model, _ = build_tiny_llamo(seed=0)
    model.to(torch.bfloat16)
    assert set(island_dtypes(model).values()) == {torch.bfloat16}
    keep_fp32_islands(model)
    assert_islands_fp32_and_llm_bf16(model)


def test_under_autocast_the_gin_computes_in_fp32_and_the_llm_in_bf16(tiny):
    model, processor = tiny
    inputs = processor(text=["<graph> What is it?"], smiles=["CC(=O)Oc1ccccc1C(=O)O"], return_tensors="pt")
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.dtype

        return hook

    hooks = [
        model.model.graph_encoder.layers[0].conv.nn[0].register_forward_hook(record("gin_linear")),
        model.model.graph_encoder.layers[-1].batch_norm.register_forward_hook(record("gin_batch_norm")),
        model.model.language_model.layers[0].mlp.register_forward_hook(record("llm_mlp")),
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**inputs)
    for hook in hooks:
        hook.remove()
    assert seen == {"gin_linear": torch.float32, "gin_batch_norm": torch.float32, "llm_mlp": torch.bfloat16}


def test_a_gin_whose_parameters_an_engine_cast_to_bf16_computes_in_bf16_throughout(tiny):
    """DeepSpeed's bf16 mode casts every parameter but not the BatchNorm statistics: the GIN follows its parameters."""
    model, processor = tiny
    encoder = copy.deepcopy(model.model.graph_encoder)
    for parameter in encoder.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    inputs = processor(text=["<graph> What is it?"], smiles=["CC(=O)Oc1ccccc1C(=O)O"], return_tensors="pt")
    levels = encoder(inputs["graph_node_features"], inputs["graph_edge_index"], inputs["graph_edge_features"])
    assert {level.dtype for level in levels} == {torch.bfloat16}
    assert {b.dtype for b in encoder.buffers() if b.is_floating_point()} == {torch.bfloat16}
