"""The evaluation runner: scoring per task family, the baselines, and the CLI on a folder written by train_sft.py."""

from __future__ import annotations

import csv
import json
import pathlib

import pytest

from llamo.baselines import MorganRetrieval, TrainMean
from llamo.data import PROPERTY_INSTRUCTIONS
from llamo.evaluation import Example, question_kind, score
from llamo.evaluation import main as evaluate_main
from llamo.sft import main as train


def example(index: int, task: str, smiles: str, question: str, reference: str) -> Example:
    return Example(index, task, [smiles], [{"role": "user", "content": question}], reference)


HOMO, GAP = PROPERTY_INSTRUCTIONS["homo"], PROPERTY_INSTRUCTIONS["gap"]


def test_score_picks_the_metrics_of_each_task_family():
    examples = [
        example(0, "caption", "CCO", "Describe this molecule.", "the molecule is an alcohol"),
        example(1, "iupac", "CCO", "Name it.", "ethanol"),
        example(2, "property", "CCO", HOMO, "-0.2500"),
        example(3, "property", "CCO", GAP, "0.3000"),
        example(4, "property", "CCN", GAP, "0.2000"),
        example(5, "forward_reaction", "CCO.CC(=O)O", "Product?", "CCOC(C)=O"),
        example(6, "facts", "CCO", "How many rings?", "0"),
    ]
    predictions = ["the molecule is an alcohol", "methanol", "-0.2", "no idea", "0.25", "CC(=O)OCC", "0"]
    results = score(examples, predictions)
    assert {task: entry["family"] for task, entry in results.items()} == {
        "caption": "text",
        "iupac": "name",
        "property": "property",
        "forward_reaction": "molecule",
        "facts": "exact",
    }
    assert results["caption"]["bleu2_word"] == 100 and "bleu2_llm" not in results["caption"]  # no tokenizer given
    assert results["iupac"]["exact_match"] == 0
    # property: |-0.2 - -0.25| = 0.05 and |0.25 - 0.2| = 0.05 parse, "no idea" does not -> MAE 0.05, 1 of 3 unparsable
    assert results["property"]["mae"] == pytest.approx(0.05) and results["property"]["unparsable"] == 1
    assert results["property"]["by_property"]["gap"] == pytest.approx(
        {
            "n": 2,
            "mae": 0.05,
            "parsed": 1,
            "unparsable": 1,
            "unparsable_share": 0.5,
            "invalid_references": 0,
            "distinct_answer_share": 1.0,
        }
    )
    # the ester written from the other end is the same molecule
    assert results["forward_reaction"]["exact_match_inchi"] == 1 and results["forward_reaction"]["exact_match"] == 0
    assert set(results["facts"]) == {"n", "family", "exact_match"} and results["facts"]["exact_match"] == 1
    # a task can be given a family by name
    assert score(examples[6:], ["0"], task_metrics={"facts": "property"})["facts"]["mae"] == 0
    with pytest.raises(ValueError, match="unknown metric family"):
        score(examples[6:], ["0"], task_metrics={"facts": "bleu"})


def test_question_kind_separates_properties():
    assert question_kind(example(0, "property", "C", HOMO, "1")) == "property/homo"
    assert question_kind(example(0, "caption", "C", "Describe this molecule.", "x")) == "caption"


