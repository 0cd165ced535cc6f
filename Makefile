# Two entry points: `make bench` (set up, then run the benchmark over every shared data set)
# and `make test` (set up, then run every test). Both need only python3 >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?=
OUT    ?= results
EXTRAS ?= all
LINT   := src tests $(wildcard benchmarks)
# One BLAS thread per process: on a shared 2-core machine OpenBLAS threads spinning against
# other processes make small matrix products 10-100x slower (tests run 2 processes anyway).
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1

.PHONY: setup bench test lint clean

$(BIN)/llmdispatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

setup: $(BIN)/llmdispatch

bench: setup
	$(BIN)/llmdispatch bench $(DATA) --out $(OUT)

test: setup
	bash scripts/ensure-services.sh
	$(BIN)/python -m pytest -n 2 -q
	$(BIN)/ruff check $(LINT)
	$(BIN)/ruff format --check $(LINT)
	$(BIN)/mypy

lint: setup
	$(BIN)/ruff check $(LINT)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
