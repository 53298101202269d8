# segbench: two commands set everything up on a fresh machine (Python 3.11, gcc, cmake).
#   make demo   create .venv, install everything, run the demo
#   make test   the same install when needed, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
STAMP  := $(VENV)/.segbench-installed
PIP    := $(BIN)/python -m pip
PIPC   := $(PIP) install --constraint constraints.txt

.PHONY: demo test test-quick install lint bench clean

demo: $(STAMP)
	$(BIN)/segbench demo

# PYTEST_ARGS: more pytest options (.ci/run: make test PYTEST_ARGS="-ra --durations=15")
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests/ $(PYTEST_ARGS)

# quicker, for development: the suite without the tests marked slow
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m "not slow" tests/ $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# mmsegmentation 1.2.2 needs mmcv<2.2 with its compiled ops; mmcv 2.1.0 has no wheel,
# so it is built from source with CPU ops (about 8 minutes on 2 cores; pip caches the wheel).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt CMakeLists.txt src/segbench/_native.cpp
	$(PIPC) --upgrade pip "setuptools>=77,<81" wheel ninja "scikit-build-core>=0.10" "pybind11>=2.12"
	$(PIPC) torch mmengine
	MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$(JOBS) $(PIPC) --no-build-isolation mmcv
	$(PIPC) --no-build-isolation -e ".[train,quant,openvino,tensorrt-rtx,plot,cluster,gis,stac,loadgen,serve,dev]"
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_native.py

clean:
	rm -rf $(VENV) build segbench-demo .pytest_cache
