"""Serving: HF batched `generate` against vLLM through the LLaMo gateway, at 1, 8 and 64 concurrent requests.

    python benchmarks/bench_serving.py [--model small|tiny] [--prompts 64] [--new_tokens 32] [--concurrency 1 8 64]

Needs the vLLM venv (bash scripts/install_vllm.sh). The same `--prompts` conversations (one or two molecules, some
multi-turn) are answered at each concurrency c, greedily, every answer forced to `--new_tokens` tokens
(`min_new_tokens` / vLLM's `min_tokens`, which both mask EOS):
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


def run_hf(model, processor, conversations, concurrency: int, new_tokens: int) -> dict:
    latencies, answers = [], []
    start = time.perf_counter()
    for first in range(0, len(conversations), concurrency):
        batch = conversations[first : first + concurrency]
        began = time.perf_counter()
        inputs = processor.apply_chat_template(
            batch, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        )  # fmt: skip
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        answers += output[:, inputs["input_ids"].shape[1] :].tolist()
        latencies += [time.perf_counter() - began] * len(batch)
    wall = time.perf_counter() - start
    return {"wall": wall, "tokens": sum(map(len, answers)), "latencies": latencies, "answers": answers}


async def run_gateway_async(url: str, conversations, concurrency: int, new_tokens: int) -> dict:
    queue = list(enumerate(conversations))
    latencies, answers = [], [None] * len(conversations)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:

        async def worker():
            while queue:
                index, messages = queue.pop(0)
                body = {"messages": messages, "max_tokens": new_tokens, "min_tokens": new_tokens, "temperature": 0}
                began = time.perf_counter()
                response = await http.post(f"{url}/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - began)
                response.raise_for_status()
                answers[index] = response.json()["choices"][0]["token_ids"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"wall": wall, "tokens": sum(map(len, answers)), "latencies": latencies, "answers": answers}


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
    parser.add_argument("--model", choices=["small", "tiny"], default="small",
                        help="small: Llama width 512 x 8 layers (head_dim 64) behind the full-size graph side; tiny: width 64, head_dim 32")  # fmt: skip
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--venv", default=None, help="vLLM venv (default $LLAMO_VLLM_VENV or .venv-vllm)")
    add_thread_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    print_header(
        "Serving: HF batched generate vs vLLM through the gateway", "python benchmarks/bench_serving.py " + " ".join(sys.argv[1:])
    )

    model, processor = build_small_llamo(seed=0) if args.model == "small" else build_servable_tiny_llamo(seed=0)
    model.eval()
    conversations = serving_conversations(args.prompts)
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = export_for_vllm(model, processor, pathlib.Path(scratch) / "served")
        with VLLMServer(export_dir, venv=args.venv, log_path=pathlib.Path(scratch) / "vllm.log", max_model_len=1024) as server:
            gateway, url = start_gateway(export_dir, server.url, pathlib.Path(scratch) / "gateway.log")
            try:
                run_hf(model, processor, conversations[:2], 2, 4)  # warm-up of both paths
                asyncio.run(run_gateway_async(url, conversations[:2], 2, 4))
                rows = []
                for concurrency in args.concurrency:
                    results = {"HF generate": [], "vLLM + gateway": []}
                    for repeat in range(args.repeats):
                        order = ["HF generate", "vLLM + gateway"][:: 1 if repeat % 2 == 0 else -1]
                        for engine in order:
                            if engine == "HF generate":
                                results[engine].append(run_hf(model, processor, conversations, concurrency, args.new_tokens))
                            else:
                                results[engine].append(
                                    asyncio.run(run_gateway_async(url, conversations, concurrency, args.new_tokens))
                                )
                    throughput = {engine: [r["tokens"] / r["wall"] for r in runs] for engine, runs in results.items()}
                    ratios = [v / h for v, h in zip(throughput["vLLM + gateway"], throughput["HF generate"])]
                    same = sum(
                        a == b for a, b in zip(results["HF generate"][-1]["answers"], results["vLLM + gateway"][-1]["answers"])
                    )
                    for engine, runs in results.items():
                        latencies = [value for run in runs for value in run["latencies"]]
                        rows.append([
                            concurrency, engine, f"{statistics.median(throughput[engine]):.1f}",
                            f"{percentile(latencies, 0.5):.2f}", f"{percentile(latencies, 0.95):.2f}",
                            f"{statistics.median(ratios):.2f}x" if engine != "HF generate" else "1.00x",
                            f"{same}/{len(conversations)}" if engine != "HF generate" else "",
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
        "identical greedy answers",
    ]
    print(format_table(header, rows))
    print(f"\n{len(conversations)} conversations (1-2 molecules), {args.new_tokens} new tokens each, greedy, fp32; "
          f"HF torch threads {args.threads}; vLLM CPU engine with its own thread binding; repeats {args.repeats}.")  # fmt: skip


if __name__ == "__main__":
    main()
