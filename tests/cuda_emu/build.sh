#!/bin/bash
# Builds $EMU_DIR/libemu.so (default /tmp/attnfast_emu) from csrc/cuda/*.cu compiled as host C++
# (ATTNFAST_HOST_EMU: each block runs as cooperative host threads with real barriers), under
# AddressSanitizer, for the ctypes driver emulate.py. Incremental: an object is rebuilt when any
# kernel source or header, or the flags, changed since it was made. Then:
#   LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
#   EMU_ORDER=shuffle python tests/cuda_emu/emulate.py
# (asan_check.sh does both.) CUDA headers: $CUDA_HOME/include, else /usr/local/cuda/include.
set -e
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
EMU_DIR=${EMU_DIR:-/tmp/attnfast_emu}
SAN=${SAN:--fsanitize=address}
OPT=${OPT:--O1}
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
FLAGS="-std=c++17 $OPT -g $SAN -fPIC -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -DATTNFAST_HOST_EMU -x c++ -Icsrc -I$CUDA_INC"
mkdir -p "$EMU_DIR/obj"
stamp=$EMU_DIR/obj/flags
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$FLAGS" ] || { rm -f "$EMU_DIR"/obj/*.o; echo "$FLAGS" >"$stamp"; }
newest=$(ls -t csrc/common/* csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h "$here"/*.cpp | head -1)
pids=()
for f in csrc/cuda/*.cu "$here/harness.cpp" "$here/runtime_stubs.cpp"; do
  o=$EMU_DIR/obj/$(basename "$f").o
  [ -f "$o" ] && [ "$o" -nt "$newest" ] && continue
  g++ $FLAGS -c "$f" -o "$o" &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait ${pids[0]} || exit 1; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait $p || exit 1; done
g++ -shared $SAN "$EMU_DIR"/obj/*.o -o "$EMU_DIR/libemu.so"
echo "built $EMU_DIR/libemu.so"
