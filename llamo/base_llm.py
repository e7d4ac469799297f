"""Stage 0 of the tiny pipelines: a tiny Llama (the "base LLM") learns training conversations as plain text.

Used by `run_tiny_pipeline.py` and `benchmarks/run_benchmark.py`; LLaMo is then built around the saved model
(`train_sft.py --llm`).
"""

from __future__ import annotations

import pathlib

import torch
from datasets import Dataset
from transformers import LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from featurization_llamo import parse_smiles, prompt_smiles
from llamo.data import DataSource, load_mixture, split_by_molecule
from llamo.saving import make_inference_ready
from llamo.tiny import load_tiny_tokenizer, tiny_llama_config
from processing_llamo import DEFAULT_CHAT_TEMPLATE


# Molecules held out of every stage of the tiny pipelines (the same hash split everywhere, `llamo.data.is_held_out`).
HELD_OUT = 0.1


def conversation_as_text(row: dict) -> dict:
    """The conversation with its molecules written as SMILES in front of the first user turn (no graph)."""
    messages = [dict(m) for m in row["messages"]]
    shown = " ".join(prompt_smiles(parse_smiles(s)) for s in row["smiles"])
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first_user]["content"] = f"{shown} {messages[first_user]['content']}"
    return {"messages": messages}


def pretrain_base_llm(output_dir: pathlib.Path, sources: list[str], steps: int, seed: int, held_out: float = HELD_OUT) -> None:
    """Stage 0: a tiny Llama learns the conversations as text (the molecule as its SMILES), with TRL's SFTTrainer;
    saved ready for inference (KV cache on, `llamo.saving.make_inference_ready`)."""
    conversations, _ = load_mixture([DataSource.parse(spec) for spec in sources], seed=seed)
    train, _ = split_by_molecule(conversations, held_out)
    text = Dataset.from_list([conversation_as_text(row) for row in train.select(range(min(len(train), steps * 16)))])
    tokenizer = load_tiny_tokenizer()
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    config = tiny_llama_config(tokenizer)
    torch.manual_seed(seed)
    args = SFTConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="cosine", warmup_steps=20, assistant_only_loss=True, max_length=512, use_cpu=True,
        bf16=False, activation_checkpointing=False, logging_steps=50, save_strategy="no", report_to="none", seed=seed,
    )  # fmt: skip
    trainer = SFTTrainer(model=LlamaForCausalLM(config), args=args, train_dataset=text, processing_class=tokenizer)
    trainer.train()
    # Saved for inference: the trainer turned the KV cache off, and LLaMo built on this LLM would inherit that.
    make_inference_ready(trainer.model.eval())
    trainer.save_model(str(output_dir))


__all__ = ["HELD_OUT", "conversation_as_text", "pretrain_base_llm"]
