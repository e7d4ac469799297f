"""Training engines on 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2. Each run's saved folder must
reload and equal the single-process run of the same global batches (one process with gradient accumulation 2 sees
the same two micro-batches per step as two processes with one each).

DeepSpeed runs on CPU with DS_ACCELERATOR=cpu (gloo when oneCCL is absent; its shared-memory op is JIT-built with
ninja / g++ on the first run and cached in ~/.cache/torch_extensions). accelerate runs FSDP on CPU as DDP, so FSDP2
is driven directly by tests/engine_fsdp2.py (the wrap policy and `fully_shard` calls accelerate makes).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, read_data_smiles
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from llamo.instructions import generate_examples
from llamo.sft import main as train
from llamo.tiny import TINY_TEXT_CONFIG, load_tiny_tokenizer
from modeling_llamo import LlamoForConditionalGeneration


deepspeed = pytest.importorskip("deepspeed", reason="the engine tests need `pip install -e .[deepspeed]`")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
STEPS = ["--max_steps", "3", "--learning_rate", "1e-2", "--lora_dropout", "0", "--save_strategy", "no", "--seed", "0"]
TWO_PROCESSES = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
ONE_PROCESS = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]
# Adam's first steps move every weight by about the learning rate whatever the gradient's size, so reduction-order
# differences between engines show up at 1e-4 after 3 steps; a wrong or missing gather is off by 1e-2 or more.
ATOL = 5e-4


def accelerate_config(tmp_path: pathlib.Path, deepspeed_config: dict | None) -> pathlib.Path:
    """An accelerate config for 2 local processes: the repository's DDP one, or DeepSpeed with `deepspeed_config`."""
    if deepspeed_config is None:
        return ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
    ds_file = tmp_path / "ds_config.json"
    ds_file.write_text(json.dumps(deepspeed_config))
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        f"deepspeed_config:\n  deepspeed_config_file: {ds_file}\n  zero3_init_flag: {str(deepspeed_config['zero_optimization']['stage'] == 3).lower()}\n"
        "num_machines: 1\nnum_processes: 2\nmachine_rank: 0\nrdzv_backend: static\nsame_network: true\nuse_cpu: false\n"
    )
    return config


def launch(tmp_path: pathlib.Path, argv: list[str], deepspeed_config: dict | None = None) -> str:
    config = accelerate_config(tmp_path, deepspeed_config)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        str(ROOT / "train_sft.py"),
        *argv,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def zero_config(stage: int) -> dict:
    zero = {"stage": stage}
    if stage == 3:  # partition every parameter, however small (a 7B model's are all above the default threshold)
        zero.update(stage3_param_persistence_threshold=0, stage3_max_live_parameters=0, stage3_prefetch_bucket_size=0)
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    }


