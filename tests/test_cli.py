"""Command-line tools: clear errors before any Hub call or device work, readable help, one flag style."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from llamo.cli import check_device, check_model_path, load_model_and_processor, looks_local


def test_a_mistyped_local_folder_is_reported_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "llamo-tiny").mkdir(parents=True)
    assert check_model_path("outputs/llamo-tiny", "--model") == "outputs/llamo-tiny"
    for typo in ("outputs/llamo-tinny", "./llamo", str(tmp_path / "nope"), "a/b/c"):
        with pytest.raises(ValueError, match="no such folder"):
            check_model_path(typo, "--model")
    assert check_model_path("meta-llama/Llama-2-7b-chat-hf", "--llm") == "meta-llama/Llama-2-7b-chat-hf"  # a Hub id
    assert not looks_local("gpt2") and looks_local("outputs/llamo-tinny")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_clearly():
    with pytest.raises(ValueError, match="CUDA is not available here"):
        check_device("cuda")
    assert check_device(None) == "cpu" and check_device("cpu") == "cpu"


def test_the_tools_load_a_model_folder_and_an_adapter_folder_over_its_base(tiny_folder, tmp_path):
    """`load_model_and_processor`, the one loader of demo, evaluation, attention, export and gpu_check: eval mode on
    the device asked for; an adapter folder gives its base with the adapter merged in (the same class); an adapter
    that names no base model is refused with the field to fill."""
    import json

    from peft import LoraConfig, get_peft_model

    model, processor = load_model_and_processor(tiny_folder, device="cpu")
    assert not model.training and model.device.type == "cpu" and type(processor).__name__ == "LlamoProcessor"
    adapter_dir = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=r"^model\.language_model\..*\.q_proj$")).save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    merged, _ = load_model_and_processor(adapter_dir, device="cpu")
    assert type(merged) is type(model) and not merged.training
    assert not any("lora" in name for name, _ in merged.named_parameters())
    config_file = adapter_dir / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="does not name its base model"):
        load_model_and_processor(adapter_dir)


def test_train_sft_reports_a_missing_init_folder_before_any_hub_call(tmp_path):
    from llamo.sft import main as train

    data = tmp_path / "d.jsonl"
    data.write_text('{"smiles": "CCO", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}\n')
    with pytest.raises(ValueError, match="--init_from .*no such folder"):
        train(
            [
                "--stage",
                "2",
                "--init_from",
                str(tmp_path / "stage1-typo"),
                "--datasets",
                str(data),
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )


def test_train_sft_help_starts_with_a_description_and_llamo_flags():
    result = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--help"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage: train_sft.py") and len(lines[0]) < 130
    assert "Train LLaMo with TRL's SFTTrainer" in result.stdout[:500]
    options = lines.index("options:")
    assert options < 40 and "--llm" in lines[options + 2]  # after -h, the model flags (TRL's ModelConfig, `--llm` too)
    flag_lines = [line.strip() for line in lines[options:] if line.strip().startswith("--")]
    first = {flag: next(i for i, line in enumerate(flag_lines) if line.startswith(flag)) for flag in ("--stage", "--output_dir")}
    assert first["--stage"] < first["--output_dir"]  # LLaMo's options before SFTConfig's ~150


def test_demo_and_eval_use_underscored_flags_and_accept_the_old_demo_spelling():
    from llamo.demo import parse_args

    assert parse_args(["--max_new_tokens", "7"]).max_new_tokens == 7
    assert parse_args(["--max-new-tokens", "9"]).max_new_tokens == 9
    help_text = subprocess.run(
        [sys.executable, "-m", "llamo.evaluation", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--max_new_tokens" in help_text and "--max-new-tokens" not in help_text


def test_eval_refuses_a_missing_model_folder_before_loading_data(tmp_path, capsys):
    from llamo.evaluation import main

    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "missing"), "--datasets", "nowhere.tsv", "--output_dir", str(tmp_path / "o")])
    assert "no such folder" in capsys.readouterr().err
