# The few commands people type. Everything installs what it needs itself.
PYTHON ?= python3
BIN := .venv/bin
PERSONS ?= 200000

.PHONY: FORCE demo test test-fast test-slurm test-gpu gpu-wheels install install-test system-deps lint bench clean

.venv/.installed: pyproject.toml scripts/bootstrap-venv.sh kernels/_cox_c.c
	PYTHON=$(PYTHON) bash scripts/bootstrap-venv.sh
	touch $@

# The editable install builds the Cox extension in place (kernels/_cox_c*.so): a checkout
# cleaned of it (git clean) installs again wherever a C compiler could build it.
ifneq ($(shell command -v cc || command -v gcc),)
ifeq ($(wildcard kernels/_cox_c*.so),)
.venv/.installed: FORCE
endif
endif
FORCE:

.venv/.installed-test: .venv/.installed
	PYTHON=$(PYTHON) bash scripts/bootstrap-venv.sh test
	touch $@

install: .venv/.installed
install-test: .venv/.installed-test

system-deps:
	bash scripts/install-system-deps.sh

## demo: synthetic registers for $(PERSONS) persons, then example 1 on the local dask engine
demo: install
	$(BIN)/hpcstudy synth --persons $(PERSONS) --seed 1 --partitions 8 --out demo-data --overwrite
	$(BIN)/hpcstudy data verify demo-data
	$(BIN)/hpcstudy run examples/statins_mi.yaml --data demo-data --out demo-out/statins_mi --overwrite

## test: the whole suite, a real single-node Slurm and MPI included
test: system-deps install-test
	$(BIN)/python -m pytest

test-fast: install-test
	$(BIN)/python -m pytest -m "not slurm and not mpi and not slow"

test-slurm: system-deps install-test
	$(BIN)/python -m pytest -m slurm

## test-gpu: the gpu-marked tests (kernels, model fits and the whole study path) on CuPy, from this checkout:
## needs numpy, cupy, pyarrow, pytest, pandas, pyyaml, click and dask/distributed (pure Python;
## `make gpu-wheels` fetches them to carry to a GPU machine that cannot reach a registry)
test-gpu:
	PYTHONPATH=$(CURDIR):$$PYTHONPATH $(PYTHON) -m pytest -m gpu tests/kernels tests/test_gpu_study.py tests/test_models_on_standin.py -p no:cacheprovider

## gpu-wheels: the pure-Python wheels test-gpu needs beyond a CUDA image's usual stack, in .whl/
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: -d .whl dask distributed locket partd tblib zict tornado

lint: install-test
	$(BIN)/ruff check hpcstudy kernels tests benchmarks

## bench: hpcstudy against DuckDB, polars, pandas, lifelines, statsmodels, scikit-learn
## (benchmarks/RESULTS.md, benchmarks/results/*.jsonl); BENCH_SIZES=full for 1e7 persons/rows
BENCH_SIZES ?= quick
BENCH_DATA ?= /tmp/hpcstudy-bench
.venv/.installed-bench: .venv/.installed
	PYTHON=$(PYTHON) bash scripts/bootstrap-venv.sh bench
	touch $@

# (hpcstudy's bytecode compiled first, as pip writes it for an installed package: under
# PYTHONDONTWRITEBYTECODE an editable checkout would compile its source in every timed run)
bench: .venv/.installed-bench
	cd benchmarks && export BENCH_RUN=$$(date -u +%Y%m%dT%H%M%S) \
	  BENCH_LOAD_BEFORE=$$(cut -d' ' -f1 /proc/loadavg) BENCH_SIZES=$(BENCH_SIZES) \
	  BENCH_DATA=$(BENCH_DATA) && \
	../$(BIN)/python -m compileall -q ../hpcstudy ../kernels > /dev/null && \
	../$(BIN)/python physical.py && \
	../$(BIN)/python cohort_peers.py && \
	../$(BIN)/python cohort_peers.py --study diabetes_incidence --scaling-persons && \
	../$(BIN)/python cox_peers.py && \
	../$(BIN)/python glm_peers.py && \
	../$(BIN)/python gpu_models.py && \
	../$(BIN)/python summarize.py

clean:
	rm -rf .venv demo-data demo-out .pytest_cache .hypothesis
