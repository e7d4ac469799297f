"""Train LLaMo with TRL's SFTTrainer (stage 1: graph-language alignment; stage 2: instruction tuning with LoRA): the
command `python train_sft.py ...`, `torchrun ... train_sft.py ...` or `accelerate launch ... train_sft.py ...`, and
the same as the console script `llamo-train`. The implementation is `llamo/sft.py` (`llamo.sft`: the parser, the
trainer and `main`, importable as a library); this file only runs its `cli()`, so `--help` shows that module's
description and options.
"""

from llamo.sft import cli


if __name__ == "__main__":
    cli()
