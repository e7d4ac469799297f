"""Step timing of a training run: median wall time per optimizer step, tokens per second and peak GPU memory.

`train_sft.py` records it with `StepTimer` and writes it to `training_summary.json` (`timing`); the GPU check
(`llamo.gpu_check`) reads it from there.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import TrainerCallback


def synchronize() -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gpu_memory() -> dict:
    """Peak GPU memory since the last call (GiB; None on a CPU), and reset the peak."""
    if not torch.cuda.is_available():
        return {"peak_gpu_memory_gib": None}
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return {"peak_gpu_memory_gib": round(peak, 2)}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (the GPU synchronized), and the tokens trained on (SFTTrainer's `num_tokens`)."""

    def __init__(self):
        self.durations: list[float] = []
        self.num_tokens = 0.0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.durations.append(time.perf_counter() - self._start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.num_tokens = max(self.num_tokens, float((logs or {}).get("num_tokens", 0.0)))

    def report(self) -> dict:
        """Median step time (the first step, which pays for warm-up, left out), tokens/s, peak GPU memory."""
        if not self.durations:
            return {"steps": 0, "step_s": None, "tokens_per_s": None, **peak_gpu_memory()}
        measured = self.durations[1:] or self.durations
        step = statistics.median(measured)
        tokens_per_step = self.num_tokens / len(self.durations)
        return {"steps": len(self.durations), "step_s": step, "tokens_per_s": tokens_per_step / step, **peak_gpu_memory()}


__all__ = ["StepTimer", "peak_gpu_memory", "synchronize"]
