#!/usr/bin/env bash
# cervrt's GPU acceptance run: one command for a machine with one GPU (sized for an H200, driver 580 =
# CUDA 13.0, PyTorch with CUDA, cuda-bindings, nvidia-cuda-nvrtc; no TensorRT, no onnxruntime-gpu, no
# network). From the repository root:
#
#     bash benchmarks/gpu_acceptance.sh            # the GPU run, under 9 minutes (each step has a timeout)
#     bash benchmarks/gpu_acceptance.sh --emulate  # smoke test of the host logic on a CPU (emulated driver)
#
# Steps: the machine; the C extension (build_ext --inplace; the host fusion falls back to numpy without
# it); the gpu-marked tests; benchmarks/gpu_acceptance.py (kernel labels vs the C path bitwise, the
# loader's copy/compute overlap from CUDA events, kernel vs copy bandwidth, predict_slide with the torch
# engine on CUDA in fp16: patches/s, e2e/engine); compute-sanitizer memcheck on the kernel check where
# the tool exists. Results: $OUT/gpu_acceptance.json (one JSON, the sanitizer and pytest results
# folded in) and $OUT/log.txt. TensorRT is not run here: it stays compiled, unexecuted.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/cervrt-gpu-acceptance}; mkdir -p "$OUT"
PY=${PY:-python3}
EMULATE=""; [ "${1:-}" = "--emulate" ] && EMULATE="--emulate"
TESTS="tests/runtime/test_cuda_fusion.py tests/runtime/test_cuda_kernels_load.py tests/runtime/test_cuda_path_engines.py tests/engines/test_torch_device_io.py"
step() { echo; echo "=== $1 ($(date +%T))"; }
{
step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
$PY -c "import sys, numpy; print(sys.version.split()[0], 'numpy', numpy.__version__)"

step "C extension (host fusion; numpy without it)"
timeout 60 $PY setup.py -q build_ext --inplace >"$OUT/build_ext.txt" 2>&1; echo "build_ext rc=$?"

step "pytest: the gpu-marked tests ($([ -n "$EMULATE" ] && echo 'emulated suites instead' || echo 'real GPU'))"
if [ -n "$EMULATE" ]; then MARK="not gpu"; else MARK="gpu"; fi
timeout 120 $PY -m pytest -q -p no:cacheprovider -rfE -m "$MARK" $TESTS --junitxml="$OUT/pytest.xml" 2>&1 | tail -15
echo "pytest rc=${PIPESTATUS[0]}"

step "acceptance checks"
timeout 210 $PY benchmarks/gpu_acceptance.py --out "$OUT" $EMULATE; echo "acceptance rc=$?"

SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$EMULATE" ] && [ -n "$SANITIZER" ]; then
  step "compute-sanitizer memcheck on the kernel check"
  timeout 90 "$SANITIZER" --tool memcheck --error-exitcode 9 --print-limit 20 \
      $PY benchmarks/gpu_acceptance.py --out "$OUT" --only kernels_vs_c 2>&1 | tail -12 | tee "$OUT/memcheck.txt"
  echo "memcheck rc=${PIPESTATUS[0]}" | tee -a "$OUT/memcheck.txt"
else
  echo "no compute-sanitizer run (emulated, or the tool is not installed)" | tee "$OUT/memcheck.txt"
fi

step "one JSON"
$PY benchmarks/gpu_acceptance_fold.py "$OUT"
} 2>&1 | tee "$OUT/log.txt"
