#!/usr/bin/env bash
# The one prepared check for the GPU machine (one H200; torch 2.11+cu130,
# Python 3.12, no network): build the CUDA kernels for sm_90, test the
# persistent kernels (their GPU tests, then compute-sanitizer racecheck and
# synccheck on a small case), run the other GPU tests, benchmark fp32 and
# bf16 with `fusedlstm bench --device cuda` (the "cuda" backend takes the
# persistent kernels where they fit, cuDNN's nn.LSTM in the same run), list
# the kernels of small-h128 on the per-step and the persistent path
# (benchmarks/profile_kernels.py), and print the combined short table last.
#
#   [FUSEDLSTM_COMMIT=<hash>] bash benchmarks/device_check.sh [RESULTS_DIR]
#
# Run from anywhere; it works in the repository that holds it. RESULTS_DIR:
# default $OUT when set, else ./device-results. FUSEDLSTM_COMMIT names the
# commit in results.json where the copied tree has no .git.
#
# Written to RESULTS_DIR (8 files):
#   log.txt                                  everything printed, every phase
#   junit.xml                                the GPU tests' results (the others': in log.txt)
#   tests.txt                                one line per test as it ends, both test phases
#                                            (FUSEDLSTM_TEST_LOG): kept when a timeout cuts
#                                            pytest off before its summary
#   persistent-junit.xml                     the persistent kernels' GPU tests
#   fp32/{results.json,ratios.png}           `fusedlstm bench --dtype float32` (its table: in log.txt)
#   bf16/{results.json,ratios.png}           `fusedlstm bench --dtype bfloat16`
#
# A failing phase does not stop the later ones (a broken build still leaves
# nn.LSTM's figures and the test failures to read); it is named in the summary
# and makes the exit status 1.
#
# Time budget: under 8 minutes at worst. Each phase has its own timeout;
# their sum with the 5 s grace of each (467 s) is the worst case. The CPU
# tests are CI's (no GPU needed), so they are left out here. The timeouts
# follow the times measured on the H200 (2026-11-28, torch 2.11, commit
# 62c5e73, before the persistent kernels existed) where there are any:
#   environment report        7 s       (timeout 12 s)
#   build, sm_90, 16 jobs     34 s      (timeout 75 s: persistent_kernels.cu adds ~30 s of
#                                       nvcc on one core, not measured there)
#   persistent GPU tests      not measured (timeout 60 s; ~195 tests, T = 5)
#   compute-sanitizer         not measured (timeout 50 s: racecheck then synccheck, only
#                                       the persistent kernels instrumented)
#   GPU tests (-m cuda)       over 125 s with 12 workers, ~970 tests (timeout 100 s: what
#                             ran is in tests.txt)
#   bench float32             55 s for all 22 cases at 0.1 s per case (timeout 55 s)
#   bench bfloat16            38 s (timeout 40 s)
#   kernel profiles           not measured (timeouts 12 s and 18 s): benchmarks/profile_kernels.py
#                             on small-h128 in float32, nn.LSTM and the CUDA backend, first with
#                             FUSEDLSTM_PERSISTENT=0 (which kernels make the per-step path's 84 ms
#                             at small-h128, benchmarks/RESULTS.md), then on the persistent
#                             kernels (small-h128, small-b8)
# tests/conftest.py starts the tests marked slow first, so that no long test
# starts last.
# A timeout sends SIGINT first, so that pytest can still write its summary and
# junit.xml and the bench reports the cases it finished; SIGKILL 5 s later.
# The bench phases aim at 0.1 s of timed calls per case and provider (at
# least 5 calls after 3 warm-up calls); results are saved after every case.

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=$(mkdir -p "${1:-${OUT:-./device-results}}" && cd "${1:-${OUT:-./device-results}}" && pwd)
PYTHON=${PYTHON:-python3}
BENCH_BUDGET=${BENCH_BUDGET:-0.1}
export PYTHONUNBUFFERED=1

FAILED=()

phase() {  # phase NAME TIMEOUT_S COMMAND...: run it with a timeout, time it, record a failure
  local name=$1 limit=$2 start status
  shift 2
  echo
  echo "=== $name (timeout ${limit}s) === $(date -u +%H:%M:%S)"
  start=$(date +%s)
  # A child bash, so that COMMAND may be one of the functions exported below.
  timeout -s INT -k 5 "$limit" bash -c '"$@"' phase "$@"
  status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "=== $name: TIMED OUT after ${limit}s"
  fi
  echo "=== $name: exit $status after $(( $(date +%s) - start ))s"
  if [ "$status" -ne 0 ]; then
    FAILED+=("$name (exit $status)")
  fi
  return "$status"
}

