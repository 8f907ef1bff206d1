#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu alone with nvcc (-c, no GPU needed) for sm_80 and sm_90 with
# warnings as errors and `-Xptxas -v`, and prints one line per kernel: registers, spills,
# shared memory. Exits non-zero on any compile error or warning.
#   .ci/nvcc_check.sh            all files, both architectures
#   ARCHS="90" STD=-std=c++20 JOBS=8 .ci/nvcc_check.sh file.cu ...
set -uo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
ARCHS=${ARCHS:-"80 90"}
JOBS=${JOBS:-2}
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(csrc/cuda/*.cu)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
command -v "$NVCC" >/dev/null || { echo "nvcc_check: $NVCC not found" >&2; exit 2; }
"$NVCC" --version | tail -1

gencode=()
for a in $ARCHS; do gencode+=(-gencode "arch=compute_${a},code=sm_${a}"); done

compile() {  # file -> $out/<name>.log, exit status in $out/<name>.rc
  local f=$1 name
  name=$(basename "$f" .cu)
  # the flags of the extension build (attnfast/_sources.py + torch's COMMON_NVCC_FLAGS)
  "$NVCC" ${STD:--std=c++17} -O3 -lineinfo -DATTNFAST_WITH_CUDA -Icsrc "${gencode[@]}" \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
    -Xptxas -v -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
    -c "$f" -o "$out/$name.o" >"$out/$name.log" 2>&1
  echo $? >"$out/$name.rc"
}

start=$(date +%s)
running=0
for f in "${files[@]}"; do
  compile "$f" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

status=0
for f in "${files[@]}"; do
  name=$(basename "$f" .cu)
  rc=$(cat "$out/$name.rc")
  if [ "$rc" != 0 ]; then
    echo "FAIL $f"
    grep -v "^ptxas info" "$out/$name.log" | head -40
    status=1
    continue
  fi
  # ptxas prints: Compiling entry function '<mangled>' for 'sm_XX' / ... stack frame, spills /
  # Used N registers, ... smem
  python3 - "$out/$name.log" "$name" <<'PY'
import re, subprocess, sys
log, name = sys.argv[1], sys.argv[2]
rows, cur = [], None
for line in open(log):
    m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
    if m:
        cur = {"fn": m.group(1), "arch": m.group(2), "spill": "0/0"}
        rows.append(cur)
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        cur["spill"] = f"{m.group(1)}/{m.group(2)}"
    m = re.search(r"Used (\d+) registers", line)
    if m:
        cur["regs"] = int(m.group(1))
        s = re.search(r"(\d+) bytes smem", line)
        cur["smem"] = int(s.group(1)) if s else 0
try:
    names = subprocess.run(["c++filt"], input="\n".join(r["fn"] for r in rows), text=True,
                           capture_output=True).stdout.split("\n")
except OSError:
    names = [r["fn"] for r in rows]
for r, full in zip(rows, names):
    short = re.sub(r"attnfast::cuda::|\(anonymous namespace\)::|__nv_bfloat16", lambda m: "bf16" if m.group(0) == "__nv_bfloat16" else "", full)
    short = re.sub(r"\(.*\)$", "", short).replace("__half", "half")
    warn = "  <-- spills" if r["spill"] != "0/0" else ""
    print(f"  {name:28s} {r['arch']}  regs {r.get('regs', '?'):>3}  spill st/ld {r['spill']:>9}  "
          f"smem {r.get('smem', 0):>6}  {short}{warn}")
PY
done
echo "nvcc_check: $(ls "${files[@]}" | wc -l) files, archs [$ARCHS], $(( $(date +%s) - start )) s"
[ "$status" = 0 ] && echo "nvcc_check: OK" || echo "nvcc_check: FAILED"
exit $status
