"""Shared fixtures: a tiny LLaMo built from configs (no downloads), molecules, prompts."""

from __future__ import annotations

import csv
import os
import pathlib
import sys

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tiny_llamo import build_tiny_llamo  # noqa: E402


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
