"""scripts/gpu_check.sh: its CPU smoke mode runs every phase of the GPU check; the GPU run itself is pending (no GPU)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from conftest import ROOT
from transformers import LlamaConfig, LlamaForCausalLM

from llamo.gpu_check import BILLION_CONFIG


def test_the_gpu_model_is_llama_shaped_and_about_one_billion_parameters():
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, **BILLION_CONFIG))
    assert 0.9e9 < model.num_parameters() < 1.2e9


def test_without_a_gpu_the_check_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--output_dir", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "no GPU found" in result.stderr


def test_cpu_smoke_run_covers_every_phase(tmp_path):
    pytest.importorskip("deepspeed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--tiny", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    runs = [entry["run"] for entry in report["results"]]
    assert runs == ["stage 1, sdpa", "stage 2 (LoRA), sdpa", "stage 2, DeepSpeed ZeRO-2", "generate batch 8"]
    for entry in report["results"]:
        assert entry["step_s"] > 0 and entry["tokens_per_s"] > 0 and entry["peak_gpu_memory_gib"] is None
    assert "tokens/s" in result.stdout and (tmp_path / "stage2" / "model.safetensors").is_file()
