#!/usr/bin/env bash
# GPU smoke test of the training path, for a bare CUDA machine (Python 3.12, torch, triton, transformers; no
# vLLM, no network). Run from the repository root:
#     bash scripts/gpu_smoke.sh [OUT_DIR]            (OUT_DIR defaults to $OUT, else bench/results)
# Small wheels travel along in .whl/ (megatron-core 0.16.1's cp312 wheel, ~2.6 MB; fetch it where pip works:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1 )
# and are installed into /tmp/site. primeflow is imported from this checkout without building its CPU C++
# extension (CUDA tensors run the Triton kernels). Compiled Triton kernels (no TRITON_INTERPRET) are checked
# against float64 and timed against torch eager; then one PRIME step's training stages run in bf16 with fp32
# masters on megatron-core's DDP + optimizer, with time and peak memory per stage (scripts/gpu_smoke.py).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:-${OUT:-bench/results}}"
mkdir -p "$out_dir"
unset TRITON_INTERPRET
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_smoke: installing .whl/ failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# `primeflow` = pkgroot/ + the kernels, models and trainer folders (what setup.py's package_dir maps)
pkg=/tmp/primeflow_src/primeflow
rm -rf /tmp/primeflow_src && mkdir -p "$pkg"
cp pkgroot/__init__.py pkgroot/__main__.py "$pkg/"
for d in kernels models trainer; do ln -s "$PWD/$d" "$pkg/$d"; done
export PYTHONPATH="/tmp/primeflow_src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
stamp="$(date -u +%Y%m%d_%H%M%S)"
timeout 540 python3 scripts/gpu_smoke.py --device cuda --size "${GPU_SMOKE_SIZE:-60M}" \
    --out "$out_dir/gpu_smoke_${stamp}.json" 2>&1 | tee "$out_dir/gpu_smoke_${stamp}.log"
exit "${PIPESTATUS[0]}"
