"""Saved models are ready for inference (issue 25): training turns the KV cache off (transformers' `Trainer` writes
`use_cache=False` into the config; a base LLM saved after training says `use_cache: false`), and a folder that kept
that generated without a cache, running the GIN once per new token. Here every folder `train_sft.py`, the stage-0
base LLM and the converter write is loaded in a fresh process and must run the graph encoder once per `generate`,
with a growing KV cache; nothing else of the training run may reach what users load."""

from __future__ import annotations

import inspect
import json
import pathlib

import pytest
import torch
from conftest import MOLECULES, read_data_smiles, run_fresh, user_turn
from transformers import LlamaForCausalLM

from llamo.builder import build_llamo
from llamo.instructions import generate_examples
from llamo.saving import full_state_dict, make_inference_ready, rebuild_model
from llamo.sft import LlamoModelConfig, load_model
from llamo.sft import main as train
from llamo.tiny import build_tiny_llamo, load_tiny_tokenizer, tiny_llama_config
from modeling_llamo import LlamoForConditionalGeneration


NEW_TOKENS = 12
SMALL_GRAPH = "gnn_hidden_size=32,projector_mlp_depth=2"
FAST = ["--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_train_samples", "8", "--max_steps", "2",
        "--save_strategy", "no", "--logging_steps", "1"]  # fmt: skip
# What a user loads from a folder: everything but the weights, the code files and the run's own records.
LOADED_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja")


# ---------------------------------------------------------------------------------------------------------------
# What generate does, counted with hooks. These two functions also run, as source, in the fresh processes.


