"""Remote code: a saved folder loads in a fresh, offline process through the Auto classes and behaves the same."""

from __future__ import annotations

import ast
import json
import textwrap

import pytest
import torch
from conftest import CONTRACT, MOLECULES, ROOT, run_fresh, user_turn
from transformers.dynamic_module_utils import check_imports, get_imports


CODE_FILES = [
    "configuration_llamo.py", "modeling_llamo.py", "projectors_llamo.py", "processing_llamo.py", "featurization_llamo.py",
    "pipeline_llamo.py",
]  # fmt: skip


def test_saved_folder_holds_the_code_and_the_auto_maps(tiny_folder):
    for name in CODE_FILES + [
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ]:
        assert (tiny_folder / name).is_file(), name
    auto_map = json.loads((tiny_folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_llamo.LlamoConfig",
        "AutoModel": "modeling_llamo.LlamoModel",
        "AutoModelForCausalLM": "modeling_llamo.LlamoForConditionalGeneration",
    }
    processor_config = json.loads((tiny_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_llamo.LlamoProcessor"}


def test_fresh_offline_process_gives_identical_logits_and_generations(tiny_folder, tiny, tmp_path):
    model, processor = tiny
    conversations = [user_turn(MOLECULES[name], "Describe this molecule.") for name in ("aspirin", "caffeine", "salt")]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )  # fmt: skip
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)

    output_file = tmp_path / "remote.pt"
    run_fresh(
        textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoProcessor
        model = AutoModelForCausalLM.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        conversations = {conversations!r}
        inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", processor_kwargs={{"padding": True, "padding_side": "left"}})
        with torch.no_grad():
            logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        torch.save({{"inputs": dict(inputs), "logits": logits, "generated": generated}}, {str(output_file)!r})
        """),
        cwd=tmp_path,
    )
    remote = torch.load(output_file)
    for key in inputs:
        assert torch.equal(remote["inputs"][key], inputs[key]), key
    torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=0)
    assert torch.equal(remote["generated"], generated)


def test_public_contract_snippet_runs_against_the_saved_folder(tiny_folder, tmp_path):
    run_fresh(f"path_or_hub_id = {str(tiny_folder)!r}\n" + CONTRACT, cwd=tmp_path)  # exits cleanly, offline


def test_auto_model_loads_the_base_model(tiny_folder, tmp_path):
    out = run_fresh(
        textwrap.dedent(f"""
        from transformers import AutoConfig, AutoModel
        config = AutoConfig.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)
        print(type(config).__name__, type(model).__name__, config.num_graph_tokens)
        """),
        cwd=tmp_path,
    )
    assert out.split() == ["LlamoConfig", "LlamoModel", "28"]


@pytest.mark.parametrize("name", CODE_FILES)
def test_transformers_import_check_accepts_each_code_file(name):
    assert check_imports(ROOT / name) is not None  # raises ImportError when it would refuse the file
    stdlib = {
        "__future__",
        "collections",
        "contextlib",
        "dataclasses",
        "functools",
        "hashlib",
        "inspect",
        "threading",
        "typing",
        "warnings",
    }
    assert set(get_imports(ROOT / name)) <= stdlib | {"torch", "transformers", "numpy", "rdkit"}


@pytest.mark.parametrize("name", CODE_FILES)
def test_code_files_import_siblings_relatively_with_a_plain_module_fallback(name):
    tree = ast.parse((ROOT / name).read_text())
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1]
    absolute_siblings = [
        node.module for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.endswith("_llamo")
    ]  # fmt: skip
    assert sorted(relative) == sorted(absolute_siblings)  # each sibling import has its plain-module twin


def test_modules_import_as_plain_modules_from_the_repository_root(tmp_path):
    out = run_fresh(
        "import configuration_llamo, modeling_llamo, processing_llamo, featurization_llamo, llamo.tiny\n"
        "print(modeling_llamo.LlamoForConditionalGeneration.__module__)",
        cwd=ROOT,
    )
    assert out.strip() == "modeling_llamo"
