# Two commands do all the set-up on a fresh machine:
#   make train   -- install, then the main job (baseline vs Sharpen Focus on the embedded digits)
#   make test    -- install, then the whole test suite (CPU: C++ kernels, Triton interpreter,
#                   nvcc compile check of the CUDA sources when nvcc is present)
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install train test bench nvcc-check

install:
	# torch first, from the local CPU wheel / the index (never inside a build environment)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0
	$(PIP) triton scikit-learn matplotlib tqdm ninja pytest pytest-benchmark
	$(PIP) --no-deps captum  # tests/test_cam.py compares with LayerGradCam (deps: above + torch)
	$(PIP) --no-build-isolation -e .

train: install
	$(PYTHON) -m attnfast.train --compare

bench: install
	$(PYTHON) -m attnfast.bench --device cpu

nvcc-check:
	@if command -v nvcc >/dev/null; then bash .ci/nvcc_check.sh; \
	else echo "nvcc not found: CUDA sources not compile-checked"; fi

test: install nvcc-check
	ATTNFAST_REQUIRE=cpu,triton $(PYTHON) -m pytest tests -q -ra