def watch(model) -> dict:
    """Counts graph-encoder runs and records every language-model call as [tokens fed, cache length before it]
    (cache length -1: no cache was passed)."""
    calls = {"gin": 0, "lm": []}
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's LLaMo

    def count_gin(module, args, output):
        calls["gin"] += 1

    def record_lm(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        calls["lm"].append([kwargs["inputs_embeds"].shape[1], -1 if cache is None else cache.get_seq_length()])

    inner.model.graph_encoder.register_forward_hook(count_gin)
    inner.model.language_model.register_forward_pre_hook(record_lm, with_kwargs=True)
    return calls


def generation_report(model, processor, new_tokens: int) -> dict:
    """One molecule, `new_tokens` greedy tokens: graph-encoder runs and language-model calls, and the modules left in
    training mode."""
    messages = [{"role": "user", "content": [
        {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"}, {"type": "text", "text": "Describe this molecule."}]}]  # fmt: skip
    report = {
        "training_modules": sorted({type(m).__name__ for m in model.modules() if m.training}),
        "lora_modules": sum("lora" in name for name, _ in model.named_modules()),
    }
    calls = watch(model)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    report["generate"] = calls
    return report


FRESH_PROCESS = """
import json
from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

{watch}
{generation_report}
reports = {{}}
for name, folder in {folders!r}.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    reports[name] = generation_report(model, processor, {new_tokens})
    pipe = pipeline("molecule-text-to-text", model=folder, trust_remote_code=True)
    calls = watch(pipe.model)
    pipe({{"smiles": "CCO", "text": "Describe this molecule."}}, max_new_tokens={new_tokens}, min_new_tokens={new_tokens},
         do_sample=False)
    reports[name]["pipeline"] = calls
    reports[name]["pipeline_training_modules"] = sorted({{type(m).__name__ for m in pipe.model.modules() if m.training}})
print("REPORT" + json.dumps(reports))
"""


def fresh_reports(folders: dict[str, pathlib.Path], cwd: pathlib.Path) -> dict:
    code = FRESH_PROCESS.format(
        watch=inspect.getsource(watch),
        generation_report=inspect.getsource(generation_report),
        folders={name: str(folder) for name, folder in folders.items()},
        new_tokens=NEW_TOKENS,
    )
    output = run_fresh(code, cwd=cwd)
    return json.loads(output.split("REPORT", 1)[1])


def assert_cached(calls: dict, label: str) -> None:
    """The GIN ran once; the language model got the prompt once, then one token at a time on a growing cache."""
    assert calls["gin"] == 1, f"{label}: the graph encoder ran {calls['gin']} times for one generate"
    prompt = calls["lm"][0][0]
    assert len(calls["lm"]) == NEW_TOKENS, label
    assert calls["lm"] == [[prompt, 0]] + [[1, prompt + step] for step in range(NEW_TOKENS - 1)], (
        f"{label}: generated without the KV cache ([tokens fed, cache length] per step: {calls['lm'][:4]} ...)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Folders written by train_sft.py


def save_llm_without_cache(folder: pathlib.Path) -> pathlib.Path:
    """A tiny Llama saved the way a trainer leaves it: `use_cache: false` in its config and generation config."""
    tokenizer = load_tiny_tokenizer()
    torch.manual_seed(1)
    llm = LlamaForCausalLM(tiny_llama_config(tokenizer)).eval()
    llm.config.use_cache = False
    llm.generation_config.use_cache = False
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["use_cache"] is False
    assert json.loads((folder / "generation_config.json").read_text())["use_cache"] is False
    return folder


@pytest.fixture(scope="module")
def llm_without_cache(tmp_path_factory) -> pathlib.Path:
    return save_llm_without_cache(tmp_path_factory.mktemp("llm-no-cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llm_without_cache) -> dict[str, pathlib.Path]:
    """Output folders of train_sft.py: stage 1 around the LLM saved without cache, stage 2 on it (merged; adapter
    with activation checkpointing), and stage 1 of the tiny model (an LLM whose config says use_cache true) with
    activation checkpointing."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:12], questions_per_molecule=2, seed=0)
    data.write_text("\n".join(json.dumps(row) for row in rows))
    folders = {name: root / name for name in ("stage1", "stage2", "stage2_adapter_checkpointing", "stage1_checkpointing")}
    common = ["--datasets", str(data), *FAST]
    train(["--stage", "1", "--llm", str(llm_without_cache), "--config_overrides", SMALL_GRAPH,
           "--output_dir", str(folders["stage1"]), *common])  # fmt: skip
    train(["--stage", "2", "--init_from", str(folders["stage1"]), "--output_dir", str(folders["stage2"]), *common])
    train(["--stage", "2", "--init_from", str(folders["stage1"]), "--keep_adapter", "--activation_checkpointing", "true",
           "--output_dir", str(folders["stage2_adapter_checkpointing"]), *common])  # fmt: skip
    train(["--stage", "1", "--config_overrides", SMALL_GRAPH, "--activation_checkpointing", "true",
           "--output_dir", str(folders["stage1_checkpointing"]), *common])  # fmt: skip
    return folders


def test_trained_folders_generate_with_the_kv_cache_in_a_fresh_process(trained, tmp_path):
    for name, folder in trained.items():
        if name.endswith("adapter_checkpointing"):  # no config of its own: the adapter and its stage-1 base
            adapter = json.loads((folder / "adapter_config.json").read_text())
            assert adapter["inference_mode"] is True and adapter["base_model_name_or_path"] == str(trained["stage1"])
            continue
        config = json.loads((folder / "config.json").read_text())
        assert config["use_cache"] is True and config["text_config"]["use_cache"] is True, name
        assert json.loads((folder / "generation_config.json").read_text())["use_cache"] is True, name
        assert not [key for key in config if "checkpointing" in key], name
    # the adapter folder loads through transformers' PEFT integration (its base is the stage-1 folder)
    reports = fresh_reports(trained, cwd=tmp_path)
    assert reports.keys() == trained.keys()
    for name, report in reports.items():
        assert report["training_modules"] == [] and report["pipeline_training_modules"] == [], name  # eval mode
        assert (report["lora_modules"] > 0) == name.endswith("adapter_checkpointing"), name  # merged elsewhere
        for path in ("generate", "pipeline"):
            assert_cached(report[path], f"{name}, {path}")


def test_training_leaves_nothing_of_its_own_in_what_users_load(trained, llm_without_cache, tmp_path):
    """Config, generation config, tokenizer (padding side, lengths), processor and chat template of a trained folder
    are those of the model before training (built by train_sft.py's own loader), made ready for inference."""
    built = {
        "stage1": load_model(LlamoModelConfig(model_name_or_path=str(llm_without_cache), config_overrides=SMALL_GRAPH)),
        "stage1_checkpointing": load_model(LlamoModelConfig(config_overrides=SMALL_GRAPH)),
    }
    built["stage2"] = built["stage1"]
    for name, (model, processor) in built.items():
        reference = tmp_path / name
        model.save_pretrained(reference)
        processor.save_pretrained(reference)
        for file in LOADED_FILES:
            assert (trained[name] / file).read_text() == (reference / file).read_text(), f"{name}/{file}"
        generation = json.loads((trained[name] / "generation_config.json").read_text())
        assert not {"max_length", "max_new_tokens"} & generation.keys(), name  # SFTConfig.max_length stays training's


# ---------------------------------------------------------------------------------------------------------------
# The one helper, the builder, the gathered-model path, stage 0, the converter


def test_make_inference_ready_turns_the_cache_on_in_config_text_config_and_generation_config():
    from peft import LoraConfig, get_peft_model

    model, _ = build_tiny_llamo(seed=0)
    model.config.use_cache = model.config.text_config.use_cache = model.generation_config.use_cache = False
    assert make_inference_ready(model) is model
    assert model.config.use_cache and model.config.text_config.use_cache and model.generation_config.use_cache
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r"model\.language_model\..*\.q_proj"))
    model.config.use_cache = model.config.text_config.use_cache = model.generation_config.use_cache = False
    make_inference_ready(peft_model)
    assert model.config.use_cache and model.config.text_config.use_cache and model.generation_config.use_cache


def test_llamo_built_around_an_llm_saved_without_cache_generates_with_it(llm_without_cache):
    model, processor = build_llamo(str(llm_without_cache), config_overrides={"gnn_hidden_size": 32}, chat_template="llamo")
    assert model.generation_config.use_cache is True and model.config.text_config.use_cache is True
    calls = watch(model)
    inputs = processor(text="<graph> Describe this molecule.", smiles=[MOLECULES["aspirin"]], return_tensors="pt")
    model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    assert_cached(calls, "build_llamo")
    # and from a text config that says use_cache false (build_llamo_from_config)
    from llamo.builder import build_llamo_from_config

    tokenizer = load_tiny_tokenizer()
    text_config = tiny_llama_config(tokenizer, use_cache=False)
    model, _ = build_llamo_from_config(text_config, tokenizer, gnn_hidden_size=32, projector_mlp_depth=2)
    assert model.generation_config.use_cache is True and model.config.text_config.use_cache is True


def test_gathered_model_keeps_the_trained_generation_config():
    """ZeRO-3 / FSDP2 saves rebuild the model from its config: the trained model's generation config must come
    along (its suppressed tokens, decoding defaults), not one re-derived from a config the trainer set to no cache."""
    trained, _ = build_tiny_llamo(seed=0)
    trained.config.use_cache = False  # what Trainer does
    trained.generation_config.suppress_tokens = [trained.config.graph_token_id]
    trained.generation_config.max_new_tokens = 77
    rebuilt = rebuild_model(trained, full_state_dict(trained))
    assert rebuilt.generation_config.suppress_tokens == [trained.config.graph_token_id]
    assert rebuilt.generation_config.max_new_tokens == 77
    assert rebuilt.generation_config is not trained.generation_config


def test_stage0_base_llm_is_saved_with_its_cache_on(tmp_path):
    from llamo.base_llm import pretrain_base_llm

    data = tmp_path / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:4], questions_per_molecule=2, seed=0)
    data.write_text("\n".join(json.dumps(row) for row in rows))
    pretrain_base_llm(tmp_path / "llm", [str(data)], steps=1, seed=0)
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["use_cache"] is True
    assert json.loads((tmp_path / "llm" / "generation_config.json").read_text())["use_cache"] is True
    model, _ = build_llamo(str(tmp_path / "llm"), config_overrides={"gnn_hidden_size": 32})
    assert model.generation_config.use_cache is True


def test_converted_folder_generates_with_the_kv_cache(tmp_path):
    from test_convert import original_checkpoint, save_base_model_folder

    from llamo.convert import convert_llamo_checkpoint
    from processing_llamo import LlamoProcessor

    base = tmp_path / "base"
    base_config = save_base_model_folder(base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "use_cache": False}))  # a base LLM saved after training
    torch.save(original_checkpoint(base_config), tmp_path / "last.ckpt")
    convert_llamo_checkpoint(tmp_path / "last.ckpt", base, tmp_path / "converted")
    saved = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert saved["text_config"]["use_cache"] is True
    assert json.loads((tmp_path / "converted" / "generation_config.json").read_text())["use_cache"] is True
    model = LlamoForConditionalGeneration.from_pretrained(tmp_path / "converted")
    processor = LlamoProcessor.from_pretrained(tmp_path / "converted", trust_remote_code=True)
    assert not model.training
    calls = watch(model)
    inputs = processor.apply_chat_template(
        user_turn(MOLECULES["aspirin"], "Describe this molecule."), add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors="pt",
    )  # fmt: skip
    model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    assert_cached(calls, "converted")
