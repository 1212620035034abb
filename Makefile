# advprune: `make run` sets up and runs the main job; `make test` sets up and runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup build run test test-cpp test-py wheel-check gpu-check-dry gpu-check gpu-carry bench bench-loaders bench-prune lint clean

setup:
	bash scripts/setup.sh

build: setup

# The main job: PGD adversarial training of the small CNN on Fashion-MNIST, then clean and PGD-20 accuracy.
RUN_DIR ?= runs/fashion-mnist-pgd
run: setup
	$(VENV)/bin/advprune train --dataset fashion-mnist --attack pgd --eps 0.1 --step-size 0.025 --steps 3 \
		--epochs 5 --limit 20000 --batch-size 128 --out $(RUN_DIR)-$$(date +%Y%m%d-%H%M%S)

# Lint, the C++ unit tests (ctest), the Python suite, and the wheel installed outside the source tree.
test: setup lint test-cpp test-py wheel-check gpu-check-dry

test-cpp:
	bash scripts/cmake_test.sh

# pytest on up to four cores (pytest-xdist), then the tests that must run alone; the real CIFAR-10 tests read the
# JPEG copy decoded once into a cache (they skip where there is none).
# at most 4 workers: each holds a torch of its own
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
test-py:
	cifar10=$$(bash scripts/cifar10_cache.sh) && export ADVPRUNE_CIFAR10_DIR="$$cifar10" && \
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) -m "not alone" && \
	$(PY) -m pytest tests -q -m alone

# Build the wheel, install it into a fresh venv outside the source tree, import everything, train and evaluate.
wheel-check:
	bash scripts/wheel_check.sh

# The GPU check: on a GPU machine (its own python3 and PyTorch), one command that builds, tests and measures;
# its results go to $OUT. gpu-carry prepares what that machine cannot download; the dry run (CPU) keeps it working.
# GPU_CHECK_ONLY=op (or cuda,op, ...) runs only those steps after the build: a short lease re-measures one thing.
GPU_PY ?= python3
GPU_CHECK_ONLY ?=
gpu-check:
	$(GPU_PY) scripts/gpu_check.py --out "$${OUT:-gpu-check-out}" $(if $(GPU_CHECK_ONLY),--only $(GPU_CHECK_ONLY))

gpu-check-dry:
	$(PY) scripts/gpu_check.py --dry-run --out "$${TMPDIR:-/tmp}/advprune-gpu-check-dry"

gpu-carry: setup
	$(PY) scripts/gpu_carry.py

bench: setup
	$(PY) bench/ops.py

bench-loaders: setup
	$(PY) bench/loaders.py

# Each pruning strategy on the main job's setting: accuracy, wall time, epoch-time ratios (about 30 min here).
bench-prune: setup
	$(PY) bench/prune.py

lint:
	$(VENV)/bin/ruff check advprune tests bench build_tools scripts setup.py
	$(VENV)/bin/ruff format --check advprune tests bench build_tools scripts setup.py

clean:
	rm -rf build cmake-build cmake-build.configure.log advprune/_C*.so advprune/_build_config.py *.egg-info
