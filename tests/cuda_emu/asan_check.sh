#!/bin/bash
# AddressSanitizer on a subset of the emulated CUDA kernels (`make cuda-emu-asan`, part of
# `make test`): builds the ctypes harness with -fsanitize=address (build.sh, incremental, in
# .pytest_cache/cuda_emu/asan) and runs emulate.py's quick subset (EMU_QUICK=1) with the threads
# of each block shuffled between barriers. Fails on any out-of-bounds access, misaligned vector
# access, deadlock at a barrier or result outside tolerance.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export EMU_DIR=${EMU_DIR:-$here/../../.pytest_cache/cuda_emu/asan}
start=$(date +%s)
bash "$here/build.sh"
LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 EMU_ORDER=shuffle \
  EMU_QUICK=1 "${PYTHON:-python3}" "$here/emulate.py"
echo "cuda-emu-asan: $(( $(date +%s) - start )) s"
