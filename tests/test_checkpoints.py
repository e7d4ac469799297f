"""`--resume_from_checkpoint last` picks the newest *complete* checkpoint (issue 18 problem 7).

Torn checkpoints are simulated the way a kill or a full disk leaves them: `Trainer` writes the weights, then the
optimizer, scheduler and RNG state, and `trainer_state.json` last."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
from conftest import read_data_smiles
from safetensors.torch import save_file

from llamo.checkpoints import checkpoint_problem, last_complete_checkpoint, resolve_resume


def write_checkpoint(folder: pathlib.Path, step: int, weights: str = "model.safetensors") -> pathlib.Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.full((64, 64), float(step))}, str(path / weights))
    torch.save({"state": {0: {"exp_avg": torch.zeros(64, 64)}}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"python": step}, path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


TEARS = {
    "killed after the weights": lambda p: [
        (p / name).unlink() for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")
    ],
    "killed after the optimizer": lambda p: [(p / name).unlink() for name in ("rng_state.pth", "trainer_state.json")],
    "truncated weights": lambda p: truncate(p / "model.safetensors"),
    "missing weights": lambda p: (p / "model.safetensors").unlink(),
    "truncated optimizer (disk full)": lambda p: truncate(p / "optimizer.pt"),
    "torn trainer_state.json": lambda p: truncate(p / "trainer_state.json"),
    "empty trainer_state.json": lambda p: (p / "trainer_state.json").write_text(""),
}


def test_a_complete_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(write_checkpoint(tmp_path, 2)) is None
    assert checkpoint_problem(write_checkpoint(tmp_path, 3, weights="adapter_model.safetensors")) is None


@pytest.mark.parametrize("tear", TEARS)
def test_last_skips_a_torn_newest_checkpoint_and_names_it(tmp_path, tear):
    complete = write_checkpoint(tmp_path, 2)
    torn = write_checkpoint(tmp_path, 10)  # numeric order: checkpoint-10 is newer than checkpoint-2
    TEARS[tear](torn)
    assert checkpoint_problem(torn) is not None
    with pytest.warns(
        UserWarning, match=r"resuming from checkpoint-2; skipped incomplete newer checkpoint\(s\): checkpoint-10 \("
    ):
        assert last_complete_checkpoint(tmp_path) == str(complete)


def test_no_complete_checkpoint_means_a_fresh_start_with_a_warning(tmp_path):
    TEARS["torn trainer_state.json"](write_checkpoint(tmp_path, 4))
    with pytest.warns(UserWarning, match="no complete checkpoint"):
        assert resolve_resume("last", tmp_path) is None
    assert resolve_resume("last", tmp_path / "missing") is None
    assert resolve_resume("some/explicit/checkpoint-3", tmp_path) == "some/explicit/checkpoint-3"
    assert resolve_resume(None, tmp_path) is None


def test_sharded_weights_need_every_shard(tmp_path):
    path = write_checkpoint(tmp_path, 2)
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"weight": "model-00001-of-00002.safetensors", "bias": "model-00002-of-00002.safetensors"},
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoint_problem(path) == "weight shard(s) missing: model-00002-of-00002.safetensors"
    save_file({"bias": torch.zeros(3)}, str(path / "model-00002-of-00002.safetensors"))
    assert checkpoint_problem(path) is None


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory) -> str:
    from llamo.instructions import generate_examples

    path = tmp_path_factory.mktemp("data") / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:30], questions_per_molecule=2, seed=0)
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return str(path)


def test_training_resumes_from_the_last_complete_checkpoint_bit_exactly(tmp_path, facts_file):
    from llamo.sft import main as train
    from modeling_llamo import LlamoForConditionalGeneration

    argv = ["--stage", "1", "--datasets", facts_file, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_train_samples", "24"]  # fmt: skip
    straight = tmp_path / "straight"
    train([*argv, "--output_dir", str(straight), "--keep_checkpoints", "true"])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    truncate(resumed / "checkpoint-4" / "model.safetensors")  # a kill while writing the newest weights
    with pytest.warns(
        UserWarning, match=r"skipped incomplete newer checkpoint\(s\): checkpoint-4 \(model.safetensors does not open"
    ):
        summary = train([*argv, "--output_dir", str(resumed), "--resume_from_checkpoint", "last"])
    assert summary["steps"] == 4
    expected = LlamoForConditionalGeneration.from_pretrained(straight).state_dict()
    got = LlamoForConditionalGeneration.from_pretrained(resumed).state_dict()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
