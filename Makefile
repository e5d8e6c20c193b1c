# Two commands on a fresh machine: `make demo` runs the product's story on the
# embedded stack, `make test` passes the tests. Each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-unit test-integration lint format bench bench-1m clean

$(BIN)/streamer: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/streamer

promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

demo: install
	$(BIN)/streamer demo

lint: install
	$(BIN)/ruff check streamer tests benchmarks
	$(BIN)/ruff format --check streamer tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install promtool lint
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m unit

test-integration: install
	$(BIN)/pytest -m integration

format: install
	$(BIN)/ruff format streamer tests benchmarks
	$(BIN)/ruff check --fix streamer tests benchmarks

bench: install
	$(BIN)/streamer bench

# A million SKUs through loadgen, publish and consume on the embedded stack (about an
# hour on a 2-core machine): wall time, events/s and the worker's memory over time.
bench-1m: install
	$(BIN)/streamer dev up > /dev/null
	$(BIN)/python benchmarks/million.py $(BENCH_1M_ARGS)

clean:
	-$(BIN)/streamer dev down
	rm -rf $(VENV) .streamer
