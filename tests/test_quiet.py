"""Quiet by default (issue 24): a normal run prints LLaMo's own progress and results, not third-party alarms that do
not apply to it; real warnings still reach the user.

Each run is a new process whose stdout and stderr are read together, as a log file or a notebook would get them:
train_sft.py stage 1 and stage 2 `--init_from` on the tiny model, and the `molecule-text-to-text` pipeline loaded
from two folders in a process that already imported the repository's model code.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT, read_data_smiles

from llamo.instructions import generate_examples
from llamo.quiet import THIRD_PARTY_NOISE, WARNING_NOISE, quiet_progress_bars


# What each run printed before issue 24, and why none of it applied.
NOISE = {
    # PEFT imports bitsandbytes whenever it is installed; nothing here is quantized
    "bitsandbytes CPU kernel": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # accelerate imports DeepSpeed whenever it is installed; no DeepSpeed config is used
    "DeepSpeed accelerator": "Setting accelerator to CPU. If you have GPU or other accelerator",
    # PEFT reads a transformers property that transformers deprecated; LLaMo never calls it
    "PEFT deprecation": "`is_gradient_checkpointing` is deprecated",
    # stage 2 read the folder's config.json as a plain config to find the tokenizer class
    "stage-2 processor load": "to instantiate a model of type",
    # every loaded copy of pipeline_llamo.py registered the task again
    "pipeline registration": "is already registered. Overwriting pipeline",
    # datasets.map and load_dataset progress bars (one per dataset and pass, redrawn dozens of times)
    "datasets progress bars": "examples/s]",
}
FAST = ["--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_train_samples", "24", "--logging_steps", "1",
        "--max_steps", "2", "--save_strategy", "no"]  # fmt: skip

PIPELINE = """
import modeling_llamo  # the repository's model code, as LLaMo's tools and tests import it
from transformers import pipeline

for folder in {folders!r}:
    pipe = pipeline("molecule-text-to-text", model=folder, trust_remote_code=True)
    answer = pipe({{"smiles": "CCO", "text": "Describe this molecule."}}, max_new_tokens=2, do_sample=False)
    print("answer:", type(answer[0]["generated_text"]).__name__)
"""


def run(arguments: list[str]) -> str:
    """stdout and stderr of a new Python process, interleaved, as a log file gets them (not a terminal)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *arguments], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("quiet")
    facts = folder / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:20], questions_per_molecule=2, seed=0)
    facts.write_text("\n".join(json.dumps(row) for row in rows))
    stage1, stage2 = str(folder / "stage1"), str(folder / "stage2")
    train = ["train_sft.py", "--datasets", str(facts), *FAST]
    return {
        "stage 1": run([*train, "--stage", "1", "--output_dir", stage1]),
        "stage 2": run([*train, "--stage", "2", "--init_from", stage1, "--output_dir", stage2]),
        "pipeline": run(["-c", PIPELINE.format(folders=[stage1, stage2])]),
    }


@pytest.mark.parametrize("noise", NOISE)
def test_a_normal_run_prints_no_third_party_alarm_that_does_not_apply(logs, noise):
    for run_name, log in logs.items():
        assert NOISE[noise] not in log, f"{run_name} printed: {[line for line in log.splitlines() if NOISE[noise] in line][:2]}"


BUILD_AROUND = """
from llamo.builder import build_llamo

model, processor = build_llamo({folder!r})
print("vocabulary", model.config.text_config.vocab_size)
"""


def test_building_around_an_llm_prints_no_mean_resizing_notice(smollm2_folder):
    """The builder asks for the mean-resized `<graph>` row on purpose (SmolLM2: 49,152 -> 49,153 rows); transformers'
    notice about its default ("...multivariate normal distribution...") is not printed."""
    log = run(["-c", BUILD_AROUND.format(folder=str(smollm2_folder))])
    assert "vocabulary 49153" in log
    assert "The new embeddings will be initialized from a multivariate normal" not in log, log[-2000:]


def test_llamos_own_progress_and_results_are_still_printed(logs):
    assert "LLaMo stage 1 done" in logs["stage 1"] and "trainable parameters" in logs["stage 1"]
    assert "'loss'" in logs["stage 1"]  # the trainer's logged losses
    assert "LLaMo stage 2 done" in logs["stage 2"] and "LoRA targets (auto)" in logs["stage 2"]
    assert logs["pipeline"].count("answer: str") == 2


# --- the filters drop those exact messages and nothing else ------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("noise", THIRD_PARTY_NOISE, ids=lambda noise: noise.logger)
def test_the_log_filters_drop_only_their_message(noise):
    logger, collect = logging.getLogger(noise.logger), Collect()
    logger.addHandler(collect)  # the logger's filters run before any of its handlers
    try:
        logger.warning(noise.message + " (the rest of the message)")
        logger.warning("a real warning from the same library")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["a real warning from the same library"]


def test_the_warning_filter_drops_only_peft_s_deprecated_property_call():
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        for noise in WARNING_NOISE:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == [
        "`past_key_values` is deprecated",
        "`is_gradient_checkpointing` is deprecated",
    ]


def test_progress_bars_stay_in_a_terminal_and_go_in_a_log(monkeypatch):
    import datasets
    from transformers.utils import logging as transformers_logging

    was_enabled = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    try:
        datasets.enable_progress_bars()
        transformers_logging.enable_progress_bar()
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        quiet_progress_bars()
        assert datasets.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
        monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
        quiet_progress_bars()
        assert not datasets.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars() if was_enabled[0] else datasets.disable_progress_bars()
        transformers_logging.enable_progress_bar() if was_enabled[1] else transformers_logging.disable_progress_bar()