def weights(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def max_difference(reference: dict, other: dict, skip: tuple[str, ...] = ()) -> tuple[float, str]:
    keys = [key for key in reference if not any(part in key for part in skip)]
    assert set(keys) == {key for key in other if not any(part in key for part in skip)}
    differences = {key: (reference[key] - other[key]).abs().max().item() for key in keys}
    worst = max(differences, key=differences.get)
    return differences[worst], worst


def assert_like_reference(folder: pathlib.Path, reference: pathlib.Path, skip: tuple[str, ...] = (), label: str = "") -> None:
    saved, expected = weights(folder), weights(reference)
    assert all(tensor.numel() > 0 for tensor in saved.values())
    difference, key = max_difference(expected, saved, skip)
    print(f"\n[{label}] max |weight - single process| = {difference:.3g} ({key})")
    assert difference <= ATOL, key
    reloaded = LlamoForConditionalGeneration.from_pretrained(folder)  # and it loads as a model
    assert reloaded.model.graph_encoder is not None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, a stage-1 folder, and the single-process stage-2 reference every engine is compared with."""
    root = tmp_path_factory.mktemp("engines")
    data = root / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:16], questions_per_molecule=1, seed=0)
    data.write_text("\n".join(json.dumps(row) for row in rows))
    stage1 = root / "stage1"
    train(["--stage", "1", "--datasets", str(data), "--output_dir", str(stage1), *STEPS, *ONE_PROCESS])
    stage2 = ["--stage", "2", "--init_from", str(stage1), "--datasets", str(data), *STEPS]
    train([*stage2, "--output_dir", str(root / "reference"), *ONE_PROCESS])
    moved, _ = max_difference(weights(stage1), weights(root / "reference"))
    assert moved > 20 * ATOL  # the reference trained (0.05 here): equal to it means trained the same, not untouched
    return {"root": root, "data": data, "stage1": stage1, "stage2": stage2, "reference": root / "reference"}


def test_ddp_two_processes_equal_one_process(setup, tmp_path):
    launch(tmp_path, [*setup["stage2"], "--output_dir", str(tmp_path / "out"), *TWO_PROCESSES])
    assert_like_reference(tmp_path / "out", setup["reference"], label="DDP")


def test_deepspeed_zero2_two_processes_equal_one_process(setup, tmp_path):
    launch(tmp_path, [*setup["stage2"], "--output_dir", str(tmp_path / "out"), *TWO_PROCESSES], zero_config(2))
    assert_like_reference(tmp_path / "out", setup["reference"], label="ZeRO-2")


def test_deepspeed_zero3_saves_whole_weights_gathered_from_partitioned_parameters(setup, tmp_path):
    stdout = launch(tmp_path, [*setup["stage2"], "--output_dir", str(tmp_path / "out"), *TWO_PROCESSES], zero_config(3))
    assert "gathered from zero3 parameters" in stdout  # really partitioned at save time
    assert_like_reference(tmp_path / "out", setup["reference"], label="ZeRO-3 stage 2")


def test_deepspeed_zero3_builds_stage1_around_an_llm_and_saves_it_whole(setup, tmp_path):
    """Stage 1 as on GPUs: LLaMo built around a saved LLM inside `zero.Init` (PyG re-initializes the GIN's partitioned
    layers), trained, gathered from partitioned parameters. DeepSpeed initializes new modules in its own order, so
    the fresh GIN and projector start from other random values than in one process and are not compared; the
    frozen language model must come out exactly as the checkpoint went in."""
    tokenizer = load_tiny_tokenizer()
    llm = tmp_path / "llm"
    text_config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, **TINY_TEXT_CONFIG)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(text_config).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    argv = ["--stage", "1", "--llm", str(llm), "--datasets", str(setup["data"]), "--output_dir", str(tmp_path / "out"), *STEPS]
    stdout = launch(tmp_path, [*argv, *TWO_PROCESSES], zero_config(3))
    assert "gathered from zero3 parameters" in stdout
    saved, checkpoint = weights(tmp_path / "out"), load_file(llm / "model.safetensors")
    assert all(tensor.numel() > 0 for tensor in saved.values())
    language_model = {
        key.replace("model.", "model.language_model.", 1): value for key, value in checkpoint.items() if key.startswith("model.")
    }
    difference, key = max_difference(language_model, {k: v for k, v in saved.items() if k in language_model})
    print(f"\n[ZeRO-3 stage 1] max |frozen LLM weight - checkpoint| = {difference:.3g} ({key})")
    assert difference == 0
    reloaded = LlamoForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert reloaded.model.graph_encoder.layers[0].conv.nn[0].weight.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_fsdp2_two_processes_equal_one_process(setup, tmp_path):
    script = ROOT / "tests" / "engine_fsdp2.py"
    common = ["--init_from", str(setup["stage1"]), "--data", str(setup["data"])]
    single = subprocess.run(
        [sys.executable, str(script), "--no_shard", *common, "--output_dir", str(tmp_path / "reference")],
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *common,
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "fsdp2 units: ['LlamaDecoderLayer']; parameters are fsdp2" in sharded.stdout
    assert "gathered from fsdp2 parameters" in sharded.stdout
    assert_like_reference(tmp_path / "out", tmp_path / "reference", label="FSDP2")
