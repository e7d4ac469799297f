"""Stock TRL SFTTrainer trains LLaMo on raw chat rows through `llamo.collator.LlamoChatCollator`."""

from __future__ import annotations

import torch
from conftest import MOLECULES
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from llamo.collator import LlamoChatCollator
from llamo.tiny import build_tiny_llamo


ANSWERS = {"aspirin": "An ester and a carboxylic acid.", "caffeine": "A purine alkaloid.", "benzene": "An aromatic ring."}


def chat_row(name: str) -> dict:
    # content as lists of items in every turn: a datasets column cannot mix strings and lists
    return {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "You are a chemist."}]},
        {"role": "user", "content": [{"type": "molecule", "smiles": MOLECULES[name]}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[name]}]},
    ]}  # fmt: skip


def test_stock_sft_trainer_feeds_graphs_and_trains_on_answers_only(tmp_path):
    model, processor = build_tiny_llamo(seed=0)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    before = [parameter.clone() for parameter in model.model.projector.parameters()]
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
        use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no", max_length=512,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
    )  # fmt: skip
    rows = Dataset.from_list([chat_row(name) for name in ANSWERS] * 2)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=rows, processing_class=processor,
        data_collator=LlamoChatCollator(processor, max_length=args.max_length),
    )  # fmt: skip
    trainer.train()

    assert len(seen) == 3
    for inputs in seen:
        ids, labels = inputs["input_ids"], inputs["labels"]
        molecules = int(inputs["graph_node_batch"].max()) + 1
        assert molecules == ids.shape[0] == 2  # one molecule per row reached forward as graph tensors
        assert int((ids == processor.graph_token_id).sum()) == 28 * molecules
        for row in range(ids.shape[0]):
            supervised = processor.tokenizer.decode(labels[row][labels[row] != -100])
            assert supervised.strip() in {answer + processor.tokenizer.eos_token for answer in ANSWERS.values()}
    assert any(not torch.equal(old, new) for old, new in zip(before, model.model.projector.parameters()))
