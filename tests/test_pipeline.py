"""The tiny pipeline (run_tiny_pipeline.py, docs/tiny-pipeline.md), at toy scale: every stage runs, the final folder
passes the public contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import CONTRACT, ROOT, run_fresh


def test_main_job_runs_end_to_end_and_reports_models_next_to_baselines(tmp_path):
    out = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_tiny_pipeline.py"), "--output_dir", str(out), "--steps", "2", "--molecules", "40", "--eval_per_task", "4"],
        check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in ("tiny-llm", "llamo-tiny-stage1", "llamo-tiny", "baseline-no-graph"):
        assert (out / folder / "model.safetensors").is_file(), folder
    results = json.loads((out / "pipeline_results.json").read_text())
    assert set(results["results"]) == {"llamo-tiny", "baseline-no-graph", "morgan_nn", "train_mean"}
    assert {"facts", "property"} <= set(results["results"]["llamo-tiny"])
    header = "| task | metric | LLaMo (graph) | no graph | retrieval | most common |"
    assert header in result.stdout and "Exact match per kind of fact" in result.stdout and "Sample answers" in result.stdout
    for name, tasks in results["results"].items():
        per_fact = [task for task in tasks if task.startswith("facts/")]
        assert tasks["facts"]["n"] == sum(tasks[task]["n"] for task in per_fact) > 0
        predictions = (out / "eval" / name / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == tasks["facts"]["n"] + tasks["property"]["n"]
    # --eval_only scores the folders already there again: greedy decoding and fixed baselines give the same numbers
    command = [
        sys.executable,
        str(ROOT / "run_tiny_pipeline.py"),
        "--output_dir",
        str(out),
        "--molecules",
        "40",
        "--eval_per_task",
        "4",
        "--eval_only",
    ]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert json.loads((out / "pipeline_results.json").read_text())["results"] == results["results"]
    run_fresh(f"path_or_hub_id = {str(out / 'llamo-tiny')!r}\n" + CONTRACT, cwd=tmp_path)
