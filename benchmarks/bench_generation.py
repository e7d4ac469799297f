"""Generation: LLaMo against its own language model alone, on the same prompts (same length), greedy.

    python benchmarks/bench_generation.py [--repeats 9] [--new_tokens 64] [--batch_sizes 1 8] [--llm smollm2|FOLDER]

By default LLaMo is the small random model (`common.SMALL_TEXT_CONFIG`); `--llm smollm2` builds it around the real
SmolLM2-135M-Instruct (`llamo.smollm2`; or any causal-LM folder) with its own chat template, and the end-to-end target
tightens from 1.15x to 1.05x. The bare model is the LLM's causal-LM class holding LLaMo's language-model and lm_head
weights; its prompts are LLaMo's with every graph-token slot replaced by an ordinary token. Each generate call is forced to `--new_tokens` tokens.
Per new token = median time between consecutive generation steps within a call (a logits processor notes the
time of each step), i.e. a decoding step without the prefill; prefill = a call for 1 new token. The decode-step row times the models' forward for one new token on a KV cache (16 steps per call), without
GenerationMixin: the same quantity with far less noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from common import (
    Target,
    add_llm_argument,
    add_thread_argument,
    bare_language_model,
    build_benchmark_llamo,
    chat_batch,
    filler_token_id,
    format_table,
    interleaved_timings,
    llm_label,
    load_chebi20_smiles,
    median_ratio,
    print_header,
    print_targets,
    set_threads,
    text_only_inputs,
)


class StepClock(LogitsProcessor):
    """Notes the time of every generation step (called once per new token, right after the model's forward)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores


def generate_fn(model, inputs: dict, new_tokens: int, step_seconds: list[float] | None = None):
    """A call that generates exactly `new_tokens` tokens greedily and checks it did; with `step_seconds`, it also
    appends the median time between consecutive steps (one decoding step: forward + greedy pick) of each call."""

    def run(_chunk=None):
        clock = StepClock()
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )
        assert output.shape[1] == inputs["input_ids"].shape[1] + new_tokens
        if step_seconds is not None:
            step_seconds.append(statistics.median(later - earlier for earlier, later in zip(clock.times, clock.times[1:])))

    return run


def decode_step_fn(model, inputs: dict, steps: int = 16):
    """`steps` single-token forwards on top of the prompt's KV cache (cropped back after each), i.e. the model-side
    cost of one decoding step without GenerationMixin around it: a low-noise check of the per-token overhead."""
    with torch.inference_mode():
        output = model(**inputs, use_cache=True)
    cache = getattr(output, "cache", None) or output.past_key_values
    length = inputs["input_ids"].shape[1]
    batch = inputs["input_ids"].shape[0]
    token = torch.full((batch, 1), 5, dtype=torch.long)
    attention_mask = torch.cat((inputs["attention_mask"], torch.ones(batch, 1, dtype=torch.long)), dim=1)
    position_ids = attention_mask.sum(dim=1, keepdim=True) - 1
    cache_argument = "cache" if hasattr(output, "cache") else "past_key_values"

    def run(_chunk=None):
        with torch.inference_mode():
            for _ in range(steps):
                model(
                    input_ids=token,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_argument: cache},
                )
                cache.crop(-1)  # drop the new token again: every step sees the same cache
        assert cache.get_seq_length() == length

    return run


