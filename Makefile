# Two commands on a fresh machine: `make demo` runs the product's story on the
# embedded stack (Tansu), `make test` passes the tests (on Apache Kafka, with a smoke subset
# on Tansu). Each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The quix-streams peer of `make bench`, in a venv of its own (see its rule).
QUIX_VENV ?= .venv-quix

.PHONY: install promtool kustomize kafka chromium netfaults demo test fuzz-api chaos soak soak-ci test-unit test-integration test-tansu test-kafka-oldest lint format bench bench-intake bench-scale bench-1m bench-replicate clean

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

# tests/deploy builds deploy/k8s with kustomize: the one built into kubectl where there is a
# kubectl, else the standalone kustomize, built from its Go module.
kustomize:
	@command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1 || { \
	  echo "installing kustomize (Go module sigs.k8s.io/kustomize/kustomize/v5)"; \
	  GOBIN=/usr/local/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0; }

# The tests run on Apache Kafka, started from its Maven Central jars: Java 17+ and Maven.
# Installed from Debian's packages where apt-get can; otherwise this fails naming what is
# missing (never a skipped test).
kafka:
	@{ command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; } || { \
	  command -v apt-get >/dev/null 2>&1 || { \
	    echo "error: the tests need Java 17+ (java) and Maven (mvn) to run Apache Kafka; install them" >&2; exit 1; }; \
	  echo "installing Java and Maven (Debian packages openjdk-17-jre-headless, maven) for Apache Kafka"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless maven >/dev/null; }
	@java -version 2>&1 | head -1 | grep -qE '"(1[7-9]|[2-9][0-9])' || { \
	  echo "error: Apache Kafka 4 needs Java 17 or newer; java -version says: $$(java -version 2>&1 | head -1)" >&2; exit 1; }
# The console's browser tests drive Debian's Chromium through its ChromeDriver (selenium).
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (Debian packages) for the console tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# The chaos campaign's hosts and link faults (tests/chaos/network.py, faultproxy.py): network
# namespaces and veths (iproute2), cuts and loss with nftables (Debian packages), and delay,
# bandwidth, blackholes and resets with Toxiproxy (this kernel has no netem), built from its
# Go module. They need root, as make chaos does.
TOXIPROXY_VERSION ?= v2.12.0
netfaults:
	@{ command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1; } || { \
	  echo "installing iproute2 and nftables (Debian packages) for the chaos campaign's hosts"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 nftables >/dev/null; }
	@command -v toxiproxy-server >/dev/null 2>&1 || { \
	  echo "installing toxiproxy-server (Go module github.com/Shopify/toxiproxy/v2 $(TOXIPROXY_VERSION))"; \
	  tmp=$$(mktemp -d) && GOBIN=$$tmp go install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION) \
	  && install -m 0755 $$tmp/server /usr/local/bin/toxiproxy-server && rm -rf $$tmp; }

demo: install
	$(BIN)/streamer demo

lint: install
	$(BIN)/ruff check streamer tests benchmarks
	$(BIN)/ruff format --check streamer tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install promtool kustomize kafka chromium lint
	$(BIN)/pytest
	$(BIN)/pytest -m smoke --broker tansu -p no:cacheprovider
	$(BIN)/pytest -m smoke --kafka-version $(KAFKA_OLDEST) -p no:cacheprovider

test-unit: install
	$(BIN)/pytest -m unit

test-integration: install kafka chromium
	$(BIN)/pytest -m integration

# The smoke subset on Tansu, the demo's broker, and on the oldest Apache Kafka the README
# claims (the full suite runs on streamer.dev.kafka.DEFAULT_KAFKA_VERSION).
KAFKA_OLDEST ?= 3.6.2
test-tansu: install
	$(BIN)/pytest -m smoke --broker tansu

test-kafka-oldest: install kafka
	$(BIN)/pytest -m smoke --kafka-version $(KAFKA_OLDEST)

