"""The real-data benchmark's pieces on small stand-ins: splits, the missing-data exit, the report and its block in the
results page (docs/results.md).

The benchmark itself (`benchmarks/run_benchmark.py`) trains for many minutes and is not run here."""

from __future__ import annotations

import json
import pathlib

import pytest
from conftest import ROOT, read_data_smiles
from run_benchmark import main as run_benchmark

from llamo.data import DataSource, load_source

from quality import data as split_module  # benchmarks/ is on sys.path (conftest.py), as for the script itself
from quality.data import canonical, prepare_splits, read_rows
from quality.report import MARKERS, build_report, update_readme, write_report


@pytest.fixture
def shared(tmp_path) -> pathlib.Path:
    """A stand-in for ../shared/data: real SMILES, made-up captions, names and numbers."""
    root = tmp_path / "shared"
    for folder in ("chebi20", "pubchem_iupac", "qm9"):
        (root / folder).mkdir(parents=True)
    smiles = read_data_smiles("chebi20_smiles.tsv")[:60] + ["C/C=C\\\\C"]  # ChEBI-20 doubles backslashes
    captions = ["CID\tSMILES\tdescription"] + [f"{i}\t{s}\tThe molecule is test molecule {i}." for i, s in enumerate(smiles)]
    (root / "chebi20" / "validation.txt").write_text("\n".join(captions) + "\n")
    names = ["cid\tSMILES\tdescription", "1\tCCO\tethanol", "2\tCCCO\tpropan-1-ol"]
    (root / "pubchem_iupac" / "train.txt").write_text("\n".join(names) + "\n")
    # OCC is ethanol again, written from the other end: it must leave the dev set
    (root / "pubchem_iupac" / "validation.txt").write_text("cid\tSMILES\tdescription\n3\tOCC\tethanol\n4\tCCCCO\tbutan-1-ol\n")
    qm9 = ["Index,SMILES,HOMO_au,LUMO_au,HOMO_LUMO_gap_au"] + [f"{i},{'C' * i}O,-0.2{i},0.0{i},0.2{i}" for i in range(1, 9)]
    (root / "qm9" / "qm9_homo_lumo_gap.csv").write_text("\n".join(qm9) + "\n")
    return root


def test_splits_are_disjoint_by_molecule_and_readable_by_the_loaders(shared, tmp_path, monkeypatch):
    monkeypatch.setattr(split_module, "QM9_DEV_BUCKET", (0.5, 1.0))  # a bucket that 8 molecules can reach
    splits = prepare_splits(shared, tmp_path / "out", qm9_train_fraction=0.5)
    for task, split in splits.items():
        train, dev = (read_rows(path) for path in (split.train, split.dev))
        column = "smiles" if task != "caption" else "SMILES"
        assert {canonical(r[column]) for r in train}.isdisjoint(canonical(r[column]) for r in dev), task
        assert len(train) == split.counts["train"] and len(dev) == split.counts["dev"]
    assert splits["caption"].counts["train"] + splits["caption"].counts["dev"] == 61
    assert splits["caption"].counts["dev"] > 0 and splits["property"].counts["dev"] > 0
    assert splits["iupac"].counts == {"train": 2, "dev": 1, "dev_dropped_also_in_train": 1}
    assert "C/C=C\\C" in splits["caption"].train.read_text() + splits["caption"].dev.read_text()
    conversations, skipped = load_source(DataSource.parse(splits["property"].spec("train")))
    assert len(conversations) == 3 * splits["property"].counts["train"] and skipped.total == 0
    assert json.loads((tmp_path / "out" / "splits.json").read_text())["iupac"]["dev"] == 1


