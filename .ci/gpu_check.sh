#!/usr/bin/env bash
# The GPU check of attnfast's CUDA backend, for a machine with an NVIDIA GPU (written for an
# H100): build, tests, compute-sanitizer, a > 2**31-element case, the benchmark. Every step
# logs to $OUT/<step>.log and appends "<step> <exit status> <seconds>" to $OUT/summary.txt.
#
#   .ci/gpu_check.sh                  all steps, in order
#   .ci/gpu_check.sh build test       only these steps (the build stays in the tree, so a
#                                            later call can run the remaining steps)
# Steps: env build nvcc test memcheck racecheck initcheck large bench
# Knobs: OUT (default ./gpu_check_out), TORCH_CUDA_ARCH_LIST (setup.py default "8.0;9.0+PTX";
# "9.0" builds faster on an H100), BENCH_ARGS (extra arguments of attnfast.bench).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env build nvcc test memcheck racecheck initcheck large bench)
SAN="compute-sanitizer --error-exitcode 1 --print-limit 20"
command -v compute-sanitizer >/dev/null || SAN="/usr/local/cuda/bin/compute-sanitizer --error-exitcode 1 --print-limit 20"

run_step() {  # name command...
  local name=$1 t0 rc
  shift
  echo "== $name: $*"
  t0=$(date +%s)
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >>"$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log"
  echo "== $name: exit $rc, $(( $(date +%s) - t0 )) s (log $OUT/$name.log)"
  return $rc
}

status=0
for step in "${steps[@]}"; do
  case $step in
    env)
      run_step env bash -c "nvidia-smi; nvcc --version; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'" ;;
    build)  # the extension with its CUDA kernels, then a loud failure if they are missing
      run_step build bash -c "$PY -m pip install -v -e . --no-build-isolation && $PY -c 'from attnfast import _build; assert _build.load() and _build.has_cuda_kernels(), _build.error(); print(\"CUDA kernels registered\")'" ;;
    nvcc)  # registers / spills per kernel
      run_step nvcc bash .ci/nvcc_check.sh ;;
    test)  # the suite with CUDA visible, then every op against the reference (smoke)
      run_step test bash -c "ATTNFAST_REQUIRE=cuda,triton $PY -m pytest tests -x -q -ra && $PY .ci/sanitize_case.py" ;;
    memcheck)
      run_step memcheck $SAN --tool memcheck "$PY" .ci/sanitize_case.py --no-ref ;;
    racecheck)  # shared-memory hazards; slow, so the quick case
      run_step racecheck $SAN --tool racecheck --racecheck-report hazard "$PY" .ci/sanitize_case.py --quick --no-ref ;;
    initcheck)  # reads of uninitialized device memory (workspaces)
      run_step initcheck $SAN --tool initcheck "$PY" .ci/sanitize_case.py --quick --no-ref ;;
    large)
      run_step large "$PY" .ci/sanitize_case.py --large ;;
    bench)  # float32 NCHW, float16 channels_last; JSON / Markdown / PNG under $OUT/bench*
      run_step bench bash -c "$PY -m attnfast.bench --device cuda --out '$OUT/bench' ${BENCH_ARGS:-} && $PY -m attnfast.bench --device cuda --dtype float16 --channels-last --no-training --out '$OUT/bench_fp16_cl' ${BENCH_ARGS:-}" ;;
    *)
      echo "gpu_check: unknown step '$step'" >&2
      false ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && status=1
done
echo "== summary ($OUT/summary.txt)"
cat "$OUT/summary.txt"
exit $status
