#!/usr/bin/env bash
# CI lane 2, the CUDA build (no GPU needed): the torch that GPU users install (the CUDA build of
# torch from the package index) in its own virtual environment, attnfast built there with its CUDA
# kernels (nvcc), imported, and tested: tests/test_cuda_build.py (every op has CUDA, CPU and fake
# kernels; fake kernels on CUDA-device tensors; torch.compile tracing; the compiled arch list),
# then the test suite (CPU kernels, Triton interpreter, Triton AOT compile for sm_90/sm_80 with
# the Triton this torch pins, torchvision-backed data tests). docs/BUILDING_CUDA.md explains it.
#
# Exits 0 with a message when nvcc is absent; non-zero when the venv, the build or a test fails.
# Knobs (environment):
#   ATTNFAST_CI_CACHE        cache root (default ~/.cache/attnfast): the venv and the build tree
#   ATTNFAST_CI_VENV         use this existing CUDA-torch venv instead of creating one
#   ATTNFAST_CI_CUDA_ARCHS   TORCH_CUDA_ARCH_LIST of the build (default "9.0")
#   ATTNFAST_CI_CLEAN_BUILD  1: delete the cached build tree first (a full rebuild)
#   ATTNFAST_CI_PYTEST_ARGS  extra pytest arguments (e.g. "-x", "-k expr")
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
TORCH=2.13.0 VISION=0.28.0 CU=cu130   # the CUDA 13.0 build is the index's default for 2.13.0
ARCHS=${ATTNFAST_CI_CUDA_ARCHS:-9.0}
CACHE=${ATTNFAST_CI_CACHE:-$HOME/.cache/attnfast}
KEY=torch$TORCH-$CU
VENV=${ATTNFAST_CI_VENV:-$CACHE/venv-$KEY}
SRC=$CACHE/cuda-lane-src-$KEY    # persistent copy of the tree: ninja rebuilds only what changed
t0=$(date +%s)
stamp() { echo "cuda lane: $1 ($(( $(date +%s) - t0 )) s)"; }

if ! command -v nvcc >/dev/null; then
  echo "cuda lane: SKIPPED -- nvcc not found (install the CUDA toolkit to build the CUDA kernels)"
  exit 0
fi
if [ -z "${CUDA_HOME:-}" ]; then  # nvcc may be a wrapper script: ask it where its toolkit is
  top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  CUDA_HOME=$(cd "${top:-/usr/local/cuda}" && pwd -P)
fi
export CUDA_HOME
echo "cuda lane: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_HOME=$CUDA_HOME, archs $ARCHS, venv $VENV"

# 1. the venv: created once per torch version (a marker file says it is complete)
if [ ! -f "$VENV/.attnfast-ci-complete" ]; then
  [ -n "${ATTNFAST_CI_VENV:-}" ] && { echo "cuda lane: $VENV is not a complete CI venv" >&2; exit 1; }
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # `===` (arbitrary equality) matches the index's "2.13.0" (CUDA) and not a local "2.13.0+cpu"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch===$TORCH" \
    "torchvision==$VISION" numpy ninja setuptools wheel pytest pytest-benchmark pytest-xdist \
    scikit-learn \
    matplotlib tqdm pillow
  touch "$VENV/.attnfast-ci-complete"
  stamp "venv created"
fi
PY=$VENV/bin/python
# a venv made before the tests ran in parallel lacks pytest-xdist
"$PY" -c "import xdist" 2>/dev/null || "$PY" -m pip install -q --disable-pip-version-check pytest-xdist
export PATH="$VENV/bin:$PATH"   # ninja, pytest of the venv
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$CACHE/triton-$KEY}   # the AOT test's cubins
"$PY" -c "import torch, triton; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'; print('cuda lane: torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__, 'GPU available:', torch.cuda.is_available())"

# 2. the build: the working tree (tracked and untracked, not ignored) mirrored into $SRC, only
#    changed files rewritten so that their mtimes alone move; the CPU lane's in-place .so is
#    untouched. pip builds in $SRC (build/temp.*: ninja's objects stay between runs).
[ "${ATTNFAST_CI_CLEAN_BUILD:-0}" = 1 ] && rm -rf "$SRC"
mkdir -p "$SRC"
(cd "$repo" && git ls-files -z -co --exclude-standard) >"$SRC.files"
"$PY" - "$repo" "$SRC" "$SRC.files" <<'PY'
import os, shutil, sys
src, dst, listing = sys.argv[1:]
want = {f for f in open(listing).read().split("\0") if f and os.path.isfile(os.path.join(src, f))}
for f in want:
    a, b = os.path.join(src, f), os.path.join(dst, f)
    if os.path.isfile(b) and open(a, "rb").read() == open(b, "rb").read():
        continue
    os.makedirs(os.path.dirname(b), exist_ok=True)
    shutil.copyfile(a, b)
for root, dirs, files in os.walk(dst):
    rel = os.path.relpath(root, dst)
    if rel == "build" or rel.startswith("build" + os.sep) or ".egg-info" in rel:
        continue
    for f in files:
        r = os.path.normpath(os.path.join(rel, f))
        if r not in want:
            os.remove(os.path.join(root, f))
PY
rm -rf "$SRC"/build/lib.* "$SRC"/build/bdist.*   # python files are re-copied; objects stay
(cd "$SRC" && TORCH_CUDA_ARCH_LIST=$ARCHS MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install \
  -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall .)
stamp "attnfast built with CUDA for $ARCHS"

# 3. import it from the venv (not from a source tree) and say what it holds
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$PY" - <<'PY'
import attnfast
from attnfast import _build
assert _build.load(), f"the extension did not load: {_build.error()}"
assert _build.has_cuda_kernels(), "the extension was built without CUDA kernels"
print(f"cuda lane: {attnfast.__file__} loaded; CUDA kernels for {_build.cuda_arch_list()}")
PY

# 4. the tests, from this empty directory so that `import attnfast` is the installed build.
#    test_cuda_build must pass (cuda-build in ATTNFAST_REQUIRE turns its skips into failures).
#    CI runs the part of the suite that this torch can change (registrations, fakes, compile,
#    the fused loss's CPU kernels, Triton's AOT compile with the Triton this torch pins, the
#    torchvision data path): the whole suite twice does not fit CI's 30 minutes on 2 cores.
#    ATTNFAST_CI_TESTS=tests runs all of it (as on a developer's machine).
tests=${ATTNFAST_CI_TESTS:-"tests/test_cuda_build.py tests/test_registration.py
  tests/test_imports.py tests/test_sharpen_focus_loss.py tests/test_data_files.py
  tests/test_data_fgvc.py tests/test_pretrained_tv.py
  tests/test_triton_kernels.py::test_kernels_compile_for_sm90"}
ATTNFAST_REQUIRE=cpu,triton,cuda-build ATTNFAST_CUDA_ARCHS=$ARCHS \
  "$PY" -m pytest $(for t in $tests; do echo "$repo/$t"; done) -q -ra --durations=15 \
  -n "${TEST_WORKERS:-auto}" --dist worksteal \
  -p no:cacheprovider --rootdir "$repo" ${ATTNFAST_CI_PYTEST_ARGS:-}
stamp "tests passed"