def main(argv: list[str] | None = None) -> list[Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="fewer swing the ratios by +-10%% on a loaded machine")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--aa", action="store_true", help="also time a second copy of the bare model: an A/A ratio shows the noise"
    )
    add_llm_argument(parser)
    add_thread_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    torch.manual_seed(0)
    llamo, processor, description = build_benchmark_llamo(args.llm, seed=0)
    llamo.eval()
    bare = bare_language_model(llamo).eval()
    bare_copy = bare_language_model(llamo).eval() if args.aa else None
    filler = filler_token_id(processor.tokenizer)
    # the end-to-end target: 1.15x against the small model (a pessimistic ratio), 1.05x around a real LLM
    end_to_end_limit = 1.15 if args.llm is None else 1.05
    label = llm_label(args.llm)
    smiles, source = load_chebi20_smiles(max(args.batch_sizes))

    print_header(
        f"{label}Generation: LLaMo vs its language model alone",
        "python benchmarks/bench_generation.py " + " ".join(argv or sys.argv[1:]),
    )
    print(
        f"models: {description}; text {dict((k, getattr(llamo.config.text_config, k)) for k in ('hidden_size', 'num_hidden_layers', 'vocab_size'))}, "
        f"graph side at LLaMo's sizes ({llamo.config.num_graph_tokens} graph tokens); fp32; molecules from {source}"
    )
    print(f"greedy, {args.new_tokens} new tokens forced; {args.repeats} repeats, calls interleaved; medians\n")

    rows, targets = [], []
    for batch_size in args.batch_sizes:
        inputs = dict(chat_batch(processor, smiles[:batch_size]))
        bare_inputs = text_only_inputs(inputs, llamo.config.graph_token_id, filler)
        per_token = {"llamo": [], "bare": [], "copy": []}
        methods = {
            "llamo_1": generate_fn(llamo, inputs, 1),
            "bare_1": generate_fn(bare, bare_inputs, 1),
            "llamo_n": generate_fn(llamo, inputs, args.new_tokens, per_token["llamo"]),
            "bare_n": generate_fn(bare, bare_inputs, args.new_tokens, per_token["bare"]),
            "llamo_step": decode_step_fn(llamo, inputs),
            "bare_step": decode_step_fn(bare, bare_inputs),
        }
        if bare_copy is not None:
            methods["copy_n"] = generate_fn(bare_copy, bare_inputs, args.new_tokens, per_token["copy"])
        for method in methods.values():  # warm-up
            method()
        for steps in per_token.values():
            steps.clear()
        timings = interleaved_timings(methods, [None], 1, args.repeats, seed=batch_size)
        prompt_length = inputs["input_ids"].shape[1]
        for name in ("llamo", "bare"):
            rows.append(
                [
                    name,
                    batch_size,
                    prompt_length,
                    f"{statistics.median(timings[f'{name}_1']) * 1e3:.1f}",
                    f"{statistics.median(per_token[name]) * 1e3:.2f}",
                    f"{statistics.median(timings[f'{name}_n']) * 1e3:.0f}",
                ]
            )
        targets += [
            Target(
                f"{label}batch {batch_size}: time per new token, LLaMo / bare",
                median_ratio(per_token["llamo"], per_token["bare"]),
                1.05,
            ),
            Target(
                f"{label}batch {batch_size}: decode-step forward (model only), LLaMo / bare",
                median_ratio(timings["llamo_step"], timings["bare_step"]),
                1.05,
            ),
            Target(
                f"{label}batch {batch_size}: end to end, LLaMo / bare",
                median_ratio(timings["llamo_n"], timings["bare_n"]),
                end_to_end_limit,
            ),
            Target(
                f"{label}batch {batch_size}: prefill + 1 token, LLaMo / bare",
                median_ratio(timings["llamo_1"], timings["bare_1"]),
                None,
            ),
        ]
        if bare_copy is not None:
            targets += [
                Target(
                    f"{label}batch {batch_size}: A/A time per new token, bare copy / bare",
                    median_ratio(per_token["copy"], per_token["bare"]),
                    None,
                ),
                Target(
                    f"{label}batch {batch_size}: A/A end to end, bare copy / bare",
                    median_ratio(timings["copy_n"], timings["bare_n"]),
                    None,
                ),
            ]
    print(
        format_table(
            [
                "model",
                "batch",
                "prompt tokens",
                "prefill+1 token ms",
                "ms per new token",
                f"end to end ({args.new_tokens} tokens) ms",
            ],
            rows,
        )
    )
    print()
    print_targets(targets)
    return targets


if __name__ == "__main__":
    main()
