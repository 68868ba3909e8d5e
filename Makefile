# Everything a fresh machine needs is installed from here: the virtualenv, the package, and the
# Apache Kafka broker jars (Maven Central, cached under ${XDG_CACHE_HOME:-~/.cache}/kafkaworker).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
KAFKA_ARGS ?=

.PHONY: install jars kafka-jars registry-jars lint format test test-fast faults kafka run bench clean image container-tools registry soak run-bridge browser-tools prometheus-tools asyncapi-tools jaeger-tools postgres-tools postgres docs docs-serve

install: $(STAMP)

# Re-installs only when pyproject.toml changed (or the venv is gone): `make install` is idempotent.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "kafkaworker needs Python >= 3.11; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || { echo "creating the virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing kafkaworker (editable), its dev tools and the docs site's into $(VENV)"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev,docs]'
	@touch $(STAMP)

# Each says where it fetches to only the first time (the cache honours $XDG_CACHE_HOME).
# The broker needs only its jars: `make kafka` and `make run` leave the registry (~150 MB) out.
kafka-jars: install
	@$(PY) -m kafkaworker.testing.broker fetch >/dev/null

registry-jars: install
	@$(PY) -m kafkaworker.testing.registry fetch >/dev/null

# What the test suite needs: the broker and the Schema Registry.
jars: kafka-jars registry-jars

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict kafkaworker tools

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The whole suite, slow fault tests included, against a real broker the suite starts and stops.
# It builds the docs site with --strict too (tests/unit/test_docs_site.py): a broken link, a
# missing page or snippet, or a setting missing from the reference fails it.
test: lint jars container-tools browser-tools prometheus-tools asyncapi-tools jaeger-tools postgres-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# The documentation site (mkdocs.yml) into build/site; docs-serve serves it on
# http://127.0.0.1:8000 and rebuilds on every change.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

test-fast: install jars asyncapi-tools postgres-tools
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

# The fault suite alone (brokers killed and hung, members frozen...), then its table:
# scenario, messages, lost, duplicates, recovery (saved as build/faults.md).
faults: install jars postgres-tools
	@rm -f build/faults.jsonl
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)
	@$(PY) -m tools.faults

# The soak test at its full length (30 minutes; `make test` runs it for 2): steady traffic,
# a member restarted every 30 s, memory, threads and file descriptors flat, nothing lost.
soak: install jars
	SOAK_SECONDS=1800 $(PY) -m pytest tests/faults/test_soak.py -s $(PYTEST_ARGS)

# A dev broker in the foreground on 127.0.0.1:9092; Ctrl+C stops it. Its data is deleted then,
# unless KAFKA_ARGS='--data DIR' keeps it (topics, offsets) in DIR across runs.
kafka: kafka-jars
	$(PY) -m kafkaworker.testing.broker run --port 9092 $(KAFKA_ARGS)

# The example worker and a small load generator, with a local broker when none answers on 9092.
run: kafka-jars
	@$(PY) -m tools.demo

# The gRPC bridge (apps/bridge) and the worker consuming its events, with a local broker when
# none answers on 127.0.0.1:9092; places one order, says how to place more; Ctrl+C stops it all.
run-bridge: kafka-jars
	@$(PY) -m tools.bridge_demo

# Benchmarks against the raw client and peer frameworks (each peer in its own virtualenv,
# installed by the suite). Results: benchmarks/results/latest.{json,md,png}.
bench: jars
	$(PY) -m pip install --quiet matplotlib
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# CI set-up for tests/dashboard: Debian's chromium via apt-get when missing (root); a no-op when
# present.
browser-tools: install
	@$(PY) -m tools.install_chromium

# CI set-up for the alert tests (tests/alerts): Debian's prometheus (the server and promtool)
# via apt-get when missing (root); a no-op when present.
prometheus-tools: install
	@$(PY) -m tools.install_prometheus

# CI set-up for the inbox tests (tests/unit/test_inbox.py, tests/faults/test_inbox.py):
# Debian's postgresql via apt-get when missing (root); a no-op when present. The tests' fixture
# runs the same step, so a single test file works on a fresh machine too.
postgres-tools: install
	@$(PY) -m tools.install_postgres

# A dev PostgreSQL in the foreground on 127.0.0.1:5432 (user postgres, trust auth, data in a
# temporary directory deleted on Ctrl+C).
postgres: postgres-tools
	$(PY) -m kafkaworker.testing.postgres run --port 5432

# The official AsyncAPI parser for the tests of `kafkaworker asyncapi`: the npm packages pinned
# in tools/asyncapi/package-lock.json, installed once into the cache (node and npm from
# Debian's packages when missing, as root); a no-op when present.
asyncapi-tools: install
	@$(PY) -m tools.asyncapi_parser >/dev/null

# Jaeger v2 for the tracing tests (tests/tracing): built from the Go module proxy at the
# version pinned in tools/jaeger/go.mod and go.sum, once, into the cache (about 8 minutes on 2
# cores); a no-op when built. Needs Go >= 1.24.
jaeger-tools: install
	@$(PY) -m tools.jaeger >/dev/null

# A dev Schema Registry (Apicurio; the Confluent API at
# http://127.0.0.1:8081/apis/ccompat/v7) in the foreground; Ctrl+C stops it.
registry: registry-jars
	$(PY) -m kafkaworker.testing.registry run --port 8081

# The worker image with podman (no Docker or registry needed); see tools/image.py.
image: install
	$(PY) -m tools.image

# CI set-up for tests/container: podman, buildah, runc, mmdebstrap via apt-get when missing
# (root); a no-op when present.
container-tools: install
	@$(PY) -m tools.image --setup

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
