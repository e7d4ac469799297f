"""Data formats and metric families are registries of functions with one signature: a new one is one entry."""

from __future__ import annotations

import inspect
import json
import random

import pytest

from llamo import data, evaluation, metrics
from llamo.data import FORMATS, Row, Skip, detect_format, load_source
from llamo.examples import Example
from llamo.metrics import METRIC_FAMILIES


def test_every_format_has_one_signature_and_a_detector():
    for name, (matches, convert) in FORMATS.items():
        assert list(inspect.signature(convert).parameters) == ["row", "rng"], name
        assert callable(matches)


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["smiles", "messages"], "messages"),
        (["smiles", "instruction", "output"], "instruction"),
        (["instruction", "input", "output"], "mol_instructions"),
        (["smiles", "iupac_name"], "iupac"),
        (["smiles", "description", "iupac"], "iupac"),  # iupac is detected before caption
        (["smiles", "HOMO", "gap"], "property"),
        (["SMILES", "description"], "caption"),
    ],
)
def test_detection_follows_the_registry_order(columns, expected):
    assert detect_format(columns) == expected


def test_formats_convert_rows_through_the_row_view():
    names = {"smiles": "SMILES", "description": "description"}
    row = Row({"SMILES": " C\\\\C ", "description": "A molecule."}, names)
    (conversation,) = FORMATS["caption"][1](row, random.Random(0))
    assert conversation["smiles"] == ["C\\C"] and conversation["messages"][1] == {"role": "assistant", "content": "A molecule."}
    assert FORMATS["caption"][1](Row({"SMILES": None, "description": "x"}, names), random.Random(0)) == Skip(
        "missing field", "smiles"
    )


def test_a_new_format_is_one_function_and_one_entry(monkeypatch, tmp_path):
    def logp_format(row: Row, rng: random.Random) -> list[dict] | Skip:
        value = row.get("logp")
        if value is None:
            return Skip("missing field", "logp")
        return [
            {
                "smiles": [row.get("smiles")],
                "messages": [{"role": "user", "content": "logP?"}, {"role": "assistant", "content": f"{value:.1f}"}],
            }
        ]

    registry = {"logp": (lambda names: "logp" in names, logp_format), **FORMATS}  # first: detected before the others
    monkeypatch.setattr(data, "FORMATS", registry)
    path = tmp_path / "logp.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [{"smiles": "CCO", "logp": -0.31}, {"smiles": "C", "logp": None}]))
    dataset, skipped = load_source(data.DataSource(str(path)))
    assert dataset["task"] == ["logp"] and dataset["messages"][0][1]["content"] == "-0.3"
    assert dict(skipped.counts) == {"auto:logp.jsonl: missing field": 1}


def test_every_metric_family_has_one_signature():
    for name, family in METRIC_FAMILIES.items():
        parameters = inspect.signature(family).parameters
        assert list(parameters)[:3] == ["predictions", "references", "tokenizer"], name
        assert parameters["tokenizer"].default is None, name


def test_score_calls_every_family_the_same_way(monkeypatch):
    calls = []

    def length_metrics(predictions, references, tokenizer=None):
        calls.append(tokenizer)
        return {"mean_length_ratio": sum(len(p) / len(r) for p, r in zip(predictions, references)) / len(predictions)}

    monkeypatch.setitem(metrics.METRIC_FAMILIES, "length", length_metrics)
    examples = [Example(0, "summary", ["C"], [{"role": "user", "content": "?"}], "four"), Example(1, "summary", ["C"], [], "ab")]
    results = evaluation.score(examples, ["four", "abcd"], tokenizer="TOKENIZER", task_metrics={"summary": "length"})
    assert results["summary"] == {"n": 2, "family": "length", "exact_match": 0.5, "mean_length_ratio": 1.5}
    assert calls == ["TOKENIZER"]
    assert evaluation.score(examples[:1], ["Four."])["summary"] == {"n": 1, "family": "exact", "exact_match": 1.0}
