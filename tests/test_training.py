"""train_sft.py: what each stage trains, outputs, resume after a kill, two processes, building around an LLM."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import CONTRACT, run_fresh
from huggingface_hub import ModelCard
from transformers import LlamaConfig, LlamaForCausalLM

from llamo.instructions import generate_examples
from llamo.sft import main as train
from llamo.tiny import TINY_TEXT_CONFIG, build_tiny_llamo, load_tiny_tokenizer
from modeling_llamo import LlamoForConditionalGeneration


FAST = ["--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_train_samples", "24", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory) -> str:
    """Generated questions about 30 shipped molecules (JSON Lines, the `messages` format)."""
    from conftest import read_data_smiles

    path = tmp_path_factory.mktemp("data") / "facts.jsonl"
    rows = generate_examples(read_data_smiles("chebi20_smiles.tsv")[:30], questions_per_molecule=2, seed=0)
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def stage1_folder(tmp_path_factory, facts_file) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("stage1")
    train(
        [
            "--stage",
            "1",
            "--datasets",
            facts_file,
            "--output_dir",
            str(folder),
            "--max_steps",
            "3",
            "--save_strategy",
            "no",
            *FAST,
        ]
    )
    return folder


def changed_keys(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {key for key in before if not torch.equal(before[key], after[key])}


def state(model) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_stage1_trains_the_graph_encoder_and_projector_only(stage1_folder):
    initial = state(build_tiny_llamo(seed=0)[0])  # what stage 1 starts from without --llm
    trained = state(LlamoForConditionalGeneration.from_pretrained(stage1_folder))
    changed = changed_keys(initial, trained)
    graph_parameters = {
        k
        for k in initial
        if k.startswith(("model.graph_encoder.", "model.projector.")) and "running" not in k and "num_batches" not in k
    }
    assert graph_parameters - changed == set()  # every GIN / projector weight moved
    assert {k for k in changed if not k.startswith(("model.graph_encoder.", "model.projector."))} == set()  # LLM untouched


def test_stage1_can_also_train_the_input_embeddings(tmp_path, facts_file):
    train(["--stage", "1", "--datasets", facts_file, "--output_dir", str(tmp_path), "--max_steps", "2", "--save_strategy", "no",
           "--train_input_embeddings", *FAST])  # fmt: skip
    changed = changed_keys(state(build_tiny_llamo(seed=0)[0]), state(LlamoForConditionalGeneration.from_pretrained(tmp_path)))
    language_model = {k for k in changed if k.startswith(("model.language_model.", "lm_head"))}
    assert language_model == {"model.language_model.embed_tokens.weight"}


def test_stage2_trains_the_projector_and_lora_and_freezes_the_graph_encoder(tmp_path, stage1_folder, facts_file):
    summary = train(["--stage", "2", "--init_from", str(stage1_folder), "--datasets", facts_file, "--output_dir", str(tmp_path),
                     "--max_steps", "3", "--save_strategy", "no", *FAST])  # fmt: skip
    changed = changed_keys(
        state(LlamoForConditionalGeneration.from_pretrained(stage1_folder)),
        state(LlamoForConditionalGeneration.from_pretrained(tmp_path)),
    )
    assert not any(k.startswith("model.graph_encoder.") for k in changed)  # weights and BatchNorm statistics
    assert any(k.startswith("model.projector.") for k in changed)
    language_model = {k for k in changed if k.startswith("model.language_model.")}
    assert language_model and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in language_model)  # merged LoRA
    assert "lm_head.weight" not in changed
    assert summary["trainable_parameters"]["lora"] > 0 and summary["trainable_parameters"]["graph_encoder"] == 0


def test_kept_adapter_equals_the_merged_run(tmp_path, stage1_folder, facts_file):
    common = [
        "--stage",
        "2",
        "--init_from",
        str(stage1_folder),
        "--datasets",
        facts_file,
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        *FAST,
    ]
    train([*common, "--output_dir", str(tmp_path / "merged")])
    train([*common, "--output_dir", str(tmp_path / "adapter"), "--keep_adapter"])
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (
        tmp_path / "adapter" / "adapter_model.safetensors"
    ).is_file()
    from peft import PeftModel

    base = LlamoForConditionalGeneration.from_pretrained(stage1_folder)
    merged_from_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    merged = LlamoForConditionalGeneration.from_pretrained(tmp_path / "merged")
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(merged_from_adapter.state_dict()[key], value, msg=key)


def test_output_folder_is_a_hub_repository_with_a_model_card(tmp_path, stage1_folder, facts_file):
    train(["--stage", "2", "--init_from", str(stage1_folder), "--datasets", facts_file, "--output_dir", str(tmp_path),
           "--max_steps", "2", "--save_strategy", "no", *FAST])  # fmt: skip
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja",
                 "modeling_llamo.py", "processing_llamo.py", "configuration_llamo.py", "featurization_llamo.py", "README.md"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "text-generation" and "llamo" in card.data.tags
    assert "stage | 2 (instruction tuning)" in card.text and "from_pretrained" in card.text
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_examples"] == 24
    run_fresh(f"path_or_hub_id = {str(tmp_path)!r}\n" + CONTRACT, cwd=tmp_path)  # the public contract runs, offline


def test_bad_rows_are_reported_in_the_summary(tmp_path, facts_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"smiles": "C1CC(", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}) + "\n"
        + json.dumps({"smiles": "CCO", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}) + "\n"
    )  # fmt: skip
    summary = train(["--stage", "1", "--datasets", facts_file, str(bad), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                     "--save_strategy", "no", "--per_device_train_batch_size", "2"])  # fmt: skip
    assert summary["skipped"]["by_reason"] == {"auto:bad.jsonl: empty answer": 1, "invalid molecule or placeholders": 1}


KILL_AT_STEP = """
import os, signal, sys
from transformers import TrainerCallback
from llamo.sft import main

class KillAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a crash or a pre-empted job

main({argv!r}, callbacks=[KillAfterCheckpoint()])
"""


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, stage1_folder, facts_file):
    argv = ["--stage", "2", "--init_from", str(stage1_folder), "--datasets", facts_file, "--max_steps", "6",
            "--save_strategy", "steps", "--save_steps", "2", *FAST]  # fmt: skip
    train([*argv, "--output_dir", str(tmp_path / "straight")])

    interrupted = tmp_path / "interrupted"
    script = KILL_AT_STEP.format(step=4, argv=[*argv, "--output_dir", str(interrupted)])
    killed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (interrupted / "checkpoint-4").is_dir() and not (interrupted / "model.safetensors").exists()

    summary = train([*argv, "--output_dir", str(interrupted), "--resume_from_checkpoint", "last"])
    assert summary["steps"] == 6
    straight = LlamoForConditionalGeneration.from_pretrained(tmp_path / "straight").state_dict()
    resumed = LlamoForConditionalGeneration.from_pretrained(interrupted).state_dict()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


RANK_CHECKSUMS = """
import sys, torch
from transformers import TrainerCallback
from llamo.sft import main

class WriteWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = {{k: v.detach().clone() for k, v in model.state_dict().items()}}
        torch.save(weights, f"{out}/rank{{args.process_index}}.pt")

