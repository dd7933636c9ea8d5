# GoBalancer — `make run` and `make test` are the whole quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LINT_DIRS := $(wildcard services shared tests bench)
# CI is on when CI is true, 1 or yes, in any case (tests/conftest.py's in_ci() reads it the same way).
IN_CI := $(filter true 1 yes,$(shell printf '%s' '$(CI)' | tr '[:upper:]' '[:lower:]'))

.PHONY: run test install lint format typecheck pytest e2e bench clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "GoBalancer needs Python >= 3.11 ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { scripts/need ensurepip-missing:python3-venv; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $(STAMP)

# The proxy's C fast path (scripts/build-ext): without a compiler the pure-Python twin runs; in CI it must build.
install: $(STAMP)
	@$(PY) scripts/build-ext $(if $(IN_CI),--required)

run: install
	@scripts/need redis-server:redis-server
	exec $(VENV)/bin/gobalancer up --config config/config.yaml --exit-with-parent=$$PPID

lint: install
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

format: install
	$(VENV)/bin/ruff check --fix $(LINT_DIRS)
	$(VENV)/bin/ruff format $(LINT_DIRS)

typecheck: install
	$(VENV)/bin/mypy --strict services shared bench tests

# In CI (CI=true, 1 or yes) the whole run gets a Docker engine (scripts/docker-run starts dockerd, builds the images
# offline, runs the command, stops dockerd): the e2e stack tests run and a missing engine is a failure.
pytest: install
	@scripts/need redis-server:redis-server redis-sentinel:redis-sentinel redis-cli:redis-tools openssl:openssl chromium:chromium ss:iproute2
ifneq ($(IN_CI),)
	scripts/docker-run $(PY) -m pytest $(PYTEST_ARGS)
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif
	GOBALANCER_PURE_PYTHON=1 $(PY) -m pytest -q $(PURE_PYTHON_TESTS)

# The proxy's HTTP suites once more on the pure-Python fast path (the fallback where no C compiler is).
PURE_PYTHON_TESTS := tests/unit/proxy/test_fast_path.py::test_the_compiled_fast_path_is_built_and_in_use \
	tests/integration/proxy/test_http.py tests/integration/proxy/test_smuggling.py \
	tests/integration/proxy/test_exchange_edges.py tests/integration/proxy/test_routing.py \
	tests/integration/proxy/limits/test_gate.py

e2e: install
	scripts/docker-run $(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test: lint typecheck pytest

BENCH ?= proxy
bench: install
	@scripts/need redis-server:redis-server haproxy:haproxy nginx:nginx wrk:wrk
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