def test_retrieval_answers_with_the_nearest_training_molecule_of_the_same_kind():
    train_examples = [
        example(0, "caption", "CCO", "Describe this molecule.", "an alcohol"),
        example(1, "caption", "c1ccccc1", "Describe this molecule.", "an arene"),
        example(2, "property", "CCO", HOMO, "-0.2000"),
        example(3, "property", "c1ccccc1", HOMO, "-0.3000"),
        example(4, "property", "CCO", GAP, "0.5000"),
    ]
    queries = [
        example(
            0, "caption", "CCCO", "What is this molecule? Describe it.", "x"
        ),  # propanol: shares CH3/CH2/OH bits with ethanol only
        example(1, "caption", "Cc1ccccc1", "Describe this molecule.", "x"),  # toluene: shares aromatic CH bits with benzene only
        example(2, "property", "CCCO", GAP, "x"),  # only the gap of ethanol is a gap answer
        example(3, "caption", "C1CC(", "Describe this molecule.", "x"),  # unparsable: most common answer, counted
    ]
    baseline = MorganRetrieval().fit(train_examples)
    answers, extras = baseline.predict(queries)
    assert answers == ["an alcohol", "an arene", "0.5000", "an alcohol"]
    assert [e["retrieved_smiles"] for e in extras] == ["CCO", "c1ccccc1", "CCO", None]
    assert 0 < extras[0]["similarity"] < 1 and baseline.fallbacks == 1
    with pytest.raises(ValueError, match="no training example of kind"):
        baseline.predict([example(0, "iupac", "C", "Name it.", "methane")])


