#!/usr/bin/env bash
# The GPU checks of issue 16, as one short script for a machine with a CUDA device (about
# five minutes; nothing here runs in `make test`, which passes without a GPU):
#
#   1. cupy-cuda12x from pip if cupy cannot be imported (the only install);
#   2. the GPU tests: the CuPy module on real CuPy against the numpy module
#      (tests/test_backend_cupy.py, which also runs its stand-in checks), the torch
#      backend's CUDA paths (tests/test_backend_torch_cuda.py: a CNN with batchnorm and
#      pooling, dropout from a CUDA generator, hvp/gnvp, torchrun over NCCL with two GPUs)
#      and test_backend_torch.py::test_cuda_equals_cpu — a skip here is a failure (-rs
#      lists why);
#   3. the W1/W5 table on the GPU (benchmarks/cupy_bench.py): the generated torch module on
#      cuda, the generated CuPy module, PyTorch eager autograd on cuda, the numpy module.
#
#   bash benchmarks/gpu_check.sh [--quick]      # --quick: small N in the table
#
# Output: the pytest summary and the table on stdout; the results as JSON in $OUT (or
# benchmarks/results/) as gpu_check.json. Exit status: the tests' (1 on a failure or skip).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
QUICK=${1:-}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'devices', torch.cuda.device_count())"

if ! "$PY" -c "import cupy" 2>/dev/null; then
    echo "== installing cupy-cuda12x"
    "$PY" -m pip install -q --disable-pip-version-check cupy-cuda12x || exit 2
fi
"$PY" -c "import cupy; print('cupy', cupy.__version__, 'devices',
      cupy.cuda.runtime.getDeviceCount())" || exit 2

echo "== GPU tests"
timeout 600 "$PY" -m pytest -q -p no:cacheprovider -rs -x \
    tests/test_backend_cupy.py tests/test_backend_torch_cuda.py \
    "tests/test_backend_torch.py::test_cuda_equals_cpu" 2>&1 | tee "$RESULTS/gpu_tests.txt"
status=${PIPESTATUS[0]}
# a skipped GPU test means the GPU path was not checked: count it as a failure here
# (the NCCL test needs two devices and may skip on one)
if grep -E "^SKIPPED" "$RESULTS/gpu_tests.txt" | grep -v "two CUDA devices" | grep -q .; then
    echo "gpu_check: a GPU test was skipped on this machine (see above)"
    status=1
fi

echo "== symgrad check on a CuPy module (its checking process runs under a 4 GiB address-space"
echo "   limit, symgrad.check.MEMORY_LIMIT: CUDA's context may not fit in it)"
WORK=$(mktemp -d)
"$PY" -m symgrad generate examples/digits_cnn.toml --backend cupy -o "$WORK/cnn_cupy.py" \
    && timeout 300 "$PY" -m symgrad check "$WORK/cnn_cupy.py" | tee "$RESULTS/gpu_check_cupy.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check: symgrad check failed on the CuPy module"; status=1; }
rm -rf "$WORK"

echo "== W1/W5 on the GPU (one epoch of SGD, float32; medians of paired repetitions)"
timeout 900 "$PY" benchmarks/cupy_bench.py --workloads W1,W5 --device cuda --reps 5 \
    ${QUICK:+--quick} --json "$RESULTS/gpu_check.json" \
    || echo "gpu_check: the timing table failed (status $?)"
exit "$status"
