"""Checkpoints of the trained part only (`llamo.checkpoints`, `llamo.sft.LlamoSFTTrainer._save` /
`_load_from_checkpoint`): stage 1 writes the graph side, not the frozen LLM, and a run stopped at a checkpoint and
resumed ends where the uninterrupted run ends; stage 2's PEFT checkpoints hold the adapter and its modules to save."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from conftest import read_data_smiles
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from llamo.checkpoints import (
    TRAINABLE_MARKER,
    is_trainable_only,
    load_trainable_state,
    trainable_only_checkpoints,
    trainable_state_dict,
    write_trainable_marker,
)
from llamo.instructions import generate_examples
from llamo.sft import main as train
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration


GRAPH_SIDE = ("model.graph_encoder.", "model.projector.")
FAST = ["--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_train_samples", "24", "--seed", "0"]
CHECKPOINTED = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--keep_checkpoints", *FAST]


class StopAtStep(TrainerCallback):
    """Ends training after `step` (its checkpoint written), like a job whose time ran out."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:30], questions_per_molecule=2, seed=0)
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return str(path)


def straight_and_resumed(argv: list[str], workspace: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The same run twice: 4 steps straight, and stopped after step 2 then resumed (`--resume_from_checkpoint last`)."""
    straight, resumed = workspace / "straight", workspace / "resumed"
    assert train([*argv, "--output_dir", str(straight)])["steps"] == 4
    assert train([*argv, "--output_dir", str(resumed)], callbacks=[StopAtStep(2)])["steps"] == 2
    assert sorted(path.name for path in resumed.glob("checkpoint-*")) == ["checkpoint-2"]
    assert train([*argv, "--output_dir", str(resumed), "--resume_from_checkpoint", "last"])["steps"] == 4
    return straight, resumed


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory, facts_file) -> tuple[pathlib.Path, pathlib.Path]:
    return straight_and_resumed(["--stage", "1", "--datasets", facts_file, *CHECKPOINTED], tmp_path_factory.mktemp("stage1"))


@pytest.fixture(scope="module")
def stage2_runs(tmp_path_factory, facts_file, stage1_runs) -> tuple[pathlib.Path, pathlib.Path]:
    stage1, _ = stage1_runs
    argv = ["--stage", "2", "--init_from", str(stage1), "--train_graph_encoder", "--datasets", facts_file, *CHECKPOINTED]
    return straight_and_resumed(argv, tmp_path_factory.mktemp("stage2"))


def graph_side_keys(model) -> set[str]:
    return {key for key in model.state_dict() if key.startswith(GRAPH_SIDE)}


def test_stage1_checkpoints_hold_the_graph_side_only(stage1_runs):
    straight, _ = stage1_runs
    expected = graph_side_keys(build_tiny_llamo(seed=0)[0])
    assert any("running_mean" in key for key in expected)  # the GIN's BatchNorm statistics are part of it
    for step in (2, 4):
        checkpoint = straight / f"checkpoint-{step}"
        saved = load_file(str(checkpoint / "model.safetensors"))
        assert set(saved) == expected, step
        assert is_trainable_only(checkpoint) and (checkpoint / "optimizer.pt").is_file()
    # the final folder is the whole model, not a trainable-only one
    assert not is_trainable_only(straight)
    whole = load_file(str(straight / "model.safetensors"))
    assert any(key.startswith("model.language_model.") for key in whole)
    step2 = load_file(str(straight / "checkpoint-2" / "model.safetensors"))
    assert any(not torch.equal(step2[key], whole[key]) for key in step2)  # step 2's weights, not the final ones


def test_the_trainable_only_marker_names_the_saved_keys(stage1_runs):
    straight, _ = stage1_runs
    checkpoint = straight / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert json.loads((checkpoint / TRAINABLE_MARKER).read_text())["keys"] == sorted(saved)


def assert_same_weights(resumed: pathlib.Path, straight: pathlib.Path, keys: set[str] | None = None) -> None:
    expected = LlamoForConditionalGeneration.from_pretrained(straight).state_dict()
    got = LlamoForConditionalGeneration.from_pretrained(resumed).state_dict()
    for key in keys if keys is not None else expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_stage1_interrupted_and_resumed_equals_the_uninterrupted_run(stage1_runs):
    straight, resumed = stage1_runs
    initial = build_tiny_llamo(seed=0)[0].state_dict()
    keys = graph_side_keys(LlamoForConditionalGeneration.from_pretrained(straight))
    assert_same_weights(resumed, straight, keys)
    final = load_file(str(straight / "model.safetensors"))
    assert all(not torch.equal(final[key], initial[key]) for key in keys if "weight" in key)  # it did train


def test_stage2_checkpoints_are_peft_adapters_with_the_modules_they_save(stage2_runs):
    straight, _ = stage2_runs
    checkpoint = straight / "checkpoint-2"
    assert not is_trainable_only(checkpoint) and not (checkpoint / "model.safetensors").exists()
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert any("lora_A" in key for key in saved) and any("lora_B" in key for key in saved)
    assert any(".projector." in key for key in saved) and any(".graph_encoder." in key for key in saved)
    assert any("running_var" in key for key in saved)  # the trained GIN's BatchNorm statistics
    assert not any("embed_tokens" in key or "mlp.up_proj.weight" in key for key in saved)  # no frozen LLM weight


def test_stage2_interrupted_and_resumed_equals_the_uninterrupted_run(stage2_runs):
    straight, resumed = stage2_runs
    assert_same_weights(resumed, straight)  # merged LoRA, projector and GIN: every weight of the final model


def test_resuming_with_other_trained_parts_is_refused(stage1_runs, facts_file, tmp_path):
    """A checkpoint written without `--train_input_embeddings` holds no embedding rows: resuming with the flag would
    train from untrained embeddings and a fresh optimizer state; the run stops, naming what is missing."""
    straight, _ = stage1_runs
    (tmp_path / "checkpoint-2").symlink_to(straight / "checkpoint-2", target_is_directory=True)
    argv = ["--stage", "1", "--datasets", facts_file, "--output_dir", str(tmp_path), "--train_input_embeddings",
            "--resume_from_checkpoint", "last", *CHECKPOINTED]  # fmt: skip
    with pytest.raises(ValueError, match=r"does not hold what this model trains: missing \['model\.language_model\.embed_tokens"):
        train(argv)


def stage1_model(train_embeddings: bool = False):
    model, _ = build_tiny_llamo(seed=0)
    model.requires_grad_(False)
    model.model.graph_encoder.requires_grad_(True)
    model.model.projector.requires_grad_(True)
    if train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(True)
    return model


def write_trainable_checkpoint(model, folder: pathlib.Path) -> dict[str, torch.Tensor]:
    folder.mkdir()
    state = trainable_state_dict(model)
    save_file(state, str(folder / "model.safetensors"))
    write_trainable_marker(folder, state)
    return state


def test_load_trainable_state_loads_exactly_the_saved_part(tmp_path):
    """Trained values (parameters and a BatchNorm statistic) land; nothing frozen changes."""
    trained = stage1_model()
    batch_norm = next(module for module in trained.modules() if isinstance(module, torch.nn.BatchNorm1d))
    with torch.no_grad():
        for parameter in trained.model.projector.parameters():
            parameter.add_(1.0)
        batch_norm.running_mean.add_(3.0)
    state = write_trainable_checkpoint(trained, tmp_path / "checkpoint-1")
    assert any(key.endswith("running_mean") for key in state)
    fresh = stage1_model()
    frozen_before = {k: v.clone() for k, v in fresh.state_dict().items() if k not in state}
    load_trainable_state(fresh, tmp_path / "checkpoint-1")
    after = fresh.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    for key, value in frozen_before.items():
        assert torch.equal(after[key], value), key


def test_load_trainable_state_refuses_keys_the_model_does_not_train(tmp_path):
    write_trainable_checkpoint(stage1_model(train_embeddings=True), tmp_path / "with-embeddings")
    with pytest.raises(ValueError, match=r"not trained here \['model\.language_model\.embed_tokens\.weight'\] \(1\)"):
        load_trainable_state(stage1_model(), tmp_path / "with-embeddings")
    write_trainable_checkpoint(stage1_model(), tmp_path / "graph-only")
    with pytest.raises(ValueError, match=r"missing \['model\.language_model\.embed_tokens\.weight'\] \(1\).*same stage"):
        load_trainable_state(stage1_model(train_embeddings=True), tmp_path / "graph-only")


def test_only_partly_frozen_whole_models_get_trainable_only_checkpoints():
    assert trainable_only_checkpoints(stage1_model())
    everything, _ = build_tiny_llamo(seed=0)
    assert not trainable_only_checkpoints(everything)  # all trainable: a whole checkpoint is the trained part
    assert not trainable_only_checkpoints(everything.requires_grad_(False))  # nothing trains
    peft_model = get_peft_model(stage1_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert not trainable_only_checkpoints(peft_model)  # PEFT checkpoints are adapters already