def test_without_the_shared_data_the_benchmark_says_so(tmp_path, capsys):
    assert run_benchmark(["--shared", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "shared data is not there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def fake_results(task: str, **metrics) -> dict:
    return {"tasks": {task: {"n": 10, **metrics}}}


@pytest.fixture
def benchmark_dir(tmp_path) -> pathlib.Path:
    """What run_benchmark.py leaves behind, with made-up numbers: a baseline and one projector over two seeds."""
    root = tmp_path / "benchmark"
    results = {
        ("morgan_nn", "caption"): fake_results("caption", bleu4_word=30.0, meteor_word=50.0),
        ("morgan_nn", "property"): fake_results("property", mae=0.02, unparsable_share=0.0),
        ("multilevel-seed0", "caption"): fake_results("caption", bleu4_word=10.0, meteor_word=40.0),
        ("multilevel-seed1", "caption"): fake_results("caption", bleu4_word=20.0, meteor_word=44.0),
        ("multilevel-seed0", "property"): fake_results("property", mae=None, unparsable_share=1.0),
        ("multilevel-seed1", "property"): fake_results("property", mae=0.05, unparsable_share=0.5),
    }
    for (model, task), content in results.items():
        (root / "eval" / model / task).mkdir(parents=True)
        (root / "eval" / model / task / "results.json").write_text(json.dumps(content))
    answers = ["0.1000", "0.1000", "0.2000", "0.3000"]  # 3 different answers of 4
    rows = [json.dumps({"prediction": answer}) for answer in answers]
    (root / "eval" / "morgan_nn" / "property" / "predictions.jsonl").write_text("\n".join(rows) + "\n")
    training = {}
    for seed in (0, 1):
        name = f"multilevel-seed{seed}"
        training[name] = {}
        for stage, folder in (("stage1", f"{name}-stage1"), ("stage2", name)):
            history = [{"step": 10, "loss": 3.0 - seed}, {"step": 20, "loss": 2.0 - seed}, {"train_runtime": 5.0, "step": 20}]
            (root / "models" / folder).mkdir(parents=True)
            (root / "models" / folder / "training_summary.json").write_text(json.dumps({"log_history": history}))
            summary = {"steps": 20, "seconds": 10.0 + seed, "train_examples": 160, "train_loss": 2.5, "output_dir": folder}
            training[name][stage] = summary
    settings = {"stage0_steps": 300, "stage1_steps": 20, "stage2_steps": 20, "batch_size": 8, "max_length": 512,
                "stage1_lr": 1e-3, "stage2_lr": 2e-3, "seeds": [0, 1]}  # fmt: skip
    run = {
        "command": "python benchmarks/run_benchmark.py", "finished": "today", "machine": "CPU", "settings": settings,
        "max_new_tokens": {"caption": 128, "iupac": 128, "property": 12},
        "mixture_weights": {"caption": 0.4, "iupac": 0.3, "property": 0.3},
        "splits": {"caption": {"train": 9, "dev": 1}, "iupac": {"train": 9, "dev": 1}, "property": {"train": 9, "dev": 1}},
        "dev_questions": {"caption": 10, "iupac": 10, "property": 10}, "training": training,
        "seconds": {"total": 100.0, "stage0": 10.0, "training": 42.0, "evaluation": 8.0, "baselines": 2.0},
    }  # fmt: skip
    (root / "run.json").write_text(json.dumps(run))
    return root


def test_report_aggregates_seeds_and_counts_runs_without_a_value(benchmark_dir):
    report = build_report(benchmark_dir)
    bleu = report["models"]["multilevel"]["caption"]["bleu4_word"]
    # mean (10 + 20) / 2 = 15; sample SD sqrt(((10 - 15)^2 + (20 - 15)^2) / (2 - 1)) = sqrt(50) = 7.0711
    assert bleu["mean"] == 15 and bleu["sd"] == pytest.approx(7.0711, abs=1e-4) and bleu["runs"] == 2
    mae = report["models"]["multilevel"]["property"]["mae"]
    assert mae["mean"] == 0.05 and mae["missing"] == 1 and mae["sd"] is None
    text = write_report(report, benchmark_dir / "report", benchmark_dir)
    assert "| baseline: Morgan-fingerprint nearest neighbour | 1 | – | 30.0 | 50.0 |" in text
    assert "| tiny LLaMo, multi-level + motifs (`multilevel`, LLaMo) | 2 | – | 15.0 ± 7.1 | 42.0 ± 2.8 |" in text
    assert "| 0.0500 (n/a in 1 of 2 runs) | 75.0 ± 35.4 | – |" in text  # unparsable: (100 + 50) / 2 %, SD sqrt(2 * 25^2) %
    assert "baseline: Morgan-fingerprint nearest neighbour | 1 | 0.0200 | 0.0 | 75.0 |" in text  # distinct answers: 3 / 4
    assert "stage2: 2 runs of 20 steps, 10 s each" in text  # (10 + 11) / 2 = 10.5 s, rounded half to even
    for name in ("metrics.png", "loss_curves.png"):
        assert (benchmark_dir / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((benchmark_dir / "report" / "results.json").read_text())["models"]["morgan_nn"]["caption"]


def test_readme_block_is_replaced_between_the_markers(benchmark_dir, tmp_path):
    text = write_report(build_report(benchmark_dir), benchmark_dir / "report", benchmark_dir)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Results\n\n{MARKERS[0]}\nold numbers\n{MARKERS[1]}\n\n## Next\n")
    update_readme(readme, text, benchmark_dir / "report")
    update_readme(readme, text, benchmark_dir / "report")  # idempotent
    content = readme.read_text()
    assert "old numbers" not in content and content.count(text) == 1 and content.endswith(f"{MARKERS[1]}\n\n## Next\n")
    assert (tmp_path / "docs" / "images" / "benchmark_metrics.png").is_file()
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="benchmark-results:start"):
        update_readme(readme, text, benchmark_dir / "report")


def test_results_page_in_docs_gets_the_block_and_pictures_linked_from_docs(benchmark_dir, tmp_path):
    """The block lives in docs/results.md: the pictures go to docs/images/ and are linked relative to the page."""
    text = write_report(build_report(benchmark_dir), benchmark_dir / "report", benchmark_dir)
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(f"# Results\n\n{MARKERS[0]}\nold numbers\n{MARKERS[1]}\n")
    update_readme(page, text, benchmark_dir / "report")
    content = page.read_text()
    assert "old numbers" not in content and content.count(text) == 1
    assert "](images/benchmark_metrics.png)" in content and "](images/benchmark_loss_curves.png)" in content
    assert (tmp_path / "docs" / "images" / "benchmark_loss_curves.png").is_file()
    assert not (tmp_path / "docs" / "docs").exists()


def test_the_repository_results_page_holds_the_generated_block():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert page.count(MARKERS[0]) == 1 and page.count(MARKERS[1]) == 1 and page.index(MARKERS[0]) < page.index(MARKERS[1])
    for name in ("benchmark_metrics.png", "benchmark_loss_curves.png"):
        assert f"](images/{name})" in page and (ROOT / "docs" / "images" / name).is_file()
