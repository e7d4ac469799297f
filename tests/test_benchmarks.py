"""The benchmark helpers measure what they claim (no timings are checked here: those live in benchmarks/)."""

from __future__ import annotations

import sys

import pytest
import torch
from bench_memory import growth  # benchmarks/ is on sys.path (conftest.py)
from conftest import MOLECULES
from peak_rss import run_with_peak_rss

from configuration_llamo import GRAPH_INPUT_NAMES

from common import Target, chat_batch, interleaved_timings, processor_collate, text_only_inputs


def test_text_only_inputs_replace_every_slot_and_keep_the_length(tiny):
    model, processor = tiny
    inputs = chat_batch(processor, [MOLECULES["aspirin"], MOLECULES["caffeine"]])
    slot = model.config.graph_token_id
    text = text_only_inputs(inputs, slot, filler_token_id=5)
    assert not set(GRAPH_INPUT_NAMES) & set(text)
    assert text["input_ids"].shape == inputs["input_ids"].shape and not (text["input_ids"] == slot).any()
    assert torch.equal(text["input_ids"][inputs["input_ids"] != slot], inputs["input_ids"][inputs["input_ids"] != slot])
    assert (inputs["input_ids"] == slot).any()  # the original is left alone


def test_processor_collate_labels_only_the_answers_and_trains(tiny):
    model, processor = tiny
    examples = [{"smiles": MOLECULES["aspirin"], "answer": "An ester."}, {"smiles": MOLECULES["methane"], "answer": "A gas."}]
    batch = processor_collate(examples, processor)
    assert set(GRAPH_INPUT_NAMES) <= set(batch)
    supervised = batch["labels"] != -100
    assert 0 < supervised.sum() < batch["attention_mask"].sum()
    assert not (supervised & (batch["input_ids"] == model.config.graph_token_id)).any()
    answer = processor.tokenizer.decode(batch["input_ids"][0][supervised[0]])
    assert "An ester." in answer
    assert torch.isfinite(model(**batch).loss)


def test_interleaved_timings_runs_every_method_on_every_item_each_repeat():
    seen = {"a": [], "b": []}
    timings = interleaved_timings({name: seen[name].extend for name in seen}, list(range(10)), chunk_size=3, repeats=2)
    assert seen["a"] == seen["b"] == list(range(10)) * 2
    assert all(len(values) == 2 and min(values) >= 0 for values in timings.values())


def test_memory_growth_is_read_after_warm_up():
    flat = [(step, 100.0 + (50.0 if step == 0 else 0.0)) for step in range(0, 101, 5)]
    assert growth(flat)[1] == pytest.approx(0.0)
    leaking = [(step, 100.0 + step * 0.1) for step in range(0, 101, 5)]  # 0.1 MiB per step
    _, grown, slope = growth(leaking)
    assert grown > 5 and slope == pytest.approx(102.4)


def test_targets_compare_in_the_right_direction():
    assert Target("t", 1.1, 1.2).met and not Target("t", 1.3, 1.2).met
    assert Target("t", 6.0, 5.0, at_least=True).met and not Target("t", 4.0, 5.0, at_least=True).met
    assert Target("t", 9.9, None).row()[-1] == "info"


def test_peak_rss_reports_the_child_and_its_exit_status():
    result = run_with_peak_rss([sys.executable, "-c", "import sys; data = bytearray(64 * 2**20); sys.exit(3)"])
    assert result["exit_status"] == 3
    assert result["peak_rss_mib"] >= 64


