"""What a user runs at scale, checked without a GPU: every training command of the docs parses, the accelerate
configs load, the FSDP wrap policy fits any backbone, FSDP1 is refused before any compute, and the final save is
verified and atomic."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
import torch
import yaml
from accelerate import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from conftest import ROOT
from safetensors.torch import save_file
from transformers import LlamaConfig, OPTConfig, Qwen2Config

from configuration_llamo import LlamoConfig
from llamo import saving
from llamo.sft import make_parser
from llamo.tiny import build_tiny_llamo
from modeling_llamo import LlamoForConditionalGeneration


LAUNCHERS = ("python", "python3", "accelerate", "torchrun", "llamo-train")


DOC_PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))


def documented_commands(pages: tuple[pathlib.Path, ...] = DOC_PAGES) -> list[list[str]]:
    """Every shell command of the README's and the docs pages' code blocks that runs train_sft.py / llamo-train
    (continuations joined)."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "train_sft" not in line and "llamo-train" not in line:
                continue  # other commands may quote across lines (a curl JSON body): not ours to parse
            segment = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word not in ("&&", ";", "||", "|"):
                    segment.append(word)
                    continue
                launcher = segment and (segment[0] in LAUNCHERS or segment[0].endswith("/python"))
                if launcher and any(w.endswith("train_sft.py") or w == "llamo-train" for w in segment):
                    commands.append(segment)
                segment = []
    return commands


def parse_training_arguments(argv: list[str]):
    """Exactly how train_sft.py (llamo.sft.main) parses its command line."""
    return make_parser().parse_args_and_config(argv)


def test_the_training_docs_have_gpu_and_cpu_training_commands():
    commands = [" ".join(command) for command in documented_commands((ROOT / "docs" / "training.md",))]
    assert any("deepspeed_zero2.yaml" in command for command in commands)
    assert any("cpu_2proc.yaml" in command for command in commands)
    assert any("--bf16 true" in command for command in commands)
    assert len(commands) >= 4


@pytest.mark.parametrize("command", documented_commands(), ids=lambda command: " ".join(command)[:80])
def test_every_documented_training_command_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # parsing makes the output folder's parent checks only; nothing is written to the repo
    script = next(i for i, word in enumerate(command) if word.endswith("train_sft.py") or word == "llamo-train")
    if "--config_file" in command[:script]:
        config = ROOT / command[command.index("--config_file") + 1]
        assert config.is_file() and isinstance(yaml.safe_load(config.read_text()), dict)
    model_args, data_args, training_args = parse_training_arguments(command[script + 1 :])
    assert data_args.datasets and training_args.output_dir
    if "--bf16" in command:
        assert training_args.bf16 is True


def test_bf16_needs_a_value_on_the_command_line():
    """SFTConfig's `bf16` is `bool | None`: a bare `--bf16` is an argparse error, which is why the docs say `--bf16 true`."""
    with pytest.raises(SystemExit):
        parse_training_arguments(["--datasets", "x.jsonl", "--output_dir", "out", "--bf16"])


@pytest.mark.parametrize("name", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "cpu_2proc"])
def test_accelerate_configs_load(name):
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    assert config["num_processes"] >= 2
    if name == "fsdp":
        assert config["fsdp_config"]["fsdp_version"] == 2
        assert "fsdp_transformer_layer_cls_to_wrap" not in config["fsdp_config"]  # derived from the model instead
    if name == "deepspeed_zero3":  # saving gathers the weights itself; the 16-bit consolidation is not needed
        assert config["deepspeed_config"]["zero_stage"] == 3


TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize(
    "text_config, layer",
    [
        (LlamaConfig(**TINY), "LlamaDecoderLayer"),
        (Qwen2Config(**TINY), "Qwen2DecoderLayer"),
        (
            OPTConfig(
                vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32
            ),
            "OPTDecoderLayer",
        ),
    ],
)
def test_fsdp_wrap_policy_follows_the_backbone(text_config, layer):
    config = LlamoConfig(text_config=text_config.to_dict(), graph_token_id=3, gnn_hidden_size=16, projector_num_heads=4)
    model = LlamoForConditionalGeneration(config)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [module for module in model.modules() if policy(module)]
    assert {type(module).__name__ for module in wrapped} == {layer}
    assert len(wrapped) == 2


