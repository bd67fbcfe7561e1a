# Two commands on a fresh clone with nothing but Python:  make demo  /  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test lint typecheck pytest bench docs clean redis

# The venv is rebuilt when pyproject.toml changes; each stamp records one install set.
# --no-compile: Python compiles what it imports on first use, not the whole of every package
# (a third of the install time on a fresh clone).
$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet --no-compile -e ".[dev]"
	touch $@

$(VENV)/.stamp-demo: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet --no-compile -e ".[server,fastapi]" httpx uvicorn
	touch $@

$(VENV)/.stamp-bench: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet --no-compile -e ".[bench]"
	touch $@

demo: $(VENV)/.stamp-demo
	$(PY) examples/demo.py

# the docs build (mkdocs build --strict, as make docs) is a test: tests/test_docs_build.py
test: $(VENV)/.stamp-dev lint typecheck pytest

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check fluxrate_web tests examples bench
	$(BIN)/ruff format --check fluxrate_web tests examples bench

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

# two workers (the machine's two cores); tests/conftest.py keeps each module on one worker and
# deals the chaos scenarios out one by one
pytest: $(VENV)/.stamp-dev redis
	$(BIN)/pytest -n 2 --dist loadgroup

# tests/redis runs a real redis-server (Debian's package); installed where missing (CI: root)
redis:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server) \
		|| echo "redis-server not installed: tests/redis will be skipped (apt-get install redis-server)"

# the docs site (docs/, mkdocs.yml) into site/; --strict: a broken link or reference fails
docs: $(VENV)/.stamp-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(VENV)/.stamp-bench
	$(PY) bench/transports.py
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) build dist site .mypy_cache .ruff_cache
