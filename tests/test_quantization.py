"""QLoRA: 4-bit / 8-bit loading quantizes the language model only; generation and a stage-2 QLoRA step on CPU.

bitsandbytes >= 0.49 runs 4-bit and 8-bit layers on CPU. Its CPU 4-bit kernel needs layer widths divisible by 32,
so these tests use an MLP width of 128 (the default tiny model's 176 is not).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MOLECULES, user_turn

from llamo.tiny import load_tiny_tokenizer, tiny_llamo_config
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor


bitsandbytes = pytest.importorskip("bitsandbytes")
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tokenizer = load_tiny_tokenizer()
    config = tiny_llamo_config(tokenizer)
    config.text_config.intermediate_size = 128
    torch.manual_seed(0)
    model = LlamoForConditionalGeneration(config).eval()
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    path = tmp_path_factory.mktemp("llamo-128")
    model.save_pretrained(path)
    LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=config.num_graph_tokens).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "quantization, layer",
    [
        (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32), "Linear4bit"),
        (BitsAndBytesConfig(load_in_8bit=True), "Linear8bitLt"),
    ],
)
def test_quantized_loading_keeps_the_graph_side_unquantized_and_generates(folder, quantization, layer):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, quantization_config=quantization)
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["model.language_model.layers.0.self_attn.q_proj"] == layer
    graph_side = {kind for name, kind in kinds.items() if name.startswith(("model.graph_encoder", "model.projector"))}
    assert "Linear" in graph_side and not graph_side & {"Linear4bit", "Linear8bitLt"}
    processor = LlamoProcessor.from_pretrained(folder)
    inputs = processor.apply_chat_template(user_turn(MOLECULES["aspirin"], "Describe."), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")  # fmt: skip
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_train_sft_load_in_4bit_runs_a_stage2_qlora_step(folder, tmp_path):
    from llamo.instructions import generate_examples
    from llamo.sft import main as train

    data = tmp_path / "facts.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(row) for row in generate_examples([MOLECULES["aspirin"], MOLECULES["caffeine"], "CCO", "CCN"], seed=0)
        )
    )
    output = tmp_path / "qlora"
    summary = train(["--stage", "2", "--init_from", str(folder), "--load_in_4bit", "--keep_adapter", "--datasets", str(data),
                     "--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no"])  # fmt: skip
    assert summary["steps"] == 2 and summary["trainable_parameters"]["lora"] > 0
    assert summary["trainable_parameters"]["graph_encoder"] == 0
    assert (output / "adapter_config.json").is_file()
    with pytest.raises(ValueError, match="--keep_adapter"):
        train(
            [
                "--stage",
                "2",
                "--init_from",
                str(folder),
                "--load_in_4bit",
                "--datasets",
                str(data),
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