@pytest.mark.parametrize("version, refused", [("1", True), ("2", False)])
def test_fsdp1_is_refused_before_training(monkeypatch, version, refused):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", version)
    _, _, training_args = parse_training_arguments(["--datasets", "x.jsonl", "--output_dir", "out"])
    if refused:
        with pytest.raises(ValueError, match="FSDP1 is not supported"):
            saving.refuse_unsupported_engines(training_args)
    else:
        saving.refuse_unsupported_engines(training_args)


def test_verification_refuses_empty_and_wrong_sized_tensors(tmp_path):
    expected = {"a.weight": (4, 2), "b.weight": (3,)}
    save_file({"a.weight": torch.ones(4, 2), "b.weight": torch.ones(3)}, tmp_path / "model.safetensors")
    saving.verify_saved_weights(tmp_path, expected)  # the right folder passes
    save_file({"a.weight": torch.ones(0), "b.weight": torch.ones(3)}, tmp_path / "model.safetensors")  # ZeRO-3's empty
    with pytest.raises(saving.SavedModelError, match=r"a.weight: shape \[0\]"):
        saving.verify_saved_weights(tmp_path, expected)
    save_file({"a.weight": torch.ones(2, 2), "b.weight": torch.ones(3)}, tmp_path / "model.safetensors")  # a shard
    with pytest.raises(saving.SavedModelError, match=r"a.weight: shape \[2, 2\], the model's is \[4, 2\]"):
        saving.verify_saved_weights(tmp_path, expected)
    save_file({"b.weight": torch.ones(3)}, tmp_path / "model.safetensors")
    with pytest.raises(saving.SavedModelError, match="missing tensors"):
        saving.verify_saved_weights(tmp_path, expected)


def test_rebuilding_from_a_partial_state_dict_is_an_error():
    model, _ = build_tiny_llamo(seed=0)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["lm_head.weight"] = torch.empty(0)  # what rank 0 holds of a partitioned parameter
    with pytest.raises(saving.SavedModelError, match="lm_head.weight"):
        saving.rebuild_model(model, state)


def test_final_save_writes_the_model_and_leaves_no_staging_folder(tmp_path):
    model, processor = build_tiny_llamo(seed=0)
    saving.save_final_model(model, tmp_path, merge=False, processor=processor)
    assert not (tmp_path / saving.INCOMPLETE_DIR).exists()
    reloaded = LlamoForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_kill_during_the_final_save_leaves_no_loadable_folder(tmp_path, monkeypatch):
    """An earlier complete save is there; the new save dies while moving files in: no config.json remains, so the
    half-written folder cannot be mistaken for (or loaded as) a model."""
    model, processor = build_tiny_llamo(seed=0)
    saving.save_final_model(model, tmp_path, merge=False, processor=processor)
    assert (tmp_path / "config.json").is_file()
    moved = []
    real_replace = saving.os.replace

    def dying_replace(source, target):
        if len(moved) == 2:
            raise KeyboardInterrupt("killed")
        moved.append(target)
        real_replace(source, target)

    monkeypatch.setattr(saving.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        saving.save_final_model(model, tmp_path, merge=False, processor=processor)
    assert not (tmp_path / "config.json").exists()
    assert (tmp_path / saving.INCOMPLETE_DIR).is_dir()  # what was left to move stays in the staging folder
    with pytest.raises(OSError):
        LlamoForConditionalGeneration.from_pretrained(tmp_path)


def test_a_failed_verification_keeps_the_earlier_folder_intact(tmp_path, monkeypatch):
    model, processor = build_tiny_llamo(seed=0)
    saving.save_final_model(model, tmp_path, merge=False, processor=processor)
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken(folder, expected, may_be_absent=frozenset()):
        raise saving.SavedModelError("wrong")

    monkeypatch.setattr(saving, "verify_saved_weights", broken)
    with pytest.raises(saving.SavedModelError):
        saving.save_final_model(model, tmp_path, merge=False, processor=processor)
    assert (tmp_path / "model.safetensors").read_bytes() == before and (tmp_path / "config.json").is_file()
