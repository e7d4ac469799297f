"""Quiet by default: third-party messages that never apply to a LLaMo run are dropped by their exact text, so that a
run's log shows LLaMo's own progress and results and the warnings that do apply (issue 24).

Installed when the `llamo` package is imported (`llamo/__init__.py`), before the libraries that print them are:

- bitsandbytes, on a CPU with AVX512-BF16, warns at import that its optional `kernels` package for 4-bit CPU matmuls
  is missing. PEFT imports bitsandbytes whenever it is installed (`peft.helpers`), and transformers' Trainer imports
  PEFT (`transformers.trainer_utils`), so every training process printed it, quantized or not. It can only matter
  to 4-bit inference on such a CPU; there, `pip install kernels` gives the faster kernel.
- DeepSpeed warns at its first use that it found no accelerator and falls back to the CPU. accelerate imports
  DeepSpeed whenever it is installed (`extract_model_from_parallel`, which every Trainer and TRL's SFTTrainer call),
  with or without a DeepSpeed config. DeepSpeed says it only where torch sees no GPU either, and there every LLaMo
  run uses the CPU anyway (train_sft.py defaults to `use_cpu`; `llamo.cli` refuses `cuda` without CUDA).
- transformers notes, whenever `resize_token_embeddings` grows a vocabulary with mean resizing (its default), that it
  does so and how to turn it off. LLaMo's builder asks for it explicitly (`mean_resizing=True`, for `<graph>`): the
  notice describes a choice made on purpose, at every model built around an LLM.
- PEFT's `PeftModel` reads `model.is_gradient_checkpointing`, a property transformers 5.2x deprecated (a
  FutureWarning addressed to PEFT's code, once per LoRA run). LLaMo's own code never reads it (tests/test_quiet.py).

Why filters rather than not importing the two packages: both imports happen inside PEFT and accelerate whenever the
package is installed, whatever LLaMo asks (`import peft` imports bitsandbytes; `SFTTrainer.__init__` imports
DeepSpeed); LLaMo itself imports neither unless quantization or a DeepSpeed config is used. The remote-code model
files (`*_llamo.py`) install nothing. Progress bars: `quiet_progress_bars`, called by the
programs (train_sft.py, run_tiny_pipeline.py), not on import.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import NamedTuple


class LogNoise(NamedTuple):
    """A message of a third-party logger that is dropped: records of `logger` whose text starts with `message`."""

    logger: str
    message: str


class WarningNoise(NamedTuple):
    """A Python warning that is ignored: `category` warnings whose text starts with `message`."""

    message: str
    category: type[Warning]


THIRD_PARTY_NOISE = (
    LogNoise("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    LogNoise("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
    LogNoise("transformers.modeling_utils", "The new embeddings will be initialized from a multivariate normal distribution"),
)
WARNING_NOISE = (WarningNoise("`is_gradient_checkpointing` is deprecated", FutureWarning),)


class DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`; every other record of the logger passes."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def install_filters() -> None:
    """Add the log filters to their loggers (created now if the library is not imported yet) and the warning
    filters; idempotent."""
    for noise in THIRD_PARTY_NOISE:
        logger = logging.getLogger(noise.logger)
        if not any(isinstance(existing, DropMessage) and existing.prefix == noise.message for existing in logger.filters):
            logger.addFilter(DropMessage(noise.message))
    for noise in WARNING_NOISE:
        # `message` is a regular expression matched at the start of the warning's text
        warnings.filterwarnings("ignore", message=noise.message, category=noise.category)


def is_interactive() -> bool:
    """Whether progress bars have a terminal to redraw in (tqdm writes to stderr)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def quiet_progress_bars() -> None:
    """Turn off `datasets`' progress bars (`load_dataset`, `map`, `filter`) and transformers' (loading weights) when
    stderr is not a terminal: in a log file each bar is a dozen redrawn lines per dataset, pass or model. LLaMo's own
    lines (row and skip counts, the trainer's losses, the run summary) say what was read and encoded."""
    if not is_interactive():
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