def save_tiny_llm(folder) -> str:
    """A tiny random Llama with the tiny tokenizer, saved as an LLM folder for `--llm`."""
    from transformers import LlamaForCausalLM

    from llamo.tiny import load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_llm_option_runs_both_benchmarks_around_a_saved_llm(tmp_path):
    """`--llm FOLDER` (as `--llm smollm2` does with the converted SmolLM2) builds LLaMo around the saved LLM and
    measures it against that LLM, stage 1 and stage 2 in training, with minimal settings (no timing checked)."""
    import bench_generation
    import bench_training

    llm = save_tiny_llm(tmp_path / "llm")
    generation = bench_generation.main(["--llm", llm, "--repeats", "1", "--batch_sizes", "2", "--new_tokens", "2"])
    training = bench_training.main(
        ["--llm", llm, "--repeats", "1", "--batch_size", "2", "--num_batches", "1", "--rss_steps", "0", "--bf16"]
    )
    names = [target.name for target in generation + training]
    assert all(name.startswith("llm: ") for name in names)
    assert any("end to end" in name for name in names)
    assert any("stage-1 step incl. data path" in name for name in names)
    assert any("stage-2 step incl. data path" in name for name in names)
    assert all(target.ratio > 0 for target in generation + training)
    end_to_end = next(target for target in generation if "end to end" in target.name)
    assert end_to_end.limit == 1.05


def test_cpu_training_settings_each_run_in_their_own_process_with_their_environment(tmp_path):
    """bench_cpu_training: a worker process per setting, the malloc thresholds in its environment only where the
    setting says so, bf16 autocast and torch.compile as named (no timing checked)."""
    import bench_cpu_training

    llm = save_tiny_llm(tmp_path / "llm")
    runs = bench_cpu_training.main(["--llm", llm, "--steps", "1", "--threads", "1", "--settings", "fp32", "bf16+malloc+compile"])
    assert list(runs) == ["fp32", "bf16+malloc+compile"]
    assert runs["fp32"][0]["setting"] == {"bf16": False, "compiled": False, "mmap_threshold": None}
    assert runs["bf16+malloc+compile"][0]["setting"] == {"bf16": True, "compiled": True, "mmap_threshold": str(1 << 34)}
    assert all(run[0]["tokens"][0] > 0 and run[0]["step_s"][0] > 0 for run in runs.values())


def test_llm_training_peak_rss_of_one_side_runs_in_its_own_process(tmp_path):
    """The peak-RSS run of a side: a new process under peak_rss.py; RSS after the build <= the steps' peak <= the
    process's peak."""
    import argparse

    import bench_training

    args = argparse.Namespace(
        llm=save_tiny_llm(tmp_path / "llm"), batch_size=2, num_batches=1, threads=1, rss_steps=1, bf16=False, collate=None
    )
    memory = bench_training.side_peak_rss(args, "bare", tmp_path)
    assert memory["side"] == "bare"
    steps_peak = memory["training_peak_mib"] or memory["process_peak_mib"]  # None where the kernel cannot reset it
    assert 0 < memory["after_build_mib"] <= steps_peak <= memory["process_peak_mib"] + 1


@pytest.mark.parametrize("stage", [1, 2])
def test_llm_training_stages_train_what_train_sft_trains(stage):
    """The real-LLM training benchmarks' stages (written out in benchmarks/common.py, not imported) = train_sft.py's
    (`llamo.sft`) `set_trainable` and `lora_config` with scripts/train_smollm2.py's LoRA arguments: the same LoRA
    config, the same trainable tensors."""
    from peft import get_peft_model

    from llamo import sft
    from llamo.tiny import build_tiny_llamo

    import common

    arguments = sft.LlamoModelConfig(
        stage=stage,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        lora_target_modules=["all-linear"],
        train_graph_encoder=stage == 2,
    )
    theirs, _ = build_tiny_llamo(seed=0)
    sft.set_trainable(theirs, arguments)
    ours, _ = build_tiny_llamo(seed=0)
    if stage == 2:
        config = sft.lora_config(theirs, arguments)
        assert common.stage_lora_config(ours).to_dict() == config.to_dict()
        theirs = get_peft_model(theirs, config)
    ours = common.llamo_for_stage(ours, stage)

    def trainable(model):
        return sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)

    assert trainable(ours) == trainable(theirs) and any("graph_encoder" in name for name in trainable(ours))
    assert ours.training
