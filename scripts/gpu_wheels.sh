#!/usr/bin/env bash
# The wheel folder for benchmarks/gpu_check.py on a bare GPU machine (torch and transformers
# already there; no Ray, no vLLM, no network): dsbs itself, DeepSpeed's sdist and the few
# packages the training core needs beyond torch and transformers. It must stay under the
# device tool's 64 MiB carry limit; the script fails past it.
#
#   bash scripts/gpu_wheels.sh              # -> build/gpu-wheels (Python 3.12, x86_64)
#   PYTHON_VERSION=3.11 bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/gpu-wheels}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PIP=${PIP:-.venv/bin/pip}
DEEPSPEED=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("deepspeed"))')
PYDANTIC=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pydantic"))')
PYDANTIC_CORE=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pydantic-core"))')

rm -rf "$OUT" && mkdir -p "$OUT"
"$PIP" wheel --quiet --no-deps --no-build-isolation -w "$OUT" .
# DeepSpeed has no wheel on PyPI: its sdist builds in seconds (ops compile on first use).
"$PIP" download --quiet --no-deps --no-binary deepspeed -d "$OUT" "deepspeed==$DEEPSPEED"
# What the core imports beyond torch/transformers, and DeepSpeed's small dependencies.
"$PIP" download --quiet --no-deps --only-binary :all: -d "$OUT" \
    --python-version "$PYTHON_VERSION" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "pydantic==$PYDANTIC" "pydantic-core==$PYDANTIC_CORE" annotated-types typing-inspection \
    pyarrow sentencepiece hjson msgpack py-cpuinfo ninja einops
SIZE=$(du -sm "$OUT" | cut -f1)
echo "gpu wheels: $(ls "$OUT" | wc -l) files, ${SIZE} MiB in $OUT"
if [ "$SIZE" -gt 62 ]; then
    echo "over 62 MiB: with the working tree it would pass the device tool's 64 MiB carry limit" >&2
    exit 1
fi
