# advprune: `make bench` sets up and runs the main job; `make test` sets up and runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup build test test-cpp test-py bench bench-loaders lint clean

setup:
	bash scripts/setup.sh

build: setup

# Lint, the C++ unit tests (ctest) and the Python suite, after the set-up and the build.
test: setup lint test-cpp test-py

test-cpp:
	bash scripts/cmake_test.sh

test-py:
	$(PY) -m pytest tests -q

bench: setup
	$(PY) bench/ops.py

bench-loaders: setup
	$(PY) bench/loaders.py

lint:
	$(VENV)/bin/ruff check advprune tests bench build_tools setup.py
	$(VENV)/bin/ruff format --check advprune tests bench build_tools setup.py

clean:
	rm -rf build cmake-build cmake-build.configure.log advprune/_C*.so advprune/_build_config.py *.egg-info
