#!/usr/bin/env bash
# LLaMo at real scale on one GPU in a few minutes (llamo/gpu_check.py): a random ~1B Llama-shaped LM, stage 1 and
# stage 2 in bf16 (sdpa; flash-attention too when flash_attn is installed), stage 2 under DeepSpeed ZeRO-2, batched
# generation; prints step time, tokens/s and peak GPU memory, writes outputs/gpu_check/gpu_check.json.
# On a fresh machine, from the repository root:
#   python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && scripts/gpu_check.sh
# CPU smoke run of the same code path (what the tests run): scripts/gpu_check.sh --cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" -m llamo.gpu_check "$@"