format: install
	$(BIN)/ruff format streamer tests benchmarks
	$(BIN)/ruff check --fix streamer tests benchmarks

# schemathesis, every check, against a real `streamer serve` on a fresh embedded stack, with
# a random seed (printed, to reproduce: FUZZ_ARGS="--seed N"); the test suite runs a fixed one.
FUZZ_EXAMPLES ?= 500
fuzz-api: install
	$(BIN)/python -m tests.integration.fuzz_api --max-examples $(FUZZ_EXAMPLES) $(FUZZ_ARGS)

# A seed that hangs dumps every thread's stack (faulthandler) before its 900 s timeout.
CHAOS_RUNS ?= 20
CHAOS_SEED ?=
chaos: install kafka netfaults
	$(BIN)/pytest tests/chaos -m chaos -p no:cacheprovider -o faulthandler_timeout=840 --chaos-runs $(CHAOS_RUNS) $(if $(CHAOS_SEED),--chaos-seed $(CHAOS_SEED))

# A steady 100 events/s for SOAK_MINUTES: flat memory, descriptors and bookkeeping under a
# short retention, and the load drained (tests/soak/run.py says how it judges).
SOAK_MINUTES ?= 30
SOAK_ARGS ?=
soak: install kafka
	$(BIN)/python -m tests.soak.run --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# CI's slice of the soak: 3 minutes, warm-up and retention 30 s each, a sample every 5 s.
soak-ci: install kafka
	$(BIN)/python -m tests.soak.run --minutes 3 --report artifacts/soak-ci-report.json $(SOAK_ARGS)

# streamer's phases, the naive and the competent plain baselines and the quix-streams peer
# in one run, beside the ceilings; BENCH_JSON=FILE writes the JSON object there, BENCH_ARGS
# passes options (e.g. --shape sharded --skus 2000); BENCH_RUNS=N runs it N times, each
# figure then a [min, max] range over the runs (benchmarks/ranges.py).
BENCH_JSON ?=
BENCH_ARGS ?=
BENCH_RUNS ?= 1
bench: install $(QUIX_VENV)/bin/quix-peer
	QUIX_PYTHON=$(QUIX_VENV)/bin/python $(BIN)/python -m benchmarks.suite --runs $(BENCH_RUNS) $(BENCH_ARGS) $(if $(BENCH_JSON),--json-out $(BENCH_JSON))

# The no-op re-sync through the index drained by 1, 2 and 4 `streamer consume` processes on
# 12 partitions, in one run (run it on Apache Kafka: `streamer dev up --broker kafka`);
# SCALE_ARGS passes options (e.g. --processes 1,2 --skus 2000), BENCH_JSON=FILE the JSON.
SCALE_ARGS ?=
bench-scale: install
	$(BIN)/python -m benchmarks.scale $(SCALE_ARGS) $(if $(BENCH_JSON),--json-out $(BENCH_JSON))

# The quix-streams peer's own venv (benchmarks/peers/requirements.txt pins it): quix-streams
# 3.28 pins confluent-kafka<2.13, which conflicts with streamer's.
$(QUIX_VENV)/bin/quix-peer: benchmarks/peers/requirements.txt
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/python -m pip install --quiet -r benchmarks/peers/requirements.txt
	touch $@

# The intake's cost per request: one `streamer serve` and a minimal FastAPI + confluent-kafka
# baseline in the same run, each under single-item bulks from wrk (Debian package) on 50
# connections; INTAKE_ARGS passes options (e.g. --broker kafka --seconds 30 --rounds 3).
INTAKE_ARGS ?=
bench-intake: install
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk (Debian package) to drive the intake benchmark"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	$(BIN)/python -m benchmarks.intake_load $(INTAKE_ARGS) $(if $(BENCH_JSON),--json-out $(BENCH_JSON))

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
	rm -rf $(VENV) $(QUIX_VENV) .streamer
