"""A data collator that lets stock TRL `SFTTrainer` train LLaMo on raw chat rows, molecules included.

TRL's own dataset preparation tokenizes conversations with the processor but keeps only `input_ids` (and masks):
the molecules' graph tensors are dropped there. So the rows go to the trainer untouched and this collator turns
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

from llamo.data import LlamoDataCollator, encode_conversation


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


__all__ = ["LlamoChatCollator"]