main({argv!r}, callbacks=[WriteWeights()])
"""


def test_two_processes_with_torchrun_end_with_identical_weights(tmp_path, stage1_folder, facts_file):
    argv = ["--stage", "2", "--init_from", str(stage1_folder), "--datasets", facts_file, "--output_dir", str(tmp_path / "ddp"),
            "--max_steps", "3", "--save_strategy", "no", "--ddp_backend", "gloo", *FAST]  # fmt: skip
    script = tmp_path / "ddp_run.py"
    script.write_text(RANK_CHECKSUMS.format(out=str(tmp_path), argv=argv))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    moved = [k for k in rank0 if "lora_B" in k]
    assert moved and all(rank0[k].abs().sum() > 0 for k in moved)  # both ranks trained (LoRA B starts at zero)
    assert (tmp_path / "ddp" / "model.safetensors").is_file()  # saved once, by rank 0


def test_building_around_a_saved_causal_lm_keeps_its_weights(tmp_path):
    tokenizer = load_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_TEXT_CONFIG)
    torch.manual_seed(1)
    llm = LlamaForCausalLM(config).eval()
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")

    from llamo.sft import LlamoModelConfig, load_model

    model, processor = load_model(
        LlamoModelConfig(model_name_or_path=str(tmp_path / "llm"), config_overrides="gnn_hidden_size=32,projector_mlp_depth=2")
    )
    model.eval()
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, llm(input_ids=ids).logits)
    model.save_pretrained(tmp_path / "llamo")
    reloaded, info = LlamoForConditionalGeneration.from_pretrained(tmp_path / "llamo", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # saved in LLaMo's own key layout
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, llm(input_ids=ids).logits)


def test_text_only_baseline_trains_from_an_llm_in_stage_2(tmp_path, facts_file):
    tokenizer = load_tiny_tokenizer()
    LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_TEXT_CONFIG)
    ).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    summary = train(["--stage", "2", "--llm", str(tmp_path / "llm"), "--projector_type", "none", "--datasets", facts_file,
                     "--output_dir", str(tmp_path / "none"), "--max_steps", "2", "--save_strategy", "no", *FAST])  # fmt: skip
    assert summary["trainable_parameters"]["lora"] > 0 and summary["trainable_parameters"]["projector"] == 0
    model = LlamoForConditionalGeneration.from_pretrained(tmp_path / "none")
    assert model.config.projector_type == "none" and model.model.graph_encoder is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stage", "1", "--projector_type", "none"], "goes to stage 2 directly"),
        (["--stage", "2", "--keep_adapter"], "needs --stage 2 --init_from"),
        (["--stage", "3"], "--stage must be 1 or 2"),
        (["--stage", "2", "--lora_target_modules", "query"], "are not linear layers of the language model"),
        (["--stage", "1", "--packing", "true"], "--packing is not supported"),
        (["--stage", "1", "--padding_free", "true"], "--padding_free is not supported"),
        (["--stage", "1", "--use_peft", "true"], "LoRA adapters in stage 2 and only there"),
        (["--stage", "2", "--use_peft", "false"], "LoRA adapters in stage 2 and only there"),
        (["--stage", "2", "--lora_task_type", "SEQ_CLS"], "LLaMo is a causal LM"),
        (["--stage", "1", "--completion_only_loss", "false"], "always the assistant turns only"),
        (["--stage", "1", "--model_init_kwargs", '{"dtype": "float16"}'], "loads the model itself"),
        (["--stage", "1", "--load_in_4bit"], "QLoRA"),
    ],
)
def test_invalid_runs_are_refused(tmp_path, facts_file, argv, message):
    with pytest.raises(ValueError, match=message):
        train([*argv, "--datasets", facts_file, "--output_dir", str(tmp_path), "--max_steps", "1"])


def test_model_flags_are_trls_model_config(tmp_path):
    """TRL's own ModelConfig flags, with LLaMo's defaults (LoRA r 8, alpha 32, the attention's projections);
    `--llm` is another name for `--model_name_or_path`; the LoRA config comes from TRL's `get_peft_config`."""
    from trl import ModelConfig

    from llamo.sft import lora_config, make_parser

    def parse(*argv):
        return make_parser().parse_args_and_config([*argv, "--output_dir", str(tmp_path)])[0]

    assert isinstance(parse(), ModelConfig)
    assert parse("--llm", "some/llm").model_name_or_path == parse("--model_name_or_path", "some/llm").model_name_or_path
    model, _ = build_tiny_llamo()
    default = lora_config(model, parse("--stage", "2"))
    assert (default.r, default.lora_alpha, default.use_rslora, default.use_dora) == (8, 32, False, False)
    assert default.target_modules == r"^model\.language_model\.(?:layers\.\d+\.self_attn\.q_proj|layers\.\d+\.self_attn\.v_proj)$"
    tuned = lora_config(
        model,
        parse("--stage", "2", "--lora_r", "4", "--use_rslora", "true", "--use_dora", "true",
              "--lora_target_modules", "all-linear", "--lora_modules_to_save", "lm_head"),
    )  # fmt: skip
    assert (tuned.r, tuned.use_rslora, tuned.use_dora) == (4, True, True)
    assert set(tuned.modules_to_save) == {"projector", "lm_head"}
    assert "gate_proj" in tuned.target_modules


def test_push_to_hub_sends_the_merged_model_and_llamos_card(tmp_path, stage1_folder, facts_file, monkeypatch):
    """The upload itself is huggingface_hub's (no network here): check what the trainer would upload."""
    from llamo import sft

    pushed = {}

    def record_push(self, commit_message=None, **kwargs):
        self.create_model_card()
        pushed.update(model=type(self.model).__name__, card=ModelCard.load(pathlib.Path(self.args.output_dir) / "README.md"))

    monkeypatch.setattr(sft.LlamoSFTTrainer, "init_hf_repo", lambda self, **kwargs: None)
    monkeypatch.setattr(sft.LlamoSFTTrainer, "push_to_hub", record_push)
    train(["--stage", "2", "--init_from", str(stage1_folder), "--datasets", facts_file, "--output_dir", str(tmp_path),
           "--max_steps", "1", "--save_strategy", "no", "--push_to_hub", "--hub_model_id", "someone/llamo-test", *FAST])  # fmt: skip
    assert pushed["model"] == "LlamoForConditionalGeneration"  # merged, not the PEFT wrapper
    assert pushed["card"].data.library_name == "transformers"
    assert 'from_pretrained("someone/llamo-test", trust_remote_code=True)' in pushed["card"].text


def test_model_card_has_results_limitations_citation_and_no_checkpoints(tmp_path, stage1_folder, facts_file):
    from llamo.model_card import CITATION

    train(["--stage", "2", "--init_from", str(stage1_folder), "--datasets", facts_file, "--output_dir", str(tmp_path),
           "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--eval_fraction", "0.3",
           "--eval_strategy", "steps", "--eval_steps", "1", "--keep_adapter", *FAST])  # fmt: skip
    assert not list(tmp_path.glob("checkpoint-*"))  # optimizer states are not part of the Hub-ready folder
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None  # a local base is no Hub base_model
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    final_loss = [entry["eval_loss"] for entry in summary["log_history"] if "eval_loss" in entry][-1]
    (result,) = card.data.eval_results
    assert result.metric_type == "loss" and result.metric_value == pytest.approx(final_loss)
    assert "model-index" in (tmp_path / "README.md").read_text()
    assert f"| {result.metric_value:.4g} |" in card.text
    assert "Intended use and limitations" in card.text and "This is a tiny model" in card.text
    assert CITATION in card.text and 'pipeline("molecule-text-to-text"' in card.text


def test_card_base_model_is_the_hub_id_of_the_language_model():
    from types import SimpleNamespace

    from llamo.model_card import card_info

    model, _ = build_tiny_llamo()
    model.config.text_config._name_or_path = "meta-llama/Llama-2-7b-chat-hf"
    args = SimpleNamespace(
        stage=1, keep_adapter=False, init_from=None, train_input_embeddings=False, lora_r=8, lora_alpha=32, license="mit"
    )
    training = SimpleNamespace(output_dir="out", hub_model_id=None, learning_rate=1e-3, per_device_train_batch_size=1,
                               gradient_accumulation_steps=1, world_size=1, use_cpu=True)  # fmt: skip
    summary = {
        "train_examples": 1,
        "eval_examples": 0,
        "skipped": {"total": 0, "by_reason": {}},
        "steps": 1,
        "train_loss": 1.0,
        "seconds": 1,
    }
    info = card_info(
        model, args, SimpleNamespace(datasets=["x.jsonl"]), training, summary, SimpleNamespace(state=SimpleNamespace(epoch=1))
    )
    assert info["base_model"] == "meta-llama/Llama-2-7b-chat-hf" and info["results"] == []
