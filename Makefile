# Gantry: `make run` serves the demo, `make test` runs the suite. Both start from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# program:Debian package (ss reads a unix socket's accept queue for tests/process.py; node
# runs the cache-tests suite, tests/test_cache_suite.py; testssl checks the front's TLS,
# tests/test_front_testssl.py; chromium renders a page through gantry up, tests/test_browser.py;
# curl and h2load are real HTTP/2 clients, tests/test_front_http2.py)
SYSTEM_PROGRAMS := nginx:nginx wrk:wrk ss:iproute2 logrotate:logrotate node:nodejs redis-server:redis-server haproxy:haproxy testssl:testssl.sh chromium:chromium php-fpm8.2:php8.2-fpm curl:curl h2load:nghttp2-client

.PHONY: run test lint bench system-deps clean clean-compiled compile

# setuptools >= 77 for tools/compile.py: Python 3.11's venv brings 65.5 (it rejects the
# SPDX license of pyproject.toml), Python 3.12's none.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77'

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo,test]'
	touch $@

# The hot modules compiled with mypyc (gantry/compiled.py lists them), rebuilt when any
# source changed; without a C compiler tools/compile.py says so and Gantry runs pure.
# mypyc type-checks them against Gantry's dependencies: those are installed first.
COMPILED_SOURCES := $(shell $(PYTHON) tools/compile.py --sources)

$(VENV)/.compiled: $(COMPILED_SOURCES) src/gantry/compiled.py tools/compile.py | $(VENV)/.installed-run
	$(BIN)/python -m pip install -q 'mypy>=1.10'
	$(BIN)/python tools/compile.py
	touch $@

compile: $(VENV)/.compiled

clean-compiled:
	$(BIN)/python tools/compile.py --clean
	rm -f $(VENV)/.compiled

run: $(VENV)/.installed-run $(VENV)/.compiled
	$(BIN)/gantry up

# System programs the interop tests need. Installed with apt-get when root;
# otherwise the tests that need them skip loudly (and fail when CI=true).
system-deps:
	@missing=""; for pair in $(SYSTEM_PROGRAMS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "WARNING: missing$$missing and not root: tests needing them will be skipped"; \
	  fi; \
	fi

# The suite runs whole against the compiled modules (what `make run` serves), then with
# GANTRY_PURE=1 the tests marked `pure_twice` by tests/conftest.py, as plain Python (a
# machine with no C compiler): those that run a compiled module (src/gantry/compiled.py)
# in the test process. Tests that start servers (marked `servers`) and tests that touch
# no compiled module (config, docs, CLI checks: the same code both ways) run once.
# PURE_TESTS= (empty) runs the whole suite pure too; CI (.ci/run) takes the default.
PURE_TESTS ?= -m pure_twice

test: $(VENV)/.installed-test $(VENV)/.compiled system-deps
	$(BIN)/ruff check src tests bench tools setup.py
	$(BIN)/mypy --strict src/gantry/protocol src/gantry/wsgi src/gantry/http src/gantry/config src/gantry/front src/gantry/stack src/gantry/stats src/gantry/control src/gantry/process src/gantry/appserver src/gantry/compiled.py
	$(BIN)/python -m pytest -q -p no:cacheprovider
	GANTRY_PURE=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PURE_TESTS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench tools setup.py
	$(BIN)/ruff format --check src tests bench tools setup.py

# The three benches, JSON in bench/results/ (git-ignored), then the chart docs/bench.png.
# BENCH_ARGS goes to all three, e.g. make bench BENCH_ARGS="--duration 5 --rounds 1".
bench: $(VENV)/.installed-test $(VENV)/.compiled system-deps
	$(BIN)/python bench/run.py --json bench/results/run.json $(BENCH_ARGS)
	$(BIN)/python bench/front.py --json bench/results/front.json $(BENCH_ARGS)
	$(BIN)/python bench/up.py --skip-setup --json bench/results/up.json $(BENCH_ARGS)
	.venv-bench/bin/python bench/chart.py -o docs/bench.png \
	  bench/results/run.json bench/results/front.json bench/results/up.json

clean:
	rm -rf $(VENV) .venv-bench build *.egg-info src/*.egg-info
	find src -name '*.so' -delete
