"""Serving: HF batched `generate` against vLLM through the LLaMo gateway, at 1, 8 and 64 concurrent requests.

    python benchmarks/bench_serving.py [--model small|tiny|smollm2] [--prompts 64] [--new_tokens 32] [--concurrency 1 8 64]

Needs the vLLM venv (bash scripts/install_vllm.sh). Models: `smollm2` is the real LLaMo-SmolLM2 (the shipped weights
around the registry's SmolLM2, assembled into outputs/llamo-smollm2 when missing or stale) answering held-out questions of the
recipe's dev molecules (IUPAC names, QM9 properties, computed facts; `llamo.recipe`); `small` and `tiny` are random
models answering fixed conversations (one or two molecules, some multi-turn). The same `--prompts` conversations are
answered at each concurrency c, greedily: with `--answers forced` (the default) every answer is forced to
`--new_tokens` tokens (`min_new_tokens` / vLLM's `min_tokens`, which both mask EOS), all requests equally long; with
`--answers natural` each answer ends at its EOS (at most `--new_tokens`), as in real use: a batch of HF `generate`
runs until its longest answer ends, while vLLM's continuous batching starts the next request in the freed slot, and
throughput counts the answers' tokens (up to and including EOS) only. "identical" compares each answer with HF's
(the forced tokens, or the answer up to EOS). Before that, the
equivalence pass: every conversation answered unforced (greedy, up to `--new_tokens`, stopping at EOS) by
`model.generate` one conversation at a time and by vLLM through the gateway at the largest concurrency, compared
token for token ("identical greedy answers"). The timed runs:
- HF: `model.generate` on left-padded batches of c conversations, one batch after the other; a request's latency is
  its batch's time (processor + generate).
- vLLM: the export (llamo-export-vllm) served by vLLM's OpenAI server on 127.0.0.1, the gateway (llamo-gateway) in
  its own process in front; c clients each send their next request as soon as the previous one is answered; a
  request's latency is its HTTP round trip through the gateway (featurization, projector, engine).
Throughput = generated tokens / wall time of the whole set. The answers' token ids are compared prompt by prompt.
With repeats > 1 the two engines take turns (order alternating) and the table shows medians.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch

from llamo.serving.engine import VLLMServer, free_port
from llamo.serving.export import export_for_vllm
from llamo.serving.tiny import build_servable_tiny_llamo

from common import ROOT, add_thread_argument, build_small_llamo, format_table, print_header, serving_conversations, set_threads


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (fraction in [0, 1])."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def held_out_conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """`count` held-out questions of the real model's recipe (dev molecules, never trained on), tasks interleaved, as
    LLaMo messages with molecule items."""
    from llamo.data import conversation_with_molecules
    from llamo.recipe import evaluation_tables, held_out_questions

    with tempfile.TemporaryDirectory() as scratch:
        files = evaluation_tables(None, pathlib.Path(scratch))
        examples, _ = held_out_questions(files, per_task=-(-count // 3), seed=seed)  # IUPAC names, QM9, facts
    by_task: dict[str, list] = {}
    for example in examples:
        by_task.setdefault(example.task.split("/")[0], []).append(example)
    interleaved = [example for group in zip(*by_task.values()) for example in group]
    if len(interleaved) < count:
        raise ValueError(f"only {len(interleaved)} held-out questions for {count} prompts")
    return [conversation_with_molecules(example.smiles, example.messages) for example in interleaved[:count]]


def build_model(name: str, dtype: torch.dtype):
    """(model, processor, conversation maker) of `--model`."""
    if name == "smollm2":
        from llamo.cli import load_model_and_processor
        from llamo.release import ensure_assembled

        folder = ROOT / "outputs" / "llamo-smollm2"
        ensure_assembled(output_dir=folder)  # the shipped weights around the registry's SmolLM2, with this code
        model, processor = load_model_and_processor(folder, device="cpu", dtype=dtype)
        return model, processor, held_out_conversations
    model, processor = build_small_llamo(seed=0) if name == "small" else build_servable_tiny_llamo(seed=0)
    return model.to(dtype).eval(), processor, serving_conversations


def until_eos(ids: list[int], eos: int | list[int] | None) -> list[int]:
    """The answer's tokens before its first EOS (HF pads the finished rows of a batch after it; whether an engine
    returns the EOS itself does not matter)."""
    stops = set(eos if isinstance(eos, list) else [eos])
    return next((ids[:position] for position, token in enumerate(ids) if token in stops), ids)


def answer_tokens(ids: list[int], eos, forced: bool) -> int:
    """Tokens an answer is worth: all of them when forced, else those up to and including its EOS."""
    if forced:
        return len(ids)
    answer = until_eos(ids, eos)
    return len(answer) + (len(answer) < len(ids))


def run_hf(model, processor, conversations, concurrency: int, new_tokens: int, forced: bool = True) -> dict:
    latencies, answers = [], []
    start = time.perf_counter()
    for first in range(0, len(conversations), concurrency):
        batch = conversations[first : first + concurrency]
        began = time.perf_counter()
        inputs = processor.apply_chat_template(
            batch, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        ).to(model.device)  # fmt: skip
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens if forced else None, do_sample=False
            )
        answers += output[:, inputs["input_ids"].shape[1] :].tolist()
        latencies += [time.perf_counter() - began] * len(batch)
    wall = time.perf_counter() - start
    return {"wall": wall, "latencies": latencies, "answers": answers}


async def run_gateway_async(url: str, conversations, concurrency: int, new_tokens: int, forced: bool = True) -> dict:
    queue = list(enumerate(conversations))
    latencies, answers = [], [None] * len(conversations)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:

        async def worker():
            while queue:
                index, messages = queue.pop(0)
                body = {
                    "messages": messages,
                    "max_tokens": new_tokens,
                    "min_tokens": new_tokens if forced else 0,
                    "temperature": 0,
                }
                began = time.perf_counter()
                response = await http.post(f"{url}/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - began)
                response.raise_for_status()
                answers[index] = response.json()["choices"][0]["token_ids"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"wall": wall, "latencies": latencies, "answers": answers}


def start_gateway(export_dir: pathlib.Path, vllm_url: str, log_path: pathlib.Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "llamo.serving.gateway", "--export_dir", str(export_dir), "--vllm_url", vllm_url,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115 (the log outlives this call)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError("the gateway did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        choices=["small", "tiny", "smollm2"],
        default="small",
        help="smollm2: the real LLaMo-SmolLM2 on held-out questions; small: random Llama width 512 x 8 layers "
        "(head_dim 64) behind the full-size graph side; tiny: width 64, head_dim 32",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights of both engines")  # fmt: skip
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--venv", default=None, help="vLLM venv (default $LLAMO_VLLM_VENV or .venv-vllm)")
    parser.add_argument("--answers", choices=["forced", "natural"], default="forced",
                        help="forced: every answer --new_tokens long; natural: answers end at EOS (see above)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="where HF generate runs (cuda on a GPU machine; vLLM picks its own)")
    add_thread_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    print_header(
        "Serving: HF batched generate vs vLLM through the gateway", "python benchmarks/bench_serving.py " + " ".join(sys.argv[1:])
    )

    model, processor, make_conversations = build_model(args.model, getattr(torch, args.dtype))
    conversations = make_conversations(args.prompts)
    eos = model.generation_config.eos_token_id
    forced = args.answers == "forced"
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = export_for_vllm(model, processor, pathlib.Path(scratch) / "served")  # checked on the CPU
        model.to(args.device)
        with VLLMServer(export_dir, venv=args.venv, log_path=pathlib.Path(scratch) / "vllm.log", max_model_len=1024) as server:
            gateway, url = start_gateway(export_dir, server.url, pathlib.Path(scratch) / "gateway.log")
            try:
                run_hf(model, processor, conversations[:2], 2, 4)  # warm-up of both paths
                asyncio.run(run_gateway_async(url, conversations[:2], 2, 4))
                reference = run_hf(model, processor, conversations, 1, args.new_tokens, forced=False)["answers"]
                served = asyncio.run(run_gateway_async(url, conversations, max(args.concurrency), args.new_tokens, forced=False))
                same_answers = sum(until_eos(a, eos) == until_eos(b, eos) for a, b in zip(reference, served["answers"]))
                print(
                    f"equivalence pass: {same_answers}/{len(conversations)} identical unforced greedy answers",
                    file=sys.stderr,
                    flush=True,
                )
                rows = []
                for concurrency in args.concurrency:
                    results = {"HF generate": [], "vLLM + gateway": []}
                    for repeat in range(args.repeats):
                        order = ["HF generate", "vLLM + gateway"][:: 1 if repeat % 2 == 0 else -1]
                        for engine in order:
                            if engine == "HF generate":
                                run = run_hf(model, processor, conversations, concurrency, args.new_tokens, forced)
                            else:
                                run = asyncio.run(run_gateway_async(url, conversations, concurrency, args.new_tokens, forced))
                            run["tokens"] = sum(answer_tokens(ids, eos, forced) for ids in run["answers"])
                            results[engine].append(run)
                    throughput = {engine: [r["tokens"] / r["wall"] for r in runs] for engine, runs in results.items()}
                    ratios = [v / h for v, h in zip(throughput["vLLM + gateway"], throughput["HF generate"])]
                    pairs = zip(results["HF generate"][-1]["answers"], results["vLLM + gateway"][-1]["answers"])
                    same_tokens = sum(
                        (a if forced else until_eos(a, eos)) == (b if forced else until_eos(b, eos)) for a, b in pairs
                    )
                    for engine, runs in results.items():
                        latencies = [value for run in runs for value in run["latencies"]]
                        rows.append([
                            concurrency, engine, f"{statistics.median(throughput[engine]):.1f}",
                            f"{percentile(latencies, 0.5):.2f}", f"{percentile(latencies, 0.95):.2f}",
                            f"{statistics.median(ratios):.2f}x" if engine != "HF generate" else "1.00x",
                            f"{same_tokens}/{len(conversations)}" if engine != "HF generate" else "",
                        ])  # fmt: skip
                    print(f"concurrency {concurrency} done", file=sys.stderr, flush=True)
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
    header = [
        "concurrent requests",
        "engine",
        "tokens/s",
        "p50 latency (s)",
        "p95 latency (s)",
        "vs HF",
        "identical forced tokens" if forced else "identical answers",
    ]
    print(format_table(header, rows))
    print(f"\nidentical greedy answers (unforced, to EOS, vLLM at {max(args.concurrency)} concurrent vs generate one at a time): "
          f"{same_answers}/{len(conversations)}")  # fmt: skip
    print(f"\n{len(conversations)} conversations ({args.model}), {args.answers} answers of up to {args.new_tokens} new tokens, greedy, {args.dtype}; "
          f"HF on {args.device}, torch threads {args.threads}; vLLM CPU engine with its own thread binding; repeats {args.repeats}.")  # fmt: skip


if __name__ == "__main__":
    main()