environment() {
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
  echo "C++ compiler: $(c++ --version | head -1); nvcc: $(nvcc --version | tail -1)"
  "$PYTHON" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible")
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
import setuptools
print("setuptools", setuptools.__version__)
EOF
}

build() {
  # Editable install, no dependency resolution (no network there). Older
  # setuptools (< 64) cannot do PEP 660 editable installs: then build the
  # extension in place and import fusedlstm from the tree.
  export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FUSEDLSTM_CUDA=1
  if ! "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e "$ROOT"; then
    echo "--- editable install refused; falling back to: setup.py build_ext --inplace"
    (cd "$ROOT" && "$PYTHON" setup.py build_ext --inplace) || return 1
  fi
  linkage "$(ls "$ROOT"/fusedlstm/_C*.so | head -1)"
}

linkage() {  # linkage SO: which C++ runtime the extension uses (setup.py, loaded_libstdcxx)
  echo "C++ runtime of $(basename "$1"): $(ldd "$1" | grep -o 'libstdc++[^ ]* => [^ ]*')"
  if command -v nm > /dev/null; then
    echo "std::ostream::_M_insert defined inside it (0 expected: a private copy crashed there):" \
      "$(nm -D --defined-only "$1" | grep -c '_ZNSo9_M_insert')"
  fi
}

tests() {  # tests MARKER JUNIT_FILE [PYTEST ARGS...]: tests/ by default
  local marker=$1 junit=$2 extra=()
  shift 2
  extra+=(--junitxml="$RESULTS/$junit")
  if "$PYTHON" -c "import xdist" 2>/dev/null; then extra+=(-n 12); fi
  if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then extra+=(--timeout 100); fi
  FUSEDLSTM_TEST_LOG="$RESULTS/tests.txt" "$PYTHON" -m pytest -q -rfE -p no:cacheprovider -m "$marker" \
    "${extra[@]}" "${@:-tests}"
}

sanitize() {  # compute-sanitizer's racecheck and synccheck on the persistent kernels alone
  local status=0 tool
  for tool in racecheck synccheck; do
    echo "--- compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --kernel-name kns=persistent_ --error-exitcode 1 \
      "$PYTHON" "$ROOT/benchmarks/persistent_sanitize.py" || status=1
  done
  return "$status"
}

bench() {  # bench DTYPE DIR (float32: cuDNN and cuBLAS both without TF32)
  "$PYTHON" -m fusedlstm bench --device cuda --dtype "$1" --out "$RESULTS/$2" \
    --budget "$BENCH_BUDGET" --warmup 3 --tf32 off --no-progress
  local status=$?
  rm -f "$RESULTS/$2/table.md"  # printed above, into log.txt
  return "$status"
}

export -f environment build linkage tests sanitize bench
export ROOT RESULTS PYTHON BENCH_BUDGET

main() {
  cd "$ROOT" || exit 1
  # The tree itself first on the path: with the in-place fallback, that is
  # where fusedlstm is.
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "fusedlstm device check: $(date -u +%Y-%m-%dT%H:%M:%SZ), results in $RESULTS"
  echo "commit: ${FUSEDLSTM_COMMIT:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'unknown (set FUSEDLSTM_COMMIT)')}"

  phase "environment" 12 environment
  phase "build" 75 build
  phase "persistent GPU tests" 60 tests cuda persistent-junit.xml tests/test_persistent.py
  phase "compute-sanitizer" 50 sanitize
  phase "GPU tests" 100 tests cuda junit.xml tests --ignore=tests/test_persistent.py
  phase "bench float32" 55 bench float32 fp32
  phase "bench bfloat16" 40 bench bfloat16 bf16
  phase "kernel profile, per-step path" 12 env FUSEDLSTM_PERSISTENT=0 "$PYTHON" \
    "$ROOT/benchmarks/profile_kernels.py" --device cuda --dtype float32 --shape small-h128 \
    --providers nn.LSTM cuda --top 6
  phase "kernel profile" 18 "$PYTHON" "$ROOT/benchmarks/profile_kernels.py" --device cuda \
    --dtype float32 --shape small-h128 --shape small-b8 --providers nn.LSTM cuda --top 6

  echo
  if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "=== all phases passed"
  else
    echo "=== FAILED phases: ${FAILED[*]}"
  fi
  local saved=()
  for dir in fp32 bf16; do
    if [ -f "$RESULTS/$dir/results.json" ]; then saved+=("$RESULTS/$dir/results.json"); fi
  done
  echo
  if [ "${#saved[@]}" -gt 0 ]; then
    "$PYTHON" -m fusedlstm bench-table --short "${saved[@]}" || FAILED+=("bench-table")
  else
    echo "no benchmark results were saved"
  fi
  [ "${#FAILED[@]}" -eq 0 ]
}

main 2>&1 | tee "$RESULTS/log.txt"
exit "${PIPESTATUS[0]}"
