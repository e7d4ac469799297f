"""The benchmark helpers measure what they claim (no timings are checked here: those live in benchmarks/)."""

from __future__ import annotations

import sys

import pytest
import torch
from bench_memory import growth  # benchmarks/ is on sys.path (conftest.py)
from bench_training import processor_collate
from conftest import MOLECULES
from peak_rss import run_with_peak_rss

from configuration_llamo import GRAPH_INPUT_NAMES

from common import Target, chat_batch, interleaved_timings, text_only_inputs


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
