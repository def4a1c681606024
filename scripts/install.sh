#!/usr/bin/env bash
# Install the template and its dev tools into the current Python environment.
# torch first: a bare `torch` requirement on a machine without it pulls a multi-GB CUDA build, so a
# machine without an NVIDIA driver gets the pinned CPU build; GPU machines keep (or get) a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "$PY" -m pip install -q "torch>=2.3"
    else
        "$PY" -m pip install -q "torch==2.13.0"
    fi
fi
"$PY" -m pip install -q -e ".[dev,examples,data]"
