"""LLaMo's data collators: `LlamoDataCollator` pads encoded rows (`llamo.data.encode_dataset`) into a batch, and
`LlamoChatCollator` lets stock TRL `SFTTrainer` train LLaMo on raw chat rows, molecules included.

TRL's own dataset preparation tokenizes conversations with the processor but keeps only `input_ids` (and masks):
the molecules' graph tensors are dropped there. So the rows go to the trainer untouched and `LlamoChatCollator` turns
each batch into model inputs: featurized graphs, token ids with the graph-token slots, and labels on the
assistant tokens only (system prompt, user turns and slots are -100).

    from trl import SFTConfig, SFTTrainer
    from llamo.collator import LlamoChatCollator

    args = SFTConfig(output_dir="out", remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor,
                         data_collator=LlamoChatCollator(processor, max_length=args.max_length))

Rows hold `messages` in the processor's chat format (`{"type": "molecule", "smiles": ...}` content items) or, as
in `llamo.data`'s files, `smiles` (a string or a list) with plain-text `messages` (the molecules fill `<graph>`
placeholders, or go in front of the first user turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from featurization_llamo import join_graph_inputs
from llamo.data import encode_conversation


@dataclass
class LlamoDataCollator:
    """Right-pads token ids (`pad_token_id`) and labels (-100), and joins the examples' molecules into one batch of
    graph inputs, re-indexing nodes and molecules."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            input_ids[row, :size] = torch.as_tensor(example["input_ids"])
            labels[row, :size] = torch.as_tensor(example["labels"])
            attention_mask[row, :size] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        with_molecules = [example for example in examples if example.get("num_molecules")]
        if with_molecules:
            batch.update(self._join_graphs(with_molecules))
        return batch

    @staticmethod
    def _join_graphs(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The examples' molecules as one batch of graph inputs (the processor's batching, `join_graph_inputs`)."""
        return join_graph_inputs(examples)


@dataclass
class LlamoChatCollator:
    """Featurizes, tokenizes (chat template, assistant-only labels) and pads a batch of raw chat rows.

    Args:
        processor: the model's `LlamoProcessor`.
        max_length: truncate longer conversations (never inside graph slots: such a row raises).
        pad_to_multiple_of: pad the sequence length to a multiple of this.
    """

    processor: Any
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = []
        for index, example in enumerate(examples):
            smiles = example.get("smiles") or []
            smiles = [smiles] if isinstance(smiles, str) else list(smiles)
            row = encode_conversation(smiles, example["messages"], self.processor, self.max_length)
            if row["skip_reason"]:  # a training batch must not lose a row silently
                raise ValueError(f"example {index} of the batch cannot be used: {row['skip_reason']} ({row['skip_detail']})")
            rows.append(row)
        pad = LlamoDataCollator(pad_token_id=self.processor.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
        return pad(rows)


__all__ = ["LlamoChatCollator", "LlamoDataCollator"]
