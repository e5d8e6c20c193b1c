# Two commands on a fresh machine: `make demo` runs the product's story on the
# embedded stack, `make test` passes the tests. Each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install promtool stunnel chromium demo test chaos soak test-unit test-integration lint format bench bench-1m bench-replicate clean

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

stunnel:
	@command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || { \
	  echo "installing stunnel (Debian package stunnel4: TLS in front of the test broker)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stunnel4 >/dev/null; }
# The console's browser tests drive Debian's Chromium through its ChromeDriver (selenium).
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (Debian packages) for the console tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

demo: install
	$(BIN)/streamer demo

lint: install
	$(BIN)/ruff check streamer tests benchmarks
	$(BIN)/ruff format --check streamer tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install promtool stunnel chromium lint
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m unit

test-integration: install chromium
	$(BIN)/pytest -m integration

format: install
	$(BIN)/ruff format streamer tests benchmarks
	$(BIN)/ruff check --fix streamer tests benchmarks

# A seed that hangs dumps every thread's stack (faulthandler) before its 900 s timeout.
CHAOS_RUNS ?= 20
CHAOS_SEED ?=
chaos: install
	$(BIN)/pytest tests/chaos -m chaos -p no:cacheprovider -o faulthandler_timeout=840 --chaos-runs $(CHAOS_RUNS) $(if $(CHAOS_SEED),--chaos-seed $(CHAOS_SEED))

SOAK_MINUTES ?= 30
soak: install
	$(BIN)/python -m tests.soak.run --minutes $(SOAK_MINUTES)

bench: install
	$(BIN)/streamer bench

bench-replicate: install
	$(BIN)/streamer dev up >/dev/null
	$(BIN)/python -m benchmarks.replicate_bench

# A million SKUs through loadgen, publish and consume on the embedded stack (about an
# hour on a 2-core machine): wall time, events/s and the worker's memory over time.
bench-1m: install
	$(BIN)/streamer dev up > /dev/null
	$(BIN)/python benchmarks/million.py $(BENCH_1M_ARGS)

clean:
	-$(BIN)/streamer dev down
	rm -rf $(VENV) .streamer
