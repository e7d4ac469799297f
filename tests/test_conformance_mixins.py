"""transformers' common tests, as LLaMo meets them: the checks of ModelTesterMixin and ProcessorTesterMixin (5.24)
that LLaMo failed (issue 24), written out here with the one adaptation they need: the processor gets molecules
(`smiles`) where those mixins pass images, videos or audio.

- `test_keep_in_fp32_modules` (ModelTesterMixin): no module in both `_keep_in_fp32_modules` and
  `_keep_in_fp32_modules_strict`; an fp16 reload keeps both lists in fp32, a bf16 reload the strict one only.
  Adapted: only floating tensors are compared (the GIN's BatchNorm counters are int64 buffers).
- every name in a model's two lists names one of its own modules (LlamoModel listed `model.graph_encoder`).
- quantization: the names as transformers' quantizers match them leave the graph side unconverted in both classes.
- `test_model_input_names` (ProcessorTesterMixin): `processor.model_input_names` are the keys it returns.
- `test_processor_from_and_save_pretrained` and `..._as_nested_dict`: `to_dict()` equal after save -> load.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import MOLECULES
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import should_convert_module

from llamo.tiny import build_tiny_llamo, load_tiny_tokenizer, tiny_llamo_config
from modeling_llamo import LlamoForConditionalGeneration, LlamoModel
from processing_llamo import LlamoProcessor


MODEL_CLASSES = [LlamoModel, LlamoForConditionalGeneration]
GRAPH_PARTS = ("graph_encoder", "projector")


@pytest.fixture(scope="module")
def config():
    return tiny_llamo_config(load_tiny_tokenizer())


def matches(pattern: str, name: str) -> bool:
    """How transformers' common test matches a `_keep_in_fp32_modules*` entry against a tensor or module name."""
    return re.search(rf"(?:^|\.){pattern}(?:\.|$)", name) is not None


def graph_part(model: nn.Module, name: str) -> bool:
    """Whether `name` (relative to `model`) is inside the GIN or the projector."""
    prefix = "" if isinstance(model, LlamoModel) else "model."
    return name.startswith(tuple(prefix + part for part in GRAPH_PARTS))


# --- models -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_no_module_is_in_both_fp32_lists(config, model_class):
    model = model_class(config)
    assert model._keep_in_fp32_modules and model._keep_in_fp32_modules_strict
    assert model._keep_in_fp32_modules & model._keep_in_fp32_modules_strict == set()


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_every_fp32_list_entry_names_a_module_of_that_class(config, model_class):
    model = model_class(config)
    modules = [name for name, _ in model.named_modules() if name]
    for entry in (*model._keep_in_fp32_modules, *model._keep_in_fp32_modules_strict):
        assert any(matches(entry, module) for module in modules), f"{model_class.__name__} has no module {entry!r}"


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_half_precision_reloads_keep_the_fp32_lists_in_fp32(tmp_path, config, model_class):
    model_class(config).save_pretrained(tmp_path)
    for dtype in (torch.float16, torch.bfloat16):
        model = model_class.from_pretrained(tmp_path, dtype=dtype)
        # fp16: both lists are kept in fp32; bf16: the strict one only
        kept = model._keep_in_fp32_modules_strict | (model._keep_in_fp32_modules if dtype == torch.float16 else set())
        wrong = {
            name: tensor.dtype
            for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and tensor.dtype != (torch.float32 if any(matches(k, name) for k in kept) else dtype)
        }
        assert wrong == {}, dtype
        fp32 = {name for name, tensor in model.state_dict().items() if tensor.dtype == torch.float32}
        assert any("graph_encoder" in name for name in fp32) and any("head.layer_norm" in name for name in fp32)


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_quantizers_leave_the_graph_side_and_convert_the_language_model(config, model_class):
    model = model_class(config)
    # what transformers' bitsandbytes quantizer skips (no skip modules given: its defaults plus the model's list)
    skipped = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    linears = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    converted = {name for name in linears if should_convert_module(name, skipped)}
    graph_linears = {name for name in linears if graph_part(model, name)}
    assert graph_linears and not graph_linears & converted
    assert {name for name in converted if "language_model" in name} == {name for name in linears if "language_model" in name}


# --- processor ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    return build_tiny_llamo(seed=0)[1]


def returned_keys(processor: LlamoProcessor, **kwargs) -> set[str]:
    text = ["lower newer <graph>", "<graph> upper older longer string <graph>"]
    smiles = [MOLECULES["aspirin"], MOLECULES["methane"], MOLECULES["salt"]]  # methane: no functional group
    return set(processor(text=text, smiles=smiles, padding=True, return_tensors="pt", **kwargs).keys())


def test_model_input_names_are_the_inputs_the_processor_returns(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    for candidate in (processor, LlamoProcessor.from_pretrained(tmp_path)):
        assert returned_keys(candidate) == set(candidate.model_input_names)
        assert {"graph_node_features", "graph_motif_batch"} <= set(candidate.model_input_names)
    piecewise = LlamoProcessor(tokenizer=processor.tokenizer, piecewise_tokenization=True)
    assert returned_keys(piecewise) == set(piecewise.model_input_names)
    text_only = LlamoProcessor(tokenizer=processor.tokenizer, num_graph_tokens=0)  # projector_type none
    assert returned_keys(text_only) == set(text_only.model_input_names) == {"input_ids", "attention_mask"}


def test_processor_dict_is_the_same_after_save_and_load(processor, tmp_path):
    before = processor.to_dict()
    saved_files = processor.save_pretrained(tmp_path)
    json.loads((tmp_path / "processor_config.json").read_text())  # transformers' check_json_file_has_correct_format
    assert saved_files == [str(tmp_path / "processor_config.json")]
    loaded = LlamoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict() == before
    # AutoProcessor still finds the class in the saved file
    assert json.loads((tmp_path / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_llamo.LlamoProcessor"
    }


def test_processor_to_json_string_round_trips(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = LlamoProcessor.from_pretrained(tmp_path)
    assert json.loads(loaded.to_json_string()) == json.loads(processor.to_json_string())