def test_train_mean_baseline():
    train_examples = [example(i, "property", "C", HOMO, value) for i, value in enumerate(["-0.1", "-0.2", "-0.6"])]
    train_examples += [example(3, "iupac", "C", "Name it.", "methane"), example(4, "iupac", "CC", "Name it.", "methane")]
    answers, _ = TrainMean().fit(train_examples).predict([train_examples[0], train_examples[3]])
    assert answers == ["-0.3000", "methane"]  # (-0.1 - 0.2 - 0.6) / 3 = -0.3


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One small file per task type, in the training formats (captions and reactions written for this test)."""
    folder = tmp_path_factory.mktemp("tasks")
    molecules = {
        "CCO": "ethanol",
        "CC(=O)O": "acetic acid",
        "c1ccccc1": "benzene",
        "CCN": "ethanamine",
        "OCCO": "ethane-1,2-diol",
    }

    def write_tsv(name: str, header: list[str], rows: list[list]) -> pathlib.Path:
        with (folder / name).open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerows([header, *rows])
        return folder / name

    files = {
        "caption": write_tsv(
            "captions.tsv",
            ["CID", "SMILES", "description"],
            [[i, s, f"The molecule is {n}."] for i, (s, n) in enumerate(molecules.items())],
        ),
        "iupac": write_tsv("names.tsv", ["smiles", "iupac_name"], [[s, n] for s, n in molecules.items()]),
        "property": write_tsv("qm9.tsv", ["smiles", "homo", "lumo", "gap"], [[s, -0.25, 0.01, 0.26] for s in molecules]),
    }
    reactions = [("CCO.CC(=O)O", "CCOC(C)=O"), ("CCN.CC(=O)O", "CCNC(C)=O")]
    files["forward_reaction"] = folder / "reactions.jsonl"
    question = "What does this reaction give?"
    rows = [
        {"smiles": reactants, "task": "forward_reaction", "messages": [user(question), {"role": "assistant", "content": product}]}
        for reactants, product in reactions
    ]
    files["forward_reaction"].write_text("\n".join(map(json.dumps, rows)))
    return files


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def specs(task_files: dict[str, pathlib.Path]) -> list[str]:
    formats = {"caption": "caption", "iupac": "iupac", "property": "property", "forward_reaction": "messages"}
    return [f"{formats[task]}:{path}" for task, path in task_files.items()]


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, task_files) -> pathlib.Path:
    """A stage-2 folder written by train_sft.py (2 steps from the tiny model) on all four task types."""
    folder = tmp_path_factory.mktemp("stage2")
    options = [
        "--stage",
        "2",
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
    ]
    train([*options, "--datasets", *specs(task_files), "--output_dir", str(folder)])
    return folder


def test_cli_evaluates_a_train_sft_folder_on_every_task_type(tmp_path, task_files, trained_folder):
    options = ["--max_new_tokens", "6", "--batch_size", "8", "--output_dir", str(tmp_path)]
    results = evaluate_main(["--model", str(trained_folder), "--datasets", *specs(task_files), *options])
    tasks = results["tasks"]
    assert {task: tasks[task]["n"] for task in tasks} == {"caption": 5, "iupac": 5, "property": 15, "forward_reaction": 2}
    text_keys = {f"{metric}_{tokens}" for metric in ("bleu2", "bleu4", "meteor") for tokens in ("word", "llm")}
    assert text_keys | {"rouge1", "rouge2", "rougeL"} <= set(tasks["caption"])
    assert "exact_match" in tasks["iupac"] and "meteor_llm" in tasks["iupac"]
    assert tasks["property"]["parsed"] + tasks["property"]["unparsable"] == 15
    assert set(tasks["property"]["by_property"]) == {"homo", "lumo", "gap"}
    assert tasks["forward_reaction"]["valid"] + tasks["forward_reaction"]["invalid"] == 2
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 27 and set(rows[0]) == {"id", "task", "smiles", "prompt", "reference", "prediction"}
    assert "<graph>" in rows[0]["prompt"] and rows[0]["smiles"] and isinstance(rows[0]["prediction"], str)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"] == json.loads(json.dumps(tasks)) and saved["rows_skipped"]["total"] == 0
    assert saved["generation"] == {"do_sample": False, "num_beams": 1, "batch_size": 8, "max_new_tokens": 6}


def test_cli_beam_search_and_retrieval_baseline(tmp_path, task_files, trained_folder):
    spec = f"iupac:{task_files['iupac']}"
    options = ["--max_new_tokens", "4", "--num_beams", "2", "--max_examples", "3", "--output_dir", str(tmp_path / "beams")]
    beams = evaluate_main(["--model", str(trained_folder), "--datasets", spec, *options])
    assert beams["tasks"]["iupac"]["n"] == 3 and beams["generation"]["num_beams"] == 2
    # retrieval from the same file answers every molecule with its own name (similarity 1)
    options = ["--train_datasets", spec, "--datasets", spec, "--output_dir", str(tmp_path / "nn")]
    retrieval = evaluate_main(["--baseline", "morgan_nn", *options])
    assert retrieval["tasks"]["iupac"]["exact_match"] == 1 and retrieval["kind"] == "baseline"
    rows = [json.loads(line) for line in (tmp_path / "nn" / "predictions.jsonl").read_text().splitlines()]
    assert {row["similarity"] for row in rows} == {1.0}


def test_summary_table_has_one_row_per_task_and_headline_metric():
    from llamo.evaluation import summary_table

    tasks = {
        "iupac": {"n": 4, "family": "name", "exact_match": 0.25, "bleu2_word": 10.0, "meteor_word": 0.5},
        "property": {"n": 3, "family": "property", "mae": None, "unparsable_share": 1.0},
    }
    assert summary_table(tasks).splitlines() == [
        "| task | n | metric | value |",
        "|---|---:|---|---:|",
        "| iupac | 4 | exact_match | 0.25 |",
        "| iupac | 4 | bleu2_word | 10 |",
        "| iupac | 4 | meteor_word | 0.5 |",
        "| property | 3 | mae | n/a |",
        "| property | 3 | unparsable_share | 1 |",
    ]


def test_evaluation_results_go_into_the_card_metadata_and_a_table(tmp_path):
    from huggingface_hub import ModelCard

    from llamo.model_card import add_evaluation_to_card

    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# model\n")
    results = {
        "examples": 7,
        "tasks": {"property": {"n": 7, "family": "property", "mae": 0.25, "parsed": 5, "unparsable_share": 2 / 7}},
    }
    add_evaluation_to_card(tmp_path, results, "qm9.tsv")
    card = ModelCard.load(tmp_path / "README.md")
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("mae", 0.25),
        ("parsed", 5.0),
        ("unparsable_share", 2 / 7),
    ]
    assert card.data.license == "mit" and "| qm9.tsv (property) | mae | 0.25 |" in card.text
