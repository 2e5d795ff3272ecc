# The README's quick start: `make bench` (the speedup report) and `make test` (the whole suite).
# Each installs what it needs into .venv first. Pass extra pip constraints with
# PIP_CONSTRAINT=file (CI pins the CPU torch build that way).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install bench test release doctor clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

bench: install
	$(PY) -m labkit bench

doctor: install
	$(PY) -m labkit doctor

test: install
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

release: install
	$(PY) -m labkit release

clean:
	rm -rf $(VENV) .pytest_cache
