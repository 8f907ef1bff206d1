# Two commands do all the set-up on a fresh machine:
#   make train   -- install, then the main job (baseline, Sharpen Focus and guidance from boxes
#                   on the embedded located digits)
#   make test    -- install, then the whole test suite (CPU: C++ kernels, Triton interpreter,
#                   nvcc compile check of the CUDA sources when nvcc is present, and the CUDA
#                   kernels + glue run on the CPU under the host emulator: tests/test_cuda_emu.py,
#                   AddressSanitizer on a subset; docs/CUDA_EMULATION.md)
PYTHON ?= python3
comma := ,
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install train test bench nvcc-check cuda-emu-asan

# The emulated CUDA tests need the CUDA headers, which come with nvcc: required where nvcc is.
HAVE_NVCC := $(shell command -v nvcc >/dev/null 2>&1 && echo 1)

install:
	# torch first, from the local CPU wheel / the index (never inside a build environment)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0
	$(PIP) triton scikit-learn matplotlib tqdm ninja pytest pytest-benchmark pytest-xdist
	$(PIP) --no-deps captum  # tests/test_cam.py compares with LayerGradCam (deps: above + torch)
	$(PIP) --no-build-isolation -e .

train: install
	$(PYTHON) -m attnfast.train --compare

bench: install
	$(PYTHON) -m attnfast.bench --device cpu

nvcc-check:
	@if command -v nvcc >/dev/null; then bash .ci/nvcc_check.sh; \
	else echo "nvcc not found: CUDA sources not compile-checked"; fi

cuda-emu-asan:
	@if [ -n "$(HAVE_NVCC)" ]; then PYTHON=$(PYTHON) bash tests/cuda_emu/asan_check.sh; \
	else echo "nvcc not found: no CUDA headers, emulated CUDA kernels not run under ASan"; fi

# The suite in parallel, one worker per core, tests handed out as workers free up (--dist
# worksteal): on 2 cores about half the serial time (754 s loadfile vs 1385 s serial,
# 2026-12-07). A test whose process crashes (a C++ kernel aborting) fails alone and a new worker
# runs the rest (tests/test_forked.py; loadfile would retry it and drop the rest of its file).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: install nvcc-check cuda-emu-asan
	ATTNFAST_REQUIRE=cpu,triton$(if $(HAVE_NVCC),$(comma)cuda_emu) $(PYTHON) -m pytest tests -q -ra \
	  -n $(TEST_WORKERS) --dist worksteal --durations=25
