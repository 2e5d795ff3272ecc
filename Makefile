# The README's quick start: `make bench` (the speedup report), `make test` (the whole suite) and
# `make lab` (JupyterLab on the notebooks). Each installs what it needs into .venv first: the
# newest releases within pyproject.toml's ranges (pass pip constraints with PIP_CONSTRAINT=file).
# With no GPU, install torch's CPU build first (.venv/bin/pip install torch --index-url
# https://download.pytorch.org/whl/cpu), or pip takes the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install bench test lab release doctor clean

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

lab: install
	$(PY) -m jupyter lab notebooks/

release: install
	$(PY) -m labkit release

clean:
	rm -rf $(VENV) .pytest_cache
